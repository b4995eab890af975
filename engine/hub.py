"""Fetch an SAE's files from the Hugging Face Hub with ``huggingface_hub``'s own HEAD and GET.

Why not ``hf_hub_download``: it deletes its partial file when a transfer fails and never checks the
sha256, while SAE files are GBs. So the metadata comes from ``get_hf_file_metadata`` (honours
``HF_ENDPOINT``, ``HF_TOKEN``, ``HF_HOME``; the LFS etag is the sha256) and the bytes from ``http_get``
into our ``<name>.part``, hashed as they arrive: a dropped connection is resumed with a ``Range``
request by ``http_get``, and by the job's retry if it keeps dropping. A bad sha256 deletes the file.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

import httpx2
from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_url
from huggingface_hub.errors import (EntryNotFoundError, GatedRepoError, HfHubHTTPError, RepositoryNotFoundError,
                                    RevisionNotFoundError)
from huggingface_hub.file_download import http_get
from huggingface_hub.utils import build_hf_headers
from tqdm.auto import tqdm

from saejobs.engine import failpoints, paths
from saejobs.engine.download import CHUNK, check_disk_space, disk_full, sha256_file
from saejobs.engine.errors import IntegrityError, NotFoundError, StorageError, TransientError, UsageError
from saejobs.engine.registry.entry import GEMMA_SCOPE_2_PREFIXES, PARAMS_FILES, SaeEntry, SaeFormat, SaeSite

# Errors of this host's disk that a retry cannot fix (full, quota, read-only, not permitted)
LOCAL_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM)

SHA256 = re.compile(r"^[0-9a-f]{64}$")
GS1 = re.compile(r"^(?:.*/)?layer_(?P<layer>\d+)/width_(?P<width>\w+)/average_l0_(?P<l0>\d+)$")
GS2 = re.compile(rf"^(?P<point>{GEMMA_SCOPE_2_PREFIXES})(?:_all)?/layer_(?P<layer>\d+)_width_(?P<width>\w+?)"
                 r"_l0_(?P<l0>small|medium|big)(?:_seed_\d+)?$")


def endpoint() -> str | None:
    """Read at call time: huggingface_hub reads ``HF_ENDPOINT`` once, at import."""
    return os.environ.get("HF_ENDPOINT") or None


PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def unreachable() -> str | None:
    """Why the Hub cannot be asked, found in one TCP connect (5 s at most) before huggingface_hub tries: it
    retries a refused connection with backoff, logging each retry (half a minute per file), then says the same.
    None when it answers, and when a proxy is set (only the proxy knows)."""
    import socket

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "offline (HF_HUB_OFFLINE is set)"
    if any(os.environ.get(v) for v in PROXY_VARIABLES):
        return None
    where = endpoint() or constants.ENDPOINT
    url = urlsplit(where)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=5).close()
    except OSError as e:
        return f"cannot reach the Hub at {where} ({e.strerror or type(e).__name__})"
    return None


class _Silent(tqdm):
    """``http_get`` wants a progress bar; progress is counted by ``_HashingFile`` instead."""

    def __init__(self, *a, **kw):
        kw["disable"] = True
        super().__init__(*a, **kw)


class _HashingFile:
    """The ``.part`` file as http_get sees it: hashes and counts what is written, follows its rewinds."""

    def __init__(self, f, step: Callable[[int], None]):
        self.f, self.step, self.h = f, step, hashlib.sha256()
        f.seek(0)
        while chunk := f.read(CHUNK):
            self.h.update(chunk)

    def write(self, b: bytes) -> int:
        self.h.update(b)
        self.step(len(b))
        n = self.f.write(b)
        failpoints.hit("download.bytes_written")
        return n

    def tell(self) -> int:
        return self.f.tell()

    def seek(self, pos: int, whence: int = 0) -> int:
        return self.f.seek(pos, whence)

    def truncate(self, size: int | None = None) -> int:  # the server ignored Range: starting over
        pos = self.f.tell() if size is None else size
        old = os.fstat(self.f.fileno()).st_size
        self.f.truncate(pos)
        self.__init__(self.f, self.step)  # re-hash what stays
        self.f.seek(pos)
        self.step(pos - old)
        return pos


def _where(entry: SaeEntry, name: str = "") -> str:
    return "/".join(p for p in (entry.repo_id, entry.folder, name) if p)


def _mapped(entry: SaeEntry, name: str, e: Exception) -> Exception:
    """A huggingface_hub/httpx2 error as a saejobs error: one line, never a token."""
    where = _where(entry, name)
    if isinstance(e, GatedRepoError):
        status = e.response.status_code if e.response is not None else 401
        if status == 401 and not build_hf_headers().get("authorization"):
            return UsageError(f"{entry.repo_id} is gated and no token was sent: accept its licence on the Hub "
                              "and set HF_TOKEN")
        if status == 401:
            return UsageError(f"{entry.repo_id} is gated and HF_TOKEN was not accepted (invalid or expired?)")
        return UsageError(f"{entry.repo_id} is gated and this HF_TOKEN has no access: accept its licence on the Hub")
    if isinstance(e, RevisionNotFoundError):
        return NotFoundError(f"{entry.repo_id}: revision not found on the Hub")
    if isinstance(e, EntryNotFoundError):
        return NotFoundError(_missing_folder_message(entry, name))
    if isinstance(e, RepositoryNotFoundError):
        return NotFoundError(f"{entry.repo_id} not found on the Hub (if it is private, set HF_TOKEN)")
    if isinstance(e, HfHubHTTPError):
        status = e.response.status_code if e.response is not None else None
        if status == 401:
            return UsageError(f"{where}: 401 unauthorized; set HF_TOKEN to a token that can read {entry.repo_id}")
        if status in (403,):
            return UsageError(f"{where}: 403 forbidden; HF_TOKEN cannot read {entry.repo_id}")
        if status is None or status >= 500 or status in (408, 429):
            return TransientError(f"{where}: the Hub answered HTTP {status}")
        return UsageError(f"{where}: the Hub answered HTTP {status}")
    if isinstance(e, OSError) and e.errno in LOCAL_DISK_ERRNOS:  # our disk, not the network: permanent
        return StorageError(f"{where}: cannot write here: {e.strerror or e} ({errno.errorcode.get(e.errno, e.errno)})")
    if isinstance(e, (httpx2.TransportError, OSError)):
        return TransientError(f"{where}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'connection failed'}")
    return e


def _missing_folder_message(entry: SaeEntry, name: str) -> str:
    others = [f for f in alternatives(entry) if f != entry.folder]
    shown = ", ".join(others[:12]) + (f" (+{len(others) - 12} more)" if len(others) > 12 else "")
    what = f"layer {entry.layer}, width {entry.width}"
    return (f"{_where(entry, name)} does not exist on the Hub; "
            + (f"folders for {what} there: {shown}" if others else f"no other folder for {what} is known"))


def alternatives(entry: SaeEntry) -> list[str]:
    """Folders of the same layer and width: from the Hub's tree if it answers, else the registry."""
    try:
        top = entry.folder.split("/")[0]
        found = hub_folders(entry.repo_id, top)
        if found:
            mine = parse_folder(entry.folder)
            if mine is None:  # an unknown layout: the folder's siblings
                parent = entry.folder.rsplit("/", 1)[0]
                return [f for f in found if f.rsplit("/", 1)[0] == parent]
            return [f for f in found if (p := parse_folder(f)) and (p["layer"], p["width"], p["site"]) ==
                    (mine["layer"], mine["width"], mine["site"])]
    except Exception:  # the listing is a courtesy: fall back to what the registry knows
        pass
    from saejobs.engine import registry

    try:
        return registry.folders(entry.repo_id, layer=entry.layer, width=entry.width)
    except Exception:
        return []


def parse_folder(folder: str) -> dict | None:
    """layer, width, site and L0 label of a Gemma Scope (2) folder name, or None."""
    if m := GS1.match(folder):
        return {"layer": int(m["layer"]), "width": m["width"], "site": None, "l0": m["l0"]}
    if m := GS2.match(folder):
        return {"layer": int(m["layer"]), "width": m["width"], "site": m["point"], "l0": m["l0"]}
    return None


def hub_folders(repo_id: str, under: str | None = None) -> list[str]:
    """Folders of a Hub repo (under ``under``) that hold an SAE's params file, via the tree API."""
    api = HfApi(endpoint=endpoint())
    files = list(api.list_repo_tree(repo_id, path_in_repo=under or None, recursive=True))
    for f in files:
        if paths.escapes(f.path):
            raise IntegrityError(f"the Hub's listing of {repo_id} holds an unsafe path {f.path!r}; refused")
    return sorted({f.path.rsplit("/", 1)[0] for f in files if f.path.rsplit("/", 1)[-1] in PARAMS_FILES})


def available(model: str, layer: int | None = None, site: str | None = None) -> list[dict]:
    """The Hub's real SAE folders for a model (repos from the registry), with layer, width and L0; ``site``:
    only that hook site's (Gemma Scope has a repo per site, Gemma Scope 2 a top folder per site)."""
    from saejobs.engine import registry

    model_id = registry.model_info(model)["id"]
    if (why := unreachable()) is not None:  # said of the model asked about, not of its first repo
        raise TransientError(f"cannot list {model_id}'s SAE folders: {why}")
    out = []
    for repo_id, rec in registry._data("folders.yaml").items():
        if rec["model"] != model_id or (site is not None and rec.get("site") not in (None, site)):
            continue
        gs1 = rec["format"] == SaeFormat.GEMMA_SCOPE
        under = (f"layer_{layer}" if layer is not None else None) if gs1 else \
            (SaeSite(site).gemma_scope_2_prefix if site is not None else None)
        try:
            found = hub_folders(repo_id, under)
        except (RepositoryNotFoundError, EntryNotFoundError) as e:
            if isinstance(e, GatedRepoError):
                raise _mapped(_stub(repo_id), "", e) from None
            continue  # this repo (or layer) is not on the Hub
        except Exception as e:
            mapped = _mapped(_stub(repo_id), "", e)
            if isinstance(mapped, TransientError):  # the Hub, not this repo: name what was asked
                raise TransientError(f"cannot list {model_id}'s SAE folders: the Hub at {endpoint() or 'huggingface.co'} "
                                     f"did not answer ({str(mapped).removeprefix(repo_id + ': ')})") from None
            raise mapped from None
        for folder in found:
            p = parse_folder(folder)
            if p and (layer is None or p["layer"] == layer):
                where = rec.get("site") or str(SaeSite.of_gemma_scope_2(p["site"]))
                if site is None or where == site:
                    out.append({"repo": repo_id, "folder": folder, "site": where, "layer": p["layer"],
                                "width": p["width"], "l0": p["l0"]})
    return out


def _stub(repo_id: str) -> SaeEntry:
    return SaeEntry(id=repo_id, model="", model_hf="", repo_id=repo_id, folder="", files=(), format="", site="",
                    hook_name="", layer=-1, d_model=0, d_sae=0, l0=None, architecture="", width="", neuronpedia_id=None)


def _download(url: str, part: Path, size: int | None, headers: dict, step: Callable[[int], None]) -> str:
    """Bytes of ``url`` appended to ``part`` (resuming from its length); returns the whole file's sha256."""
    mode = "r+b" if part.exists() else "w+b"
    with open(part, mode) as raw:
        if size is not None and raw.seek(0, 2) > size:  # longer than the file: not ours to resume
            raw.truncate(0)
        f = _HashingFile(raw, step)
        offset = raw.seek(0, 2)
        step(offset)
        hub_http_get(url, f, offset, size, headers)
        raw.flush()
        os.fsync(raw.fileno())
        return f.h.hexdigest()


def hub_http_get(url: str, f, offset: int, size: int | None, headers: dict) -> None:
    """The one call of ``huggingface_hub.file_download.http_get``: internal (neither exported nor
    documented), so what saejobs relies on is pinned here and in tests/test_private_apis.py.

    Written against huggingface_hub 2.4 (its ``http_get`` is unchanged since 2.0, our floor): with
    ``resume_size`` > 0 it sends ``Range: bytes=N-`` and writes from ``f``'s position on; a server that
    answers 200 instead makes it seek ``f`` back ``resume_size`` bytes and ``truncate()``; a dropped
    connection is resumed in-call; HTTP errors raise ``HfHubHTTPError``, network ones
    ``httpx2.TransportError``.
    """
    http_get(url, f, resume_size=offset, headers=headers, expected_size=size, tqdm_class=_Silent)


def fetch(entry: SaeEntry, dest: Path, progress: Callable[[float, str], None], *, revision: str | None = None,
          expected: dict[str, str] | None = None) -> tuple[dict[str, str], str | None]:
    """Download the entry's files into ``dest`` (at ``revision``, a commit, else the default branch);
    returns ({name: sha256}, the Hub's commit hash). ``expected`` (name → sha256, a recorded download's)
    is checked before each file is renamed into place, as the Hub's own LFS etag is."""
    metas = {}
    for name in entry.files:
        url = hub_url(entry, name, revision)
        try:
            metas[name] = (url, get_hf_file_metadata(url, endpoint=endpoint()))
        except Exception as e:
            raise _mapped(entry, name, e) from None
    total = sum(m.size or 0 for _, m in metas.values())
    check_disk_space(dest, total - sum((dest / n).stat().st_size for n in metas if (dest / n).is_file()))
    done = 0

    def step(n: int) -> None:
        nonlocal done
        if not n:
            return
        done += n
        progress(done / total if total else 0.0, f"{done / 1e6:.1f}/{total / 1e6:.1f} MB")

    digests, commit = {}, None
    for name, (url, meta) in metas.items():
        commit = commit or meta.commit_hash
        digests[name] = _fetch_file(entry, name, url, meta, dest, step, (expected or {}).get(name))
    return digests, commit


def hub_url(entry: SaeEntry, name: str, revision: str | None = None) -> str:
    return hf_hub_url(entry.repo_id, f"{entry.folder}/{name}", revision=revision, endpoint=endpoint())


def _fetch_file(entry: SaeEntry, name: str, url: str, meta, dest: Path, step: Callable[[int], None],
                recorded: str | None = None) -> str:
    final, part = dest / name, dest / f"{name}.part"
    etag = meta.etag if meta.etag and SHA256.match(meta.etag) else None  # LFS: the etag is the sha256
    if recorded and etag and etag != recorded:
        raise IntegrityError(f"{_where(entry, name)}: the Hub serves sha256 {etag[:12]}…, not the recorded "
                             f"download's {recorded[:12]}…; refusing other bytes")
    expected = recorded or etag
    if final.is_file() and final.stat().st_size == meta.size:
        digest = sha256_file(final)
        if expected is None or digest == expected:  # already here and right: no transfer
            step(meta.size)
            return digest
    headers = build_hf_headers()
    if urlsplit(meta.location)[:2] != urlsplit(url)[:2]:
        headers.pop("authorization", None)  # a CDN's signed URL: the token stays with the Hub
    try:
        digest = _download(meta.location, part, meta.size, headers, step)
    except Exception as e:
        raise disk_full(e, part) or _mapped(entry, name, e) from None
    if expected and digest != expected:
        part.unlink(missing_ok=True)
        raise IntegrityError(f"{_where(entry, name)}: sha256 {digest[:12]}… differs from the Hub's {expected[:12]}…; "
                             "bad download deleted")
    failpoints.hit("download.file_written")
    os.replace(part, final)
    return digest
