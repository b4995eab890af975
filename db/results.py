"""Writing and reading results: verifications, sweeps and generations (idempotent by key)."""

from __future__ import annotations

import re

from typing import Any, Iterator

from sqlalchemy import String, cast, func, select
from sqlalchemy.exc import IntegrityError

from saejobs.db import explanations, jobs
from saejobs.db.models import Generation, Job, Sweep, Verification
from saejobs.db.session import read_session, retried, session
from saejobs.db.states import JobKind
from saejobs.engine import failpoints


@retried
def record_verification(job_id: str, sae_id: str, verdict: str, reasons: list, metrics: dict, provenance: dict,
                        *, owner: tuple[str, str] | None = None, url: str | None = None) -> None:
    """``owner`` (job id, worker): written only while that worker still runs the job (see ``add_generations``)."""
    with session(url) as s:
        if owner is not None and not jobs.owned(s, *owner):
            raise jobs.JobCancelled(owner[0])
        row = s.scalar(select(Verification).where(Verification.job_id == job_id)) or Verification(job_id=job_id)
        row.sae_id, row.verdict, row.reasons, row.metrics, row.provenance = sae_id, verdict, reasons, metrics, provenance
        s.add(row)


@retried
def verifications(sae_id: str | None = None, job_id: str | None = None, url: str | None = None) -> list[Verification]:
    with read_session(url) as s:
        q = select(Verification).order_by(Verification.id.desc())
        if sae_id:
            q = q.where(Verification.sae_id == sae_id)
        if job_id:
            q = q.where(Verification.job_id == job_id)
        return list(s.scalars(q))


def verification_dict(v: Verification) -> dict[str, Any]:
    return {"job": v.job_id, "sae_id": v.sae_id, "verdict": v.verdict, "reasons": v.reasons, "metrics": v.metrics,
            "provenance": v.provenance, "created_at": v.created_at.isoformat()}


@retried
def ensure_sweep(job_id: str, sae_id: str, model: str, settings: dict, provenance: dict, *,
                 owner: tuple[str, str] | None = None, url: str | None = None) -> int:
    """The sweep row of a job, created on its first run; a re-run keeps the row (and its generations).
    Shards of one sweep may race to create it: the loser reads the winner's row. ``owner`` (the running
    job, its worker): nothing is written once that worker has lost the job."""
    with session(url) as s:
        if owner is not None and not jobs.owned(s, *owner):
            raise jobs.JobCancelled(owner[0])
        row = s.scalar(select(Sweep).where(Sweep.job_id == job_id))
        if row is None:
            try:
                with s.begin_nested():
                    row = Sweep(job_id=job_id, sae_id=sae_id, model=model, settings=settings, provenance=provenance)
                    s.add(row)
                    s.flush()
            except IntegrityError:
                row = s.scalar(select(Sweep).where(Sweep.job_id == job_id))
        else:
            row.provenance = provenance  # the latest run's environment; outputs must not depend on it
        return row.id


@retried
def config_keys(sweep_id: int, url: str | None = None) -> set[str]:
    with read_session(url) as s:
        return set(s.scalars(select(Generation.config_key).where(Generation.sweep_id == sweep_id)))


@retried
def add_generations(sweep_id: int, rows: list[dict], *, owner: tuple[str, str] | None = None,
                    url: str | None = None) -> int:
    """Store a chunk in one transaction, skipping keys already stored; returns how many were new.

    ``owner`` (job id, worker): written only while that worker still runs that job (its row locked for
    the transaction), else ``JobCancelled`` — a worker back from an outage whose job was handed on
    writes nothing, and cannot race the new owner's insert."""
    with session(url) as s:
        if owner is not None and not jobs.owned(s, *owner):
            raise jobs.JobCancelled(owner[0])
        have = set(s.scalars(select(Generation.config_key).where(
            Generation.sweep_id == sweep_id, Generation.config_key.in_([r["config_key"] for r in rows]))))
        new = [Generation(sweep_id=sweep_id, **r) for r in rows if r["config_key"] not in have]
        s.add_all(new)
        s.flush()
        failpoints.hit("results.before_commit")
        return len(new)


@retried
def sweep_for_job(job_id: str, url: str | None = None) -> Sweep | None:
    with read_session(url) as s:
        return sweep_of(s, job_id)


def named_sweep(ref: str, takes: str, url: str | None = None) -> tuple[Job, Sweep]:
    """The sweep job ``ref`` names (a shard's id, or a prefix, names its sweep) and its sweep row. A job of another
    kind is refused in one line ending with ``takes`` (what the command takes), a sweep that stored nothing yet too."""
    from saejobs.engine.errors import NotFoundError, UsageError

    job = jobs.get(ref, url=url)
    job = jobs.get(job.parent_id, url=url) if job.parent_id else job
    if job.kind != JobKind.SWEEP:
        raise UsageError(f"job {job.id[:8]} is a {job.kind} job; {takes}")
    sweep = sweep_for_job(job.id, url=url)
    if sweep is None:
        raise NotFoundError(f"sweep {job.id[:8]} has stored no generations yet")
    return job, sweep


def sweep_of(s, job_id: str) -> Sweep | None:
    """The sweep a job wrote: its own, or for a shard its sweep's."""
    return s.scalar(select(Sweep).where(Sweep.job_id == job_id)) or s.scalar(
        select(Sweep).where(Sweep.job_id == select(Job.parent_id).where(Job.id == job_id).scalar_subquery()))


EXPORT_PAGE = 500  # generations read per transaction by an export: its memory is a page, not the sweep


def generation_rows(job_id: str, url: str | None = None) -> list[dict[str, Any]]:
    """Every generation of a job's sweep, as dicts (small sweeps; exports use ``iter_generation_rows``)."""
    return list(iter_generation_rows(job_id, url=url))


def iter_generation_rows(job_id: str, *, page: int = EXPORT_PAGE, url: str | None = None) -> Iterator[dict[str, Any]]:
    """The same rows in id order, read a page at a time (each page its own short read transaction), so
    exporting a 100k-row sweep holds one page in memory and never blocks a writer."""
    sweep_id = _sweep_id(job_id, url=url)
    after = 0
    while sweep_id is not None:
        rows = _page(sweep_id, after, page, url=url)
        yield from rows
        if len(rows) < page:
            return
        after = rows[-1]["id"]


@retried
def has_chats(job_id: str, url: str | None = None) -> bool:
    """Whether any generation of the job's sweep continues a chat (an export's columns, before its rows)."""
    with read_session(url) as s:
        sweep = sweep_of(s, job_id)
        as_text = func.coalesce(cast(Generation.messages, String), "null")  # JSON null or SQL NULL: no chat
        return sweep is not None and s.scalar(select(Generation.id).where(
            Generation.sweep_id == sweep.id, as_text != "null").limit(1)) is not None


@retried
def _sweep_id(job_id: str, url: str | None = None) -> int | None:
    with read_session(url) as s:
        sweep = sweep_of(s, job_id)
        return None if sweep is None else sweep.id


@retried
def _page(sweep_id: int, after: int, limit: int, url: str | None = None) -> list[dict[str, Any]]:
    with read_session(url) as s:
        gens = list(s.scalars(select(Generation).where(Generation.sweep_id == sweep_id, Generation.id > after)
                              .order_by(Generation.id).limit(limit)))
        return row_dicts(s, gens, s.scalar(select(Sweep.sae_id).where(Sweep.id == sweep_id)))


def row_dicts(s, gens: list[Generation], sae: str) -> list[dict[str, Any]]:
    """Generations as the dicts every reader takes (exports, grids, `serve`), each feature's cached label read
    in one query."""
    known = explanations.lookup(s, ((f.get("sae") or sae, f["index"]) for g in gens for f in g.features if "index" in f))
    return [{"id": g.id, "config_key": g.config_key, "type": g.type, "features": g.features,
             "feature": grid_column(g.features, g.sampling),
             "strengths": [f["strength"] for f in g.features],
             "prompt": g.prompt, "prompt_token_ids": g.prompt_token_ids, "seed": g.seed, "sampling": g.sampling,
             "output": g.output, "token_ids": g.token_ids, "n_tokens": len(g.token_ids), "logprobs": g.logprobs,
             "messages": g.messages, "conversation": _conversation(g), "scores": g.scores,
             "labels": [known.get((f.get("sae") or sae, f.get("index"))) for f in g.features]}
            for g in gens]


@retried
def model_sources(limit: int, url: str | None = None) -> list[str]:
    """The model sources the latest sweeps ran (newest first, distinct): the tokenizers `serve` loads up front."""
    with read_session(url) as s:
        out: list[str] = []
        for model, prov in s.execute(select(Sweep.model, Sweep.provenance).order_by(Sweep.id.desc()).limit(100)):
            src = (prov or {}).get("model_source") or model
            if src not in out:
                out.append(src)
        return out[:limit]


@retried
def input_groups(sweep_id: int, url: str | None = None) -> list[tuple[str, int]]:
    """A sweep's (prompt, seed) pairs in the order they were first stored: the pages of its grid. One grouped
    query over the sweep's index; no row is decoded."""
    with read_session(url) as s:
        first = func.min(Generation.id)
        return [(p, sd) for p, sd, _ in s.execute(select(Generation.prompt, Generation.seed, first)
                                                 .where(Generation.sweep_id == sweep_id)
                                                 .group_by(Generation.prompt, Generation.seed).order_by(first))]


@retried
def group_index(sweep_id: int, prompt: str, seed: int, url: str | None = None) -> list[dict[str, Any]]:
    """One (prompt, seed) page of a sweep's grid, light: each row's id, type, column (``feature``) and
    strength, without texts, ids or scores (a page then reads in full only the rows it shows)."""
    with read_session(url) as s:
        q = (select(Generation.id, Generation.type, Generation.features, Generation.sampling)
             .where(Generation.sweep_id == sweep_id, Generation.prompt == prompt, Generation.seed == seed)
             .order_by(Generation.id))
        return [{"id": i, "type": t, "feature": grid_column(fs, sm),
                 "strength": grid_strength({"features": fs, "sampling": sm})} for i, t, fs, sm in s.execute(q)]


STEER_ESCAPE = "steer:"  # before a steer's name that would read as a feature column ("5", "1+2", "DEFAULT")


def grid_column(features: list[dict], sampling: dict | None) -> str:
    """A row's column on a grid: its named steer, else its features' indices (or vectors) joined by "+". A
    steer named like a feature column, or like an escaped name, is ``STEER_ESCAPE`` + its name, so that no two
    different columns share a label (a steer "5" is not feature 5's column)."""
    name = (sampling or {}).get("steer")
    if not name:
        return _feature_label(features)
    if name == "DEFAULT" or name.startswith(STEER_ESCAPE) or re.fullmatch(r"\d+(\+\d+)*", name):
        return STEER_ESCAPE + name
    return name


def curve_key(column: str) -> int | str:
    """The key ``engine.search.curves`` gives a grid column's curve: a feature's index, else the steer's name."""
    if column.startswith(STEER_ESCAPE):
        return column[len(STEER_ESCAPE):]
    return int(column) if column.isdigit() else column


def grid_strength(row: dict) -> float | None:
    """A row's place on a grid's strength axis: a named steer's multiplier, else its first feature's strength."""
    sampling = row.get("sampling") or {}
    if sampling.get("steer"):
        return float(sampling.get("strength_multiplier", 1.0))
    return row["features"][0]["strength"] if row["features"] else None


@retried
def rows_by_id(sweep_id: int, ids: list[int], url: str | None = None) -> list[dict[str, Any]]:
    """These generations of one sweep in full (``row_dicts``), in id order."""
    with read_session(url) as s:
        gens = list(s.scalars(select(Generation).where(Generation.sweep_id == sweep_id, Generation.id.in_(ids))
                              .order_by(Generation.id)))
        return row_dicts(s, gens, s.scalar(select(Sweep.sae_id).where(Sweep.id == sweep_id)))


@retried
def generation(gen_id: int, url: str | None = None) -> tuple[dict[str, Any], Sweep] | None:
    """One generation (``row_dicts``) and its sweep, by the id that `serve` gives it a stable URL with."""
    with read_session(url) as s:
        g = s.get(Generation, gen_id)
        return None if g is None else (row_dicts(s, [g], g.sweep.sae_id)[0], g.sweep)


def completion_text(row: dict) -> str:
    """A generation's text without the prompt it continues (``output`` holds both, as Neuronpedia returns them)."""
    out, prompt = row["output"], row["prompt"]
    return out[len(prompt):] if prompt and out.startswith(prompt) else out


def joined_label(labels: list[str | None]) -> str | None:
    """A configuration's label: its features' labels joined with " + " ("?" for one not cached); None
    when none of them is cached (and for DEFAULT)."""
    return " + ".join(lb or "?" for lb in labels) if any(labels) else None


def _conversation(g: Generation) -> list[dict] | None:
    """A chat generation's whole conversation: the messages it continued and the assistant turn it wrote."""
    return None if g.messages is None else [*g.messages, {"role": "assistant", "content": g.output}]


def _feature_label(features: list[dict]) -> str:
    if not features:
        return "DEFAULT"
    return "+".join(str(f.get("index", f.get("vector"))) for f in features)


def sweep_grid(rows: list[dict]) -> dict[str, Any]:
    """Strength × feature table (one per prompt and seed), with DEFAULT as its own column; ``labels``:
    each feature column's cached explanation (``joined_label``), for those that have one."""
    features = sorted({r["feature"] for r in rows if r["type"] == "STEERED"}, key=natural)
    labels = {}
    for r in rows:
        if r["type"] == "STEERED" and r["feature"] not in labels and (lb := joined_label(r.get("labels") or [])):
            labels[r["feature"]] = lb
    out_rows = []
    for prompt, seed in dict.fromkeys((r["prompt"], r["seed"]) for r in rows):
        mine = [r for r in rows if r["prompt"] == prompt and r["seed"] == seed]
        default = next((r["output"] for r in mine if r["type"] == "DEFAULT"), "")
        strengths = sorted({grid_strength(r) for r in mine if r["type"] == "STEERED"})
        for st in strengths:
            cells = {r["feature"]: r["output"] for r in mine if r["type"] == "STEERED" and grid_strength(r) == st}
            out_rows.append([prompt, seed, st, default] + [cells.get(f, "") for f in features])
    return {"columns": ["prompt", "seed", "strength", "DEFAULT"] + features, "rows": out_rows, "labels": labels}


def prompt_grids(rows: list[dict]) -> list[dict[str, Any]]:
    """What a person reads of a sweep: per prompt and seed, the DEFAULT completion once and a strength × feature
    table of steered completions, each cell without the prompt it continues (the prompt is said once)."""
    grid = sweep_grid(rows)
    features, out = grid["columns"][4:], []
    for prompt, seed in dict.fromkeys((r["prompt"], r["seed"]) for r in rows):
        mine = [r for r in rows if r["prompt"] == prompt and r["seed"] == seed]
        default = next((completion_text(r) for r in mine if r["type"] == "DEFAULT"), None)
        table = []
        for st in sorted({grid_strength(r) for r in mine if r["type"] == "STEERED"}):
            cells = {r["feature"]: completion_text(r) for r in mine if r["type"] == "STEERED" and grid_strength(r) == st}
            table.append([st] + [cells.get(f, "") for f in features])
        out.append({"prompt": prompt, "seed": seed, "default": default, "columns": ["strength", *features],
                    "rows": table})
    return out


def natural(label: str):
    return (0, int(label), "") if label.isdigit() else (1, 0, label)


def summary(job: Job) -> str:
    r = job.result or {}
    if job.kind == JobKind.SWEEP:
        n, prompts = r.get("generations", "?"), len((job.params or {}).get("prompts") or (job.params or {}).get("chats") or [])
        return (f"{n} generation{'' if n == 1 else 's'}"
                + (f" from {prompts} prompt{'' if prompts == 1 else 's'}" if prompts else ""))
    if job.kind == JobKind.VERIFY:
        return f"verdict {r.get('verdict')}"
    if job.kind == JobKind.SCORE:
        return f"{r.get('scored', '?')} generations of job {str(r.get('scored_job'))[:8]} scored"
    if job.kind == JobKind.SEARCH:
        return ", ".join(f"feature {c['feature']} at {c['strength']}" for c in r.get("chosen", [])) or "nothing chosen"
    return f"{r.get('path', '')} ({r.get('transferred_bytes', 0)} bytes transferred)"
