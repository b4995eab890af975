"""Verify job: structural checks of a downloaded SAE, then (unless structural only) its behaviour on
real text through the worker's cached model; the verdict is recorded with its evidence."""

from __future__ import annotations

from saejobs.db import results, saes
from saejobs.engine import provenance
from saejobs.engine.job_requests import VerifyRequest
from saejobs.engine.verify import functional, structural
from saejobs.tasks.saefiles import local_copy, resolve_entry


def run(ctx) -> dict:
    req = VerifyRequest.from_params(ctx.params)
    entry = resolve_entry(req.sae)
    if req.path:  # a folder on the worker's host, verified as it is
        row, folder = saes.get(entry.id), req.path
    else:
        row, folder = local_copy(ctx, entry)
    structural_only = req.structural_only
    share = 1.0 if structural_only else 0.2
    report = structural(entry, folder, row.files if row else None, lambda f, m: ctx.progress(share * f, m))
    prov = {"sae_sha256": report.metrics.get("sha256"), "path": str(folder), "versions": provenance.versions()}
    if report.verdict != "FAIL" and not structural_only:
        source = req.model or entry.model_hf
        sae = ctx.executor.cache.sae(entry, folder)
        lm = ctx.model_for(source, req.dtype, [(entry, sae)], at=share)
        functional(report, entry, sae, lm, max_tokens=req.max_tokens,
                   progress=lambda f, m: ctx.progress(share + (1 - share) * f, m))
        prov.update(model=lm.model_id, model_source=source, model_revision=lm.revision,
                    dtype=str(lm.dtype).removeprefix("torch."), device=str(lm.device))
    results.record_verification(ctx.job.id, entry.id, report.verdict, report.reasons, report.metrics, prov,
                                owner=(ctx.job.id, ctx.executor.name))
    ctx.progress(1.0, f"verdict {report.verdict}", force=True)
    return {"sae": entry.id, "verdict": report.verdict, "reasons": report.reasons,
            "functional": report.metrics.get("functional")}
