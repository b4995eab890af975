"""Neuronpedia runs (imported or fetched answers) matched to stored generations, and comparisons.

A run matches the STEERED generation whose exported request says the same thing: same SAE (model and
source), features and strengths, prompt, seed, token count, temperature, penalties, multiplier and
(where the body carries them) method and normalisation. One import is one transaction: a file with
a bad entry stores nothing.
"""

from __future__ import annotations

from sqlalchemy import select

from saejobs.db import results
from saejobs.db.models import Comparison, Generation, NeuronpediaRun, Sweep
from saejobs.db.session import read_session, retried, session


@retried
def generation(ref: str, url: str | None = None) -> dict | None:
    """A stored generation by id or by a unique prefix of its config key, with its sweep's SAE and job."""
    with read_session(url) as s:
        q = select(Generation, Sweep).join(Sweep, Generation.sweep_id == Sweep.id)
        rows = s.execute(q.where(Generation.id == int(ref)) if ref.isdigit() else
                         q.where(Generation.config_key.startswith(ref))).all()
        if len(rows) != 1:
            return None if not rows else {"ambiguous": len(rows)}
        return _as_dict(*rows[0])


@retried
def steered(sweep_job: str | None = None, url: str | None = None) -> list[dict]:
    """STEERED generations (of one sweep job, or all) with their sweep's SAE and settings."""
    with read_session(url) as s:
        q = select(Generation, Sweep).join(Sweep, Generation.sweep_id == Sweep.id).where(Generation.type == "STEERED")
        if sweep_job:
            sweep = results.sweep_of(s, sweep_job)  # a shard's id finds its sweep
            q = q.where(Sweep.id == (sweep.id if sweep else None))
        return [_as_dict(g, sw) for g, sw in s.execute(q.order_by(Generation.id)).all()]


def _as_dict(g: Generation, sw: Sweep) -> dict:
    return {"id": g.id, "config_key": g.config_key, "type": g.type, "features": g.features, "prompt": g.prompt,
            "seed": g.seed, "sampling": g.sampling, "output": g.output, "token_ids": g.token_ids,
            "messages": g.messages, "chat_template": (sw.settings or {}).get("chat_template"),
            "sweep_id": sw.id, "job_id": sw.job_id, "sae_id": sw.sae_id, "model": sw.model,
            "model_source": (sw.provenance or {}).get("model_source") or sw.model}


@retried
def store_runs(runs: list[tuple[str, dict, dict, int | None]], url: str | None = None) -> list[int]:
    """(api, request, outputs, generation id or None) each, in one transaction; returns the run ids."""
    with session(url) as s:
        rows = [NeuronpediaRun(api=api, request=req, outputs=outs, generation_id=gid) for api, req, outs, gid in runs]
        s.add_all(rows)
        s.flush()
        return [r.id for r in rows]


@retried
def runs_for_sweep(sweep_job: str, only: int | None = None, url: str | None = None) -> list[dict]:
    """Each run matched to this sweep: the run, its STEERED generation and the DEFAULT of the same prompt/seed."""
    with read_session(url) as s:
        from saejobs.db.results import sweep_of

        sweep = sweep_of(s, sweep_job)  # a sweep's id, or one of its shards' (the shard wrote into its sweep)
        if sweep is None:
            return []
        q = (select(NeuronpediaRun, Generation).join(Generation, NeuronpediaRun.generation_id == Generation.id)
             .where(Generation.sweep_id == sweep.id).order_by(NeuronpediaRun.id))
        if only is not None:
            q = q.where(NeuronpediaRun.id == only)
        out = []
        for run, gen in s.execute(q).all():
            default = s.scalar(select(Generation).where(Generation.sweep_id == sweep.id, Generation.type == "DEFAULT",
                                                        Generation.prompt == gen.prompt, Generation.seed == gen.seed))
            out.append({"run": run.id, "api": run.api, "outputs": run.outputs, "steered": _as_dict(gen, sweep),
                        "default": None if default is None else _as_dict(default, sweep)})
        return out


@retried
def runs_for_generation(gen_id: int, url: str | None = None) -> list[dict]:
    """Neuronpedia's answers matched to one generation: run id, API and its outputs (STEERED, DEFAULT)."""
    with read_session(url) as s:
        return [{"run": r.id, "api": r.api, "outputs": r.outputs} for r in s.scalars(
            select(NeuronpediaRun).where(NeuronpediaRun.generation_id == gen_id).order_by(NeuronpediaRun.id))]


@retried
def record_comparisons(sweep_job: str, rows: list[tuple[int, dict]], url: str | None = None) -> None:
    with session(url) as s:
        from saejobs.db.results import sweep_of

        sweep = sweep_of(s, sweep_job)  # as runs_for_sweep: a sweep's id or a shard's
        s.add_all(Comparison(sweep_id=sweep.id, neuronpedia_run_id=run, metrics=m) for run, m in rows)


@retried
def run_count(url: str | None = None) -> int:
    with read_session(url) as s:
        return len(s.scalars(select(NeuronpediaRun.id)).all())

