"""Verify job: structural checks of a downloaded SAE, recorded with their evidence."""

from __future__ import annotations

from db import results, saes
from engine import provenance, registry
from engine.errors import NotFoundError
from engine.verify import structural


def run(ctx) -> dict:
    entry = registry.get(ctx.params["sae"])
    row = saes.get(entry.id)
    folder = ctx.params.get("path") or (row.local_path if row else None)
    if not folder:
        raise NotFoundError(f"SAE '{entry.id}' is not downloaded; run `saejobs download {entry.id}` first")
    report = structural(entry, folder, row.files if row else None, ctx.progress)
    prov = {"sae_sha256": report.metrics.get("sha256"), "path": str(folder), "versions": provenance.versions()}
    results.record_verification(ctx.job.id, entry.id, report.verdict, report.reasons, report.metrics, prov)
    ctx.progress(1.0, f"verdict {report.verdict}", force=True)
    return {"sae": entry.id, "verdict": report.verdict, "reasons": report.reasons}
