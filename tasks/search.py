"""Search job: the strength that maximises the concept score while the text stays fluent and not
degenerate (``engine.search``), in a few rounds, each round one batched sweep job.

Without held-out prompts the choice is per feature × prompt. With them (``--holdout-prompts``, as AxBench
splits its prompts) the rounds run on the training prompts, the strength is chosen per feature by the
combined concept/fluency score averaged over them, and that strength is then run on the held-out prompts
(one more sweep), whose scores are the reported ones.

Each round's sweep is a child job of its own (its rows, scores and provenance stored and shown like any
sweep's). Queued, it is split into shards as a submitted sweep is (sized by the live workers): other
workers take some, and the worker running the search runs every shard no one has claimed, in its process
(``JobContext.run_child``), so a host with one worker never waits on itself. A round's progress is the
search's, and a search handed on resumes from the rounds it finished. The chosen strengths and every
curve are the search job's result.
"""

from __future__ import annotations

from collections import defaultdict

from saejobs.db import results
from saejobs.db.states import JobKind
from saejobs.engine import search
from saejobs.engine.job_requests import SearchRequest


def run(ctx) -> dict:
    req = SearchRequest.from_params(ctx.params)
    lo, hi, rule = req.lo, req.hi, req.rule
    holdout = bool(req.holdout_prompts)
    rounds = 1 + req.refine_rounds
    share = rounds / (rounds + holdout)  # of the progress bar: the rounds, then the held-out sweep
    strengths = search.coarse_grid(lo, hi, req.points)
    step = (hi - lo) / max(len(strengths) - 1, 1)
    rows: list[dict] = []
    round_jobs: list[str] = []
    for i in range(rounds):
        ctx.progress(share * i / rounds, f"round {i + 1}/{rounds}: strengths {', '.join(f'{s:g}' for s in strengths)}",
                     force=True)
        sweep = req.round(strengths)
        job_id = ctx.run_child(JobKind.SWEEP, sweep.to_params(), key=f"round-{i}", sae_id=sweep.sae,
                               span=(share * i / rounds, share * (i + 1) / rounds), shards=_shards(ctx, sweep)).id
        round_jobs.append(job_id)
        rows += results.generation_rows(job_id)
        curves, base = search.curves(rows)
        if holdout:
            best = [c[0] for c in _per_feature(curves, base, rule).values() if c]
        else:
            best = [c.strength for k, pts in curves.items() if (c := search.choose(pts, base.get((-1, k[1])), rule))]
        done = {pt.strength for pts in curves.values() for pt in pts}
        step /= 2
        strengths = search.refine(best, 2 * step, lo, hi, done)
        if not strengths:
            break
    curves, base = search.curves(rows)
    out = {"sae": req.sae, "rounds": round_jobs, "max_nll_increase": rule.max_nll_increase,
           "max_repeat_increase": rule.max_repeat_increase, "max_distinct2_drop": rule.max_distinct2_drop,
           "range": [lo, hi], "curves": [{**_who(f), "prompt": pr, "points": [
               {**vars(pt), "admissible": rule.admissible(pt, base.get((-1, pr))),
                "combined": rule.combined(pt, base.get((-1, pr)))} for pt in pts]} for (f, pr), pts in _ordered(curves)]}
    if holdout:
        out.update(_held_out(ctx, req, curves, base, share))
    else:
        out["chosen"] = [_chosen(rows, f, pr, pts, base, rule) for (f, pr), pts in _ordered(curves)]
    ctx.progress(1.0, "; ".join(_summary(c) for c in out["chosen"]), force=True)
    return out


def _shards(ctx, sweep) -> list[dict] | None:
    """A queued search's round as shards, sized by the live workers as a submitted sweep's are (one live
    worker: one shard, run whole here); a ``--local`` search runs its rounds whole in its process."""
    if ctx.executor.local:
        return None
    from saejobs.tasks.submit import shard_plan

    return shard_plan(sweep)


def _ordered(curves) -> list:
    """Curves by feature index, then named steers by name, then prompt."""
    return sorted(curves.items(), key=lambda kv: (search.key_order(kv[0][0]), kv[0][1]))


def _who(key: int | str) -> dict:
    """What a curve or a choice is of: ``feature`` its key (an index, or a named steer's name); a named steer's
    also carry ``steer`` (its name), so a reader tells the two apart without guessing from the type."""
    return {"feature": key, "steer": key} if isinstance(key, str) else {"feature": key}


def _per_feature(curves, base, rule) -> dict[int | str, tuple[float, float] | None]:
    """Per feature (or named steer), (strength, mean combined score) over the training prompts
    (``search.choose_across``)."""
    by_feature: dict[int | str, dict[str, list]] = defaultdict(dict)
    for (f, pr), pts in curves.items():
        by_feature[f][pr] = pts
    return {f: search.choose_across(per_prompt, {pr: base.get((-1, pr)) for pr in per_prompt}, rule)
            for f, per_prompt in sorted(by_feature.items(), key=lambda kv: search.key_order(kv[0]))}


def _chosen(rows, feature, prompt, pts, base, rule) -> dict:
    b = base.get((-1, prompt))
    c = search.choose(pts, b, rule)
    return {**_who(feature), "prompt": prompt, "strength": c.strength if c else None,
            "concept": c.concept if c else None, "nll": c.nll if c else None,
            "nll_novel": c.nll_novel if c else None, "combined": rule.combined(c, b) if c else None,
            "default_nll": b.nll if b else None, "default_nll_novel": b.nll_novel if b else None,
            "default_concept": base.get((feature, prompt)),
            "nll_bound": None if b is None or b.nll is None else b.nll + rule.max_nll_increase,
            "output": _output(rows, feature, prompt, c.strength) if c else None}


def _held_out(ctx, req: SearchRequest, curves, base, share: float) -> dict:
    """Each feature's strength chosen on the training prompts, then run and scored on the held-out ones."""
    rule = req.rule
    picks = _per_feature(curves, base, rule)
    by_strength: dict[float, list[int | str]] = defaultdict(list)
    for f, pick in picks.items():
        if pick:
            by_strength[pick[0]].append(f)
    rows: list[dict] = []
    jobs = []
    for n, (strength, features) in enumerate(sorted(by_strength.items())):
        sweep = req.round([strength], features=[f for f in features if isinstance(f, int)], prompts=req.holdout_prompts,
                          steers=[f for f in features if isinstance(f, str)])
        jobs.append(ctx.run_child(JobKind.SWEEP, sweep.to_params(), key=f"holdout-{strength:g}", sae_id=sweep.sae,
                                  span=(share + (1 - share) * n / len(by_strength),
                                        share + (1 - share) * (n + 1) / len(by_strength)),
                                  shards=_shards(ctx, sweep)).id)
        rows += results.generation_rows(jobs[-1])
    held, held_base = search.curves(rows)
    chosen = []
    for f, pick in picks.items():
        entry = {**_who(f), "prompt": None, "strength": pick[0] if pick else None,
                 "train_combined": pick[1] if pick else None, "held_out": []}
        for pr in req.holdout_prompts:
            b = held_base.get((-1, pr))
            pt = next((p for p in held.get((f, pr), []) if pick and p.strength == pick[0]), None)
            entry["held_out"].append({
                "prompt": pr, "concept": pt.concept if pt else None, "nll": pt.nll if pt else None,
                "nll_novel": pt.nll_novel if pt else None, "admissible": rule.admissible(pt, b) if pt else None,
                "combined": rule.combined(pt, b) if pt else None, "default_nll": b.nll if b else None,
                "default_concept": held_base.get((f, pr)),
                "output": _output(rows, f, pr, pt.strength) if pt else None})
        scored = [h["combined"] for h in entry["held_out"] if h["combined"] is not None]
        entry["combined"] = sum(scored) / len(scored) if scored else None  # the held-out mean: the reported score
        entry["concept"] = _mean([h["concept"] for h in entry["held_out"]])
        chosen.append(entry)
    return {"chosen": chosen, "holdout_jobs": jobs, "holdout_prompts": list(req.holdout_prompts)}


def _output(rows, feature, prompt, strength) -> str | None:
    """The first generation of a curve's point: a feature's row at that strength, or a named steer's at that
    multiplier."""
    def at(r) -> bool:
        steer = (r.get("sampling") or {}).get("steer")
        if isinstance(feature, str):
            return steer == feature and r["sampling"].get("strength_multiplier", 1.0) == strength
        return not steer and r["features"][0].get("index") == feature and r["features"][0]["strength"] == strength
    return next((r["output"] for r in rows if r["type"] == "STEERED" and r["prompt"] == prompt and at(r)), None)


def _mean(values):
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def _summary(c: dict) -> str:
    where = f" on {c['prompt'][:24]!r}" if c.get("prompt") else " (held-out prompts)"
    what = f"steer '{c['steer']}'" if c.get("steer") else f"feature {c['feature']}"
    if c["strength"] is None:
        return f"{what}{where}: no admissible strength"
    extra = f"concept {c['concept']:.3g}" if c.get("concept") is not None else "concept -"
    if c.get("combined") is not None:
        extra += f", combined {c['combined']:.3f}"
    return f"{what}{where}: {'multiplier' if c.get('steer') else 'strength'} {c['strength']:g} ({extra})"
