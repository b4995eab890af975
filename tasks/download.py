"""Download job: the registry's files for one SAE, into the cache, checked, recorded."""

from __future__ import annotations

from pathlib import Path

from db import saes
from engine import download, registry


def run(ctx) -> dict:
    entry = registry.get(ctx.params["sae"])
    dest = download.local_folder(entry)
    with download.folder_lock(dest):
        row = saes.get(entry.id)
        if saes.present(row, entry) and Path(row.local_path) == dest:
            ctx.progress(1.0, "already present and verified; nothing transferred", force=True)
            return {"sae": entry.id, "path": str(dest), "files": row.files, "transferred_bytes": 0}
        source = ctx.params.get("source")
        if source:
            digests = download.fetch_from_mirror(entry, Path(source), dest, ctx.progress)
        else:
            from engine.hub import fetch_from_hub

            digests = fetch_from_hub(entry, dest, ctx.progress)
    files = {name: {"sha256": d, "size": (dest / name).stat().st_size} for name, d in digests.items()}
    saes.record_download(entry, dest, files)
    ctx.progress(1.0, "downloaded", force=True)
    return {"sae": entry.id, "path": str(dest), "files": files,
            "transferred_bytes": sum(f["size"] for f in files.values())}
