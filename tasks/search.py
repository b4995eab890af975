"""Search job: per feature × prompt, the strength that maximises the concept score within a fluency
bound (``engine.search``), in a few rounds, each round one batched sweep job.

Each round's sweep is a child job of its own (its rows, scores and provenance stored and shown like any
sweep's), run by the worker that runs the search, in its process (``JobContext.run_child``): a search
that waited for other workers could wait forever on a host with one worker. A round's progress is the
search's, and a search handed on resumes from the rounds it finished. The chosen strengths and every
curve are the search job's result.
"""

from __future__ import annotations

from saejobs.db import results
from saejobs.db.states import JobKind
from saejobs.engine import search
from saejobs.engine.job_requests import SearchRequest


def run(ctx) -> dict:
    req = SearchRequest.from_params(ctx.params)
    lo, hi, bound = req.lo, req.hi, req.max_nll_increase
    rounds = 1 + req.refine_rounds
    strengths = search.coarse_grid(lo, hi, req.points)
    step = (hi - lo) / max(len(strengths) - 1, 1)
    rows: list[dict] = []
    round_jobs: list[str] = []
    for i in range(rounds):
        ctx.progress(i / rounds, f"round {i + 1}/{rounds}: strengths {', '.join(f'{s:g}' for s in strengths)}",
                     force=True)
        sweep = req.round(strengths)
        job_id = ctx.run_child(JobKind.SWEEP, sweep.to_params(), key=f"round-{i}", sae_id=sweep.sae,
                               span=(i / rounds, (i + 1) / rounds)).id
        round_jobs.append(job_id)
        rows += results.generation_rows(job_id)
        curves, base = search.curves(rows)
        best = [c.strength for k, pts in curves.items() if (c := search.choose(pts, base.get((-1, k[1])), bound))]
        done = {pt.strength for pts in curves.values() for pt in pts}
        step /= 2
        strengths = search.refine(best, 2 * step, lo, hi, done)
        if not strengths:
            break
    curves, base = search.curves(rows)
    chosen = []
    for (feature, prompt), pts in sorted(curves.items()):
        default_nll = base.get((-1, prompt))
        c = search.choose(pts, default_nll, bound)
        text = next((r["output"] for r in rows if c and r["type"] == "STEERED" and r["prompt"] == prompt
                     and r["features"][0]["index"] == feature and r["features"][0]["strength"] == c.strength), None)
        chosen.append({"feature": feature, "prompt": prompt, "strength": c.strength if c else None,
                       "concept": c.concept if c else None, "nll": c.nll if c else None, "default_nll": default_nll,
                       "default_concept": base.get((feature, prompt)), "nll_bound": None if default_nll is None
                       else default_nll + bound, "output": text})
    ctx.progress(1.0, "; ".join(f"feature {c['feature']} on {c['prompt'][:24]!r}: "
                                + ("no strength within the bound" if c["strength"] is None else
                                   f"strength {c['strength']:g} (concept {c['concept']:.3g}, NLL {c['nll']:.3f})")
                                for c in chosen), force=True)
    return {"sae": req.sae, "rounds": round_jobs, "max_nll_increase": bound, "range": [lo, hi], "chosen": chosen,
            "curves": [{"feature": f, "prompt": pr, "points": [vars(pt) for pt in pts]}
                       for (f, pr), pts in sorted(curves.items())]}
