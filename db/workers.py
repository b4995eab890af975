"""Worker rows: who is alive, on which GPU, with what loaded, running which job.

Heartbeats are stamped, and liveness judged, by the database's clock (``db_now``), like jobs'.
"""

from __future__ import annotations

import os
from datetime import timedelta

from sqlalchemy import select

from saejobs.db.models import Worker as WorkerRow
from saejobs.db.session import db_now, read_session, retried, schema_unchanged, session

LIVE_WITHIN_S = float(os.environ.get("SAEJOBS_STALE_AFTER", 30))  # as tasks.runner.STALE_AFTER_S


@retried
def register(worker, queues: list[str], cuda_visible: str | None, url: str | None = None) -> None:
    with session(url) as s:
        row = s.get(WorkerRow, worker.name) or WorkerRow(name=worker.name)
        row.host, row.pid, row.gpu, row.queues = worker.host, os.getpid(), worker.gpu, queues
        row.started_at = row.heartbeat_at = db_now(s)
        row.stopped_at = None
        row.device = worker.device + (f" (CUDA_VISIBLE_DEVICES={cuda_visible})" if cuda_visible is not None else "")
        row.cached = []
        s.add(row)


@retried
def beat(worker, url: str | None = None) -> None:
    """SchemaMismatch, with nothing written, once the database has been migrated under the worker."""
    with session(url) as s:
        schema_unchanged(s)
        row = s.get(WorkerRow, worker.name)
        if row is None:
            return
        row.heartbeat_at = db_now(s)
        row.current_job = worker.current_job
        row.cached = worker.cache.describe()


def show_job(worker_name: str, job_id: str | None, url: str | None = None) -> None:
    """Say at once what a worker runs (or that it is idle), not at its next beat. One attempt, not retried:
    a job must not wait on a database outage to say this; the next beat says it anyway."""
    with session(url) as s:
        row = s.get(WorkerRow, worker_name)
        if row is not None:
            row.current_job = job_id


@retried
def stopped(worker, url: str | None = None) -> None:
    with session(url) as s:
        row = s.get(WorkerRow, worker.name)
        if row is not None:
            row.stopped_at = db_now(s)
            row.current_job = None


@retried
def listing(live_within_s: float | None, url: str | None = None) -> list[WorkerRow]:
    """Workers heard from within ``live_within_s`` and not stopped; all of them when None. Each row
    carries ``alive`` (judged by the database's clock, at the time of this read)."""
    with read_session(url) as s:
        now = db_now(s)
        q = select(WorkerRow).order_by(WorkerRow.host, WorkerRow.gpu, WorkerRow.name)
        if live_within_s is not None:
            q = q.where(WorkerRow.heartbeat_at >= now - timedelta(seconds=live_within_s),
                        WorkerRow.stopped_at.is_(None))
        rows = list(s.scalars(q))
        for row in rows:
            row.alive = row.stopped_at is None and row.heartbeat_at >= now - timedelta(seconds=live_within_s or LIVE_WITHIN_S)
        return rows


def as_dict(row: WorkerRow) -> dict:
    alive = row.alive
    state = "stopped" if row.stopped_at else ("busy" if row.current_job else "idle") if alive else "silent"
    return {"name": row.name, "host": row.host, "pid": row.pid, "gpu": row.gpu, "device": row.device,
            "queues": row.queues, "state": state, "current_job": row.current_job, "cached": row.cached or [],
            "started_at": row.started_at.isoformat(), "heartbeat_at": row.heartbeat_at.isoformat(),
            "stopped_at": row.stopped_at.isoformat() if row.stopped_at else None}


def live_queues(url: str | None = None) -> set[str]:
    """The queues some live worker consumes: a job sent to any other waits until a worker for it starts,
    which the CLI says at once (``cli/submit_cmd.py``, ``jobs list``) instead of leaving it silently queued."""
    return {q for w in listing(live_within_s=LIVE_WITHIN_S, url=url) for q in (w.queues or [])}
