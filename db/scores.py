"""Scores of stored generations: the rows a backfill still has to score, and writing them.

Sweeps score each chunk as they store it (``tasks.sweep``: the ``scores`` go into the same insert);
these functions serve ``saejobs score`` for sweeps stored before scoring existed.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from saejobs.db import jobs
from saejobs.db.models import Generation, Sweep
from saejobs.db import results
from saejobs.db.session import retried, session


@retried
def unscored(job_id: str, url: str | None = None) -> tuple[Sweep | None, list[dict[str, Any]]]:
    """The sweep of ``job_id`` and its generations whose ``scores`` is NULL (id, type, features, ids)."""
    with session(url) as s:
        sweep = results.sweep_of(s, job_id)  # a shard's id finds its sweep
        if sweep is None:
            return None, []
        gens = s.scalars(select(Generation).where(Generation.sweep_id == sweep.id).order_by(Generation.id))
        return sweep, [{"id": g.id, "type": g.type, "features": g.features, "prompt_token_ids": g.prompt_token_ids,
                        "token_ids": g.token_ids} for g in gens if g.scores is None]  # SQL NULL or JSON null


@retried
def set_scores(scores: dict[int, dict], *, owner: tuple[str, str] | None = None, url: str | None = None) -> int:
    """Write a chunk's scores in one transaction, only where none are stored (a re-run or a sweep that
    scored the row meanwhile wins); returns how many were written. ``owner`` (job id, worker): nothing is
    written once that worker has lost the job."""
    with session(url) as s:
        if owner is not None and not jobs.owned(s, *owner):
            raise jobs.JobCancelled(owner[0])
        n = 0
        for g in s.scalars(select(Generation).where(Generation.id.in_(list(scores)))):
            if g.scores is None:
                g.scores = scores[g.id]
                n += 1
        return n
