"""Score job: fill in the scores of a stored sweep's generations that have none (stored before scoring).

A job kind, not a synchronous command: scoring needs the sweep's model and SAE, which a worker
already keeps loaded on its device (a CLI would load both on a CPU each time); it is resumable and
cancellable like a sweep (each chunk's scores are written in one transaction, only where none are
stored, so a re-run or a kill loses or doubles nothing), and ``--local`` still runs it here.
"""

from __future__ import annotations

from saejobs.db import saes
from saejobs.db import scores as store
from saejobs.engine import score
from saejobs.engine.errors import IntegrityError, NotFoundError
from saejobs.engine.job_requests import ScoreRequest
from saejobs.engine.request import SweepRequest
from saejobs.tasks.saefiles import local_copy, resolve_entry

CHUNK = 64  # rows scored and written together


def run(ctx) -> dict:
    target = ScoreRequest.from_params(ctx.params).job
    sweep, rows = store.unscored(target)
    if sweep is None:
        raise NotFoundError(f"job {target[:8]} has no stored sweep to score")
    req = SweepRequest.from_params(sweep.settings)
    entry = resolve_entry(req.sae)
    row, folder = local_copy(ctx, entry)
    sha = (sweep.provenance or {}).get("sae_sha256")
    if sha and sha != saes.params_sha256(row.files):
        raise IntegrityError(f"the SAE {entry.id} changed since sweep {target[:8]} ran (sha256 {sha[:12]}...); "
                             "its scores would not describe the features it steered")
    total = len(rows)
    ctx.progress(0.0, f"loading SAE {entry.id}", force=True)
    sae = ctx.executor.cache.sae(entry, str(folder))
    steering = [(e, ctx.executor.cache.sae(e, str(local_copy(ctx, e)[1]))) for e in map(resolve_entry, req.steer_saes())]
    lm = ctx.model_for(req.model or entry.model_hf, req.dtype, [(entry, sae), *steering])
    others = {e.id: (other, e.hook_name) for e, other in steering}  # each read at its own hook, as the sweep scored them
    baseline = req.concept_features(entry.id)
    written = 0
    for start in range(0, total, CHUNK):
        part = rows[start:start + CHUNK]
        items = [score.Item(r["prompt_token_ids"], r["token_ids"], score.concept_features(r["features"], baseline, entry.id),
                            score.other_concepts(r["features"], entry.id)) for r in part]
        out = score.score(lm, sae, entry.hook_name, items, others=others,
                          on_group=lambda n, _s=start: ctx.progress((_s + n) / total, f"{_s + n}/{total} scored"))
        written += store.set_scores({r["id"]: s for r, s in zip(part, out)},
                                   owner=(ctx.job.id, ctx.executor.name))
        ctx.progress((start + len(part)) / total, f"{start + len(part)}/{total} scored", force=True)
    return {"scored_job": target, "sweep_id": sweep.id, "scored": written, "unscored_before": total}
