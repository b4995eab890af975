"""Judge ratings (``saejobs judge``): which generations a judge has rated, and storing its ratings idempotently."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from saejobs.db.models import Generation, Judgement
from saejobs.db.session import read_session, retried, session

REPLY_KEPT = 2000  # characters of each reply stored to audit a rating


@retried
def rated(sweep_id: int, judge: str, prompts: str, url: str | None = None) -> set[int]:
    """Ids of the sweep's generations this judge has rated with these prompts."""
    with read_session(url) as s:
        return set(s.scalars(select(Judgement.generation_id).join(Generation, Generation.id == Judgement.generation_id)
                             .where(Generation.sweep_id == sweep_id, Judgement.judge == judge,
                                    Judgement.prompts == prompts)))


@retried
def record(rows: list[dict[str, Any]], url: str | None = None) -> int:
    """Store ratings (dicts of ``Judgement``'s columns) in one transaction, skipping any already stored (a
    concurrent run's); returns how many were new."""
    with session(url) as s:
        new = 0
        for r in rows:
            try:
                with s.begin_nested():
                    s.add(Judgement(**{**r, "replies": {k: v[:REPLY_KEPT] for k, v in r["replies"].items()}}))
                    s.flush()
                    new += 1
            except IntegrityError:
                continue
        return new


@retried
def of_generation(gen_id: int, url: str | None = None) -> list[dict[str, Any]]:
    with read_session(url) as s:
        return [{"judge": j.judge, "prompts": j.prompts, "endpoint": j.endpoint, "ratings": j.ratings,
                 "replies": j.replies, "created_at": j.created_at.isoformat()}
                for j in s.scalars(select(Judgement).where(Judgement.generation_id == gen_id).order_by(Judgement.id))]
