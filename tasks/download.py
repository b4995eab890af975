"""Download job: the registry's files for one SAE, into the cache, checked, recorded (under the folder lock)."""

from __future__ import annotations

from pathlib import Path

from saejobs.db import saes
from saejobs.engine import download, registry
from saejobs.engine.job_requests import DownloadRequest


def run(ctx) -> dict:
    req = DownloadRequest.from_params(ctx.params)
    entry = registry.get(req.sae)
    dest = download.local_folder(entry)
    host = ctx.executor.host
    with download.folder_lock(dest):
        row = saes.get(entry.id)
        copy = saes.copy_on(entry.id, host)
        if saes.present(row, entry, dest) and (copy is not None and Path(copy.path) == dest or Path(row.local_path) == dest):
            saes.record_copy(entry.id, host, dest, row.files)
            ctx.progress(1.0, "already present and verified; nothing transferred", force=True)
            return {"sae": entry.id, "path": str(dest), "files": row.files, "transferred_bytes": 0}
        source, revision = req.source, None
        if source:
            digests = download.fetch_from_mirror(entry, Path(source), dest, ctx.progress)
        else:
            from saejobs.engine import hub  # huggingface_hub loads only for Hub downloads

            digests, revision = hub.fetch(entry, dest, ctx.progress)
        files = {name: {"sha256": d, "size": (dest / name).stat().st_size} for name, d in digests.items()}
        saes.record_download(entry, dest, files, revision=revision, host=host, source=source,
                             owner=(ctx.job.id, ctx.executor.name))
    ctx.progress(1.0, "downloaded", force=True)
    return {"sae": entry.id, "path": str(dest), "files": files,
            "transferred_bytes": sum(f["size"] for f in files.values())}
