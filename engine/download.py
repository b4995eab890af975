"""Put an SAE's files in the local cache: from the Hugging Face Hub or from a mirror directory.

Files are streamed to ``<name>.part`` in 1 MiB chunks while hashed, then renamed, so the cache
never holds a half file under the real name; a ``.part`` left by an interrupted copy is resumed.
One download per folder at a time (a file lock), so two jobs for one SAE produce one copy.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from saejobs.engine import failpoints, paths
from saejobs.engine.errors import DiskFullError, IntegrityError, NotFoundError, UsageError
from saejobs.engine.registry.entry import SaeEntry

CHUNK = 1 << 20
Progress = Callable[[float, str], None]
NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def disk_full(e: BaseException, part: Path) -> DiskFullError | None:
    """The error to raise instead of ``e`` if ``e`` is the disk filling up while ``part`` was written."""
    if not isinstance(e, OSError) or e.errno not in NO_SPACE:
        return None
    part.unlink(missing_ok=True)
    free = shutil.disk_usage(part.parent).free if part.parent.exists() else 0
    return DiskFullError(f"disk full while writing {part.name.removesuffix('.part')} in {part.parent} "
                         f"({e.strerror}; {free / 1e6:.0f} MB free now); partial file deleted")


def local_folder(entry: SaeEntry, root: Path | None = None) -> Path:
    root = (root or paths.sae_cache()).resolve()
    folder = (root / entry.repo_id / entry.folder).resolve()
    if not folder.is_relative_to(root):
        raise UsageError(f"SAE path '{entry.repo_id}/{entry.folder}' escapes the cache directory; refused")
    return folder


def sha256_file(path: Path, progress: Callable[[int], None] | None = None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            if progress:
                progress(len(chunk))
    return h.hexdigest()


@contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".saejobs.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def mirror_source(entry: SaeEntry, mirror: Path) -> Path:
    """The entry's folder inside a mirror laid out like the Hub repo (or like a tree of repos)."""
    mirror = Path(mirror).resolve()
    if not mirror.is_dir():
        raise NotFoundError(f"mirror directory '{mirror}' does not exist")
    for base in (mirror / entry.repo_id, mirror):
        folder = (base / entry.folder).resolve()
        if folder.is_relative_to(mirror) and folder.is_dir():
            return folder
    raise NotFoundError(f"mirror '{mirror}' has no folder '{entry.folder}' (looked in {entry.repo_id}/ and at its top)")


def fetch_from_mirror(entry: SaeEntry, mirror: Path, dest: Path, progress: Progress,
                      expected: dict[str, str] | None = None) -> dict[str, str]:
    """Copy the entry's files from ``mirror`` into ``dest``; returns each file's sha256. ``expected``
    (name → sha256, e.g. the recorded download's) is checked before a file is renamed into place, as a
    ``FILE.sha256`` sidecar is."""
    src = mirror_source(entry, mirror)
    files = [src / name for name in entry.files]
    for f in files:
        if not f.is_file():
            raise NotFoundError(f"mirror folder '{src}' has no file '{f.name}'")
    total = sum(f.stat().st_size for f in files)
    check_disk_space(dest, total)
    done = 0
    digests = {}
    for f in files:
        def step(n: int, _name=f.name) -> None:
            nonlocal done
            done += n
            progress(done / total if total else 1.0, f"{_name}: {done / 1e6:.1f}/{total / 1e6:.1f} MB")

        digests[f.name] = _copy_verified(f, dest / f.name, step,
                                         expected=(expected or {}).get(f.name) or _sidecar_sha256(f))
    return digests


def _sidecar_sha256(f: Path) -> str | None:
    side = f.with_name(f.name + ".sha256")
    if not side.is_file():
        return None
    text = side.read_text().split()
    if not text or len(text[0]) != 64:
        raise IntegrityError(f"{side}: not a sha256 digest")
    return text[0].lower()


def _copy_verified(src: Path, dst: Path, step: Callable[[int], None], expected: str | None) -> str:
    part = dst.with_name(dst.name + ".part")
    h = hashlib.sha256()
    offset = part.stat().st_size if part.exists() else 0
    if offset > src.stat().st_size:
        part.unlink()
        offset = 0
    if offset:
        with open(part, "rb") as f:
            while chunk := f.read(CHUNK):
                h.update(chunk)
        step(offset)
    try:
        with open(src, "rb") as fin, open(part, "ab") as fout:
            fin.seek(offset)
            while chunk := fin.read(CHUNK):
                fout.write(chunk)
                h.update(chunk)
                step(len(chunk))
            fout.flush()
            os.fsync(fout.fileno())
    except OSError as e:
        raise disk_full(e, part) or e from None
    digest = h.hexdigest()
    if expected and digest != expected:
        part.unlink(missing_ok=True)
        raise IntegrityError(f"{src.name}: sha256 {digest[:12]}… differs from the expected {expected[:12]}…; bad copy deleted")
    failpoints.hit("download.file_written")
    os.replace(part, dst)
    return digest


def check_disk_space(dest: Path, needed: int) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(dest).free
    if free < needed:
        raise DiskFullError(f"not enough disk space in {dest}: {needed / 1e6:.0f} MB needed, {free / 1e6:.0f} MB free")
