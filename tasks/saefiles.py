"""Each host its own verified copy of an SAE: the ``saes`` row holds the checksums every copy must match,
``sae_copies`` which host holds one where. A job that lands on a host without a copy fetches one there
(from the mirror the SAE was downloaded from, else the Hub at the recorded revision), checks every file's
sha256 against the recorded ones before it is renamed into place, records the copy, then runs — so a
sweep's shards can run on any host. A copy is reused while it matches the SAE's current digest and its
files' sizes and mtimes are those checked; otherwise it is hashed again (and fetched again if it differs)."""

from __future__ import annotations

from pathlib import Path

from saejobs.db import saes
from saejobs.db.models import Sae
from saejobs.engine import download, registry
from saejobs.engine.errors import IntegrityError, NotFoundError
from saejobs.engine.registry.entry import SaeEntry


def resolve_entry(sae_id: str) -> SaeEntry:
    """The registry's entry, else the one recorded with the download: an SAE registered on the host that
    downloaded it (``registry.d``) is known to workers on every host."""
    try:
        return registry.get(sae_id)
    except NotFoundError:
        row = saes.get(sae_id)
        if row is None or not row.entry:
            raise
        from saejobs.engine.registry.custom import parse

        return parse(row.entry, f"the entry recorded with {sae_id}'s download")


def local_copy(ctx, entry: SaeEntry) -> tuple[Sae, Path]:
    """(the SAE's row, the folder holding this host's verified copy), fetching it first if need be."""
    return copy_on_host(entry, ctx.executor.host, ctx.progress)


def copy_on_host(entry: SaeEntry, host: str, progress) -> tuple[Sae, Path]:
    """``local_copy`` for a caller that is not a job (``progress(fraction, message, force=...)``)."""
    row = saes.get(entry.id)
    if row is None or not row.files:
        raise NotFoundError(f"SAE '{entry.id}' is not downloaded; run `saejobs download {entry.id}` first")
    copy = saes.copy_on(entry.id, host)
    if copy is not None and saes.copy_is_current(row, copy):
        return row, Path(copy.path)
    dest = download.local_folder(entry)
    with download.folder_lock(dest):
        if saes.present(row, entry, dest) and _matches(row, dest, progress):  # re-hashed: changed, or another worker's
            saes.record_copy(entry.id, host, dest, row.files)
            return row, dest
        progress(0.0, f"fetching {entry.id} to {host}", force=True)
        expected = {name: meta["sha256"] for name, meta in row.files.items()}  # checked before each rename
        if row.source:
            digests = download.fetch_from_mirror(entry, Path(row.source), dest, progress, expected=expected)
        else:
            from saejobs.engine import hub

            digests, _ = hub.fetch(entry, dest, progress, revision=row.revision, expected=expected)
        _check(row, digests, host)
        saes.record_copy(entry.id, host, dest, row.files)
    return row, dest


def _matches(row: Sae, folder: Path, progress) -> bool:
    progress(0.0, f"checking the copy in {folder}", force=True)
    return all(download.sha256_file(folder / name) == meta["sha256"] for name, meta in row.files.items())


def _check(row: Sae, digests: dict[str, str], host: str) -> None:
    for name, meta in row.files.items():
        if digests.get(name) != meta["sha256"]:
            raise IntegrityError(f"{row.id}: {name} fetched on {host} has sha256 {str(digests.get(name))[:12]}, "
                                 f"the recorded download {meta['sha256'][:12]}; refusing to run on other bytes")
