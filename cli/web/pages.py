"""What each page shows, read from the database: plain dicts for the templates, shared by the server and the
static export. Nothing here writes."""

from __future__ import annotations

from saejobs.db import jobs, results
from saejobs.db.states import JobKind, JobState
from saejobs.engine import score_report, search
from saejobs.engine.errors import NotFoundError
from saejobs.cli.web import highlight

COLUMNS_PER_PAGE = 6  # feature columns of a grid page: a page stays readable and quick for any sweep's width
JOBS_SHOWN = 100
ENDED = (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


def job_dict(job) -> dict:
    d = jobs.as_dict(job)
    d["summary"] = results.summary(job) if job.state == JobState.SUCCEEDED else (job.error or job.message or "")
    d["cancellable"] = job.state not in ENDED
    d["retryable"] = job.state in (JobState.FAILED, JobState.CANCELLED)
    return d


def job_list() -> dict:
    return {"jobs": [job_dict(j) for j in jobs.listing(limit=JOBS_SHOWN)]}


def job_page(ref: str) -> dict:
    job = jobs.get(ref)
    out = {"job": job_dict(job), "events": jobs.as_dict(job, jobs.events(job.id, limit=20))["events"],
           "sweep": None, "rounds": [], "sweeps": []}
    if job.kind == JobKind.SWEEP:
        sweep = results.sweep_for_job(job.id)
        out["sweep"] = None if sweep is None else {"id": sweep.id, "model": sweep.model, "sae": sweep.sae_id}
        out["sweeps"] = [j.id for j in jobs.listing(kind=JobKind.SWEEP, limit=JOBS_SHOWN) if j.id != job.id]
    elif job.kind == JobKind.SEARCH:
        out["rounds"] = (job.result or {}).get("rounds", [])
    return out


def sweep_page(ref: str, group: int = 0, cols: int = 0) -> dict:
    """One (prompt, seed) of a sweep: DEFAULT beside a strength × feature grid of its completions (a page of
    ``COLUMNS_PER_PAGE`` features), each cell coloured by the search's rule and its tokens by the column
    feature's activation; the concept/NLL curves of the page's features with the strength the rule chooses."""
    job, sweep = results.named_sweep(ref, "this page shows a sweep")
    groups = results.input_groups(sweep.id)
    if not groups:
        raise NotFoundError(f"sweep {job.id[:8]} has stored no generations yet")
    group = min(max(group, 0), len(groups) - 1)
    prompt, seed = groups[group]
    index = results.group_index(sweep.id, prompt, seed)
    features = sorted({r["feature"] for r in index if r["type"] == "STEERED"}, key=results.natural)
    n_col_pages = max(1, -(-len(features) // COLUMNS_PER_PAGE))
    cols = min(max(cols, 0), n_col_pages - 1)
    shown = features[cols * COLUMNS_PER_PAGE:(cols + 1) * COLUMNS_PER_PAGE]
    wanted: dict = {}  # the first row of each cell shown (and the DEFAULT): all a page reads in full
    for r in index:
        if r["type"] == "DEFAULT" or r["feature"] in shown:
            wanted.setdefault((r["type"], r["feature"], r["strength"]), r["id"])
    rows = results.rows_by_id(sweep.id, list(wanted.values()))
    default = next((r for r in rows if r["type"] == "DEFAULT"), None)
    steered = [r for r in rows if r["type"] == "STEERED"]
    strengths = sorted({results.grid_strength(r) for r in steered})
    cell = {(r["feature"], results.grid_strength(r)): r for r in steered}
    tok = highlight.tokenizer((sweep.provenance or {}).get("model_source") or sweep.model)
    keys = {f: _concept_key(next(r for r in steered if r["feature"] == f), sweep.sae_id) for f in shown}
    top = {f: max([a for r in rows for a in ((r.get("scores") or {}).get("concept_tokens") or {}).get(keys[f]) or []]
                  or [0.0]) for f in shown if keys[f] is not None}
    curves, base = search.curves(rows)
    baseline = base.get((-1, prompt))
    labels = {r["feature"]: results.joined_label(r["labels"]) for r in steered}
    grid = [{"strength": st, "cells": [_cell(cell.get((f, st)), tok, keys[f], top.get(f), baseline)
                                       for f in shown]} for st in strengths]
    plots = []
    for f in shown:
        key = results.curve_key(f)  # a feature's index, or a named steer's name
        pts = curves.get((key, prompt))
        if pts:
            pick = search.choose(pts, baseline)
            plots.append({"feature": f, "label": labels.get(f), "chosen": pick.strength if pick else None,
                          "svg": score_report.plot(key, pts, base.get((key, prompt)),
                                                   baseline.nll if baseline else None, pick.strength if pick else None,
                                                   search.DEFAULT_MAX_NLL_INCREASE)})
    first = next((f for f in shown if keys[f] is not None), None)  # DEFAULT's tokens: by the first such column
    return {"job": job_dict(job), "sweep": {"id": sweep.id, "model": sweep.model, "sae": sweep.sae_id},
            "prompt": prompt, "seed": seed, "messages": (default or rows[0])["messages"],
            "group": group, "groups": len(groups), "cols": cols, "col_pages": n_col_pages,
            "features": [{"name": f, "label": labels.get(f), "key": keys[f]} for f in shown],
            "default": None if default is None else _cell(default, tok, keys.get(first), top.get(first), None),
            "grid": grid, "plots": plots, "tokenizer": tok is not None, "rows": len(index)}


def _concept_key(row: dict, sae: str) -> str | None:
    """The ``concept`` key a one-feature row is scored under; None for a vector, a combination or a named steer."""
    f = row["features"]
    if len(f) != 1 or "index" not in f[0] or (row.get("sampling") or {}).get("steer"):
        return None
    return str(f[0]["index"]) if f[0].get("sae", sae) == sae else f"{f[0]['sae']}:{f[0]['index']}"


def _cell(row: dict | None, tok, key: str | None, top: float | None, baseline) -> dict | None:
    """A grid cell: the row's completion (its tokens coloured by feature ``key``, ``top`` the darkest), its scores,
    each toned against the search rule's bound relative to ``baseline`` (the DEFAULT's), and its verdict."""
    if row is None:
        return None
    sc = row.get("scores") or {}
    concept = (sc.get("concept") or {}).get(key) if key else None
    verdict, tone = None, {}
    if sc and row["type"] == "STEERED" and baseline is not None:
        rule = search.Rule()
        p = search.Point(results.grid_strength(row), sc.get("concept_mean") or 0.0, sc.get("nll"), 1, sc.get("nll_novel"),
                         sc.get("distinct_2"), sc.get("longest_repeat"), sc.get("concept_fire_rate"))
        verdict = rule.admissible(p, baseline)
        excess = rule.excess_nll(p, baseline)  # each score's colour: within, near or past the rule's bound
        tone["nll"] = _tone(excess, rule.max_nll_increase)
        if p.longest_repeat is not None and baseline.longest_repeat is not None:
            tone["repeat"] = _tone(p.longest_repeat - baseline.longest_repeat, rule.max_repeat_increase)
        if p.distinct_2 is not None and baseline.distinct_2 is not None:
            tone["distinct"] = _tone(baseline.distinct_2 - p.distinct_2, rule.max_distinct2_drop)
    steer = (row.get("sampling") or {}).get("steer")
    point = steer if steer else int(key) if row["type"] == "STEERED" and key is not None and key.isdigit() else None
    return {"id": row["id"], "anchor": f"g{row['id']}" if point is None  # a curve's point links to its cell
            else score_report.anchor(point, results.grid_strength(row)),
            "text": results.completion_text(row),
            "tokens": highlight.tokens(tok, row, key, top), "feature_key": key,
            "concept": concept, "concept_mean": sc.get("concept_mean"), "nll": sc.get("nll"), "nll_novel": sc.get("nll_novel"),
            "distinct_2": sc.get("distinct_2"), "longest_repeat": sc.get("longest_repeat"),
            "admissible": verdict, "scored": bool(sc), "tone": tone}


def _tone(excess: float | None, bound: float) -> str:
    """How a score stands against its bound in the search rule: "good" (within half of it), "near", "bad" (past it)."""
    if excess is None:
        return ""
    return "bad" if excess > bound else "near" if excess > bound / 2 else "good"


def generation_page(gen_id: int) -> dict:
    from saejobs.db import judgements, neuronpedia

    found = results.generation(gen_id)
    if found is None:
        raise NotFoundError(f"no generation {gen_id}")
    row, sweep = found
    tok = highlight.tokenizer((sweep.provenance or {}).get("model_source") or sweep.model)
    concepts = [{"key": k, "tokens": highlight.tokens(tok, row, k), **v}
                for k, v in ((row.get("scores") or {}).get("concept") or {}).items()]
    return {"row": row, "completion": results.completion_text(row), "job": sweep.job_id,
            "sweep": {"id": sweep.id, "model": sweep.model, "sae": sweep.sae_id}, "concepts": concepts,
            "scores": {k: v for k, v in (row.get("scores") or {}).items() if k not in ("concept", "concept_tokens")},
            "tokenizer": tok is not None, "neuronpedia": neuronpedia.runs_for_generation(gen_id),
            "judgements": judgements.of_generation(gen_id)}


def compare_page(a: str, b: str) -> dict:
    from saejobs.tasks import compare

    return compare.sweeps(a, b)


def neuronpedia_page(ref: str) -> dict:
    from saejobs.tasks import neuronpedia

    return neuronpedia.compare(ref, store_rows=False)
