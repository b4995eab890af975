"""SAE rows: a registry entry plus where it lies on disk and the checksums it had when it arrived."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from saejobs.db import jobs
from saejobs.db.models import Sae, SaeCopy
from saejobs.db.session import db_now, read_session, retried, session
from saejobs.engine.registry.entry import PARAMS_FILES, SaeEntry


@retried
def get(sae_id: str, url: str | None = None) -> Sae | None:
    with read_session(url) as s:
        return s.get(Sae, sae_id)


@retried
def record_download(entry: SaeEntry, folder: Path, files: dict[str, dict], config: dict | None = None,
                    revision: str | None = None, *, host: str | None = None, source: str | None = None,
                    owner: tuple[str, str] | None = None, url: str | None = None) -> Sae:
    """The SAE's checksums (what every host's copy must match) and, with ``host``, that host's copy.
    ``owner`` (job id, worker): nothing is written once that worker has lost the job."""
    with session(url) as s:
        if owner is not None and not jobs.owned(s, *owner):
            raise jobs.JobCancelled(owner[0])
        row = s.get(Sae, entry.id) or Sae(id=entry.id)
        row.neuronpedia_id = entry.neuronpedia_id
        row.repo_id, row.folder, row.format = entry.repo_id, entry.folder, entry.format
        row.entry = entry.to_json()
        row.local_path = str(folder)
        row.files = files
        row.config = config
        row.revision = revision
        row.source = source
        row.downloaded_at = db_now(s)
        s.add(row)
        s.flush()
        if host is not None:
            _record_copy(s, entry.id, host, folder, files)
    return row


@retried
def record_copy(sae_id: str, host: str, folder: Path, files: dict[str, dict], url: str | None = None) -> None:
    with session(url) as s:
        _record_copy(s, sae_id, host, folder, files)


def _record_copy(s, sae_id: str, host: str, folder: Path, files: dict[str, dict]) -> None:
    """``files``: the SAE's recorded files, which the copy in ``folder`` has just been checked against."""
    row = s.scalar(select(SaeCopy).where(SaeCopy.sae_id == sae_id, SaeCopy.host == host)) or SaeCopy(sae_id=sae_id, host=host)
    row.path, row.verified_at = str(folder), db_now(s)
    row.sha256 = params_sha256(files)
    row.files = file_stats(Path(folder), files)
    s.add(row)


def file_stats(folder: Path, names) -> dict[str, dict] | None:
    """Size and modification time of each file: cheap to compare, and changed by any rewrite."""
    try:
        return {n: {"size": (st := (folder / n).stat()).st_size, "mtime_ns": st.st_mtime_ns} for n in sorted(names)}
    except OSError:
        return None


def copy_is_current(row: Sae, copy: SaeCopy) -> bool:
    """This host's copy holds the SAE's current bytes: checked against the digest recorded now (not at an
    earlier download of other bytes), and its files unchanged since (same sizes and mtimes)."""
    return (copy.sha256 is not None and copy.sha256 == params_sha256(row.files) and copy.files is not None
            and set(copy.files) == set(row.files or {}) and file_stats(Path(copy.path), copy.files) == copy.files)


def params_sha256(files: dict | None) -> str | None:
    """The parameters file's sha256 among an SAE's recorded files: what names its weights in a sweep's
    steering id and in each host's copy."""
    for name in PARAMS_FILES:
        if files and name in files:
            return files[name]["sha256"]
    return None


@retried
def downloaded(url: str | None = None) -> list[str]:
    """Ids of every SAE downloaded (on any host), sorted."""
    with read_session(url) as s:
        return list(s.scalars(select(Sae.id).where(Sae.files.is_not(None)).order_by(Sae.id)))


@retried
def copy_on(sae_id: str, host: str, url: str | None = None) -> SaeCopy | None:
    with read_session(url) as s:
        return s.scalar(select(SaeCopy).where(SaeCopy.sae_id == sae_id, SaeCopy.host == host))


@retried
def copies(sae_id: str, url: str | None = None) -> list[SaeCopy]:
    with read_session(url) as s:
        return list(s.scalars(select(SaeCopy).where(SaeCopy.sae_id == sae_id).order_by(SaeCopy.host)))


def present(row: Sae | None, entry: SaeEntry, folder: str | Path | None = None) -> bool:
    """Every file recorded at download is in ``folder`` (default: the first copy's) with the recorded size."""
    if row is None or not (folder or row.local_path) or not row.files:
        return False
    folder = Path(folder or row.local_path)
    return all(
        name in row.files and (folder / name).is_file() and (folder / name).stat().st_size == row.files[name]["size"]
        for name in entry.files
    )
