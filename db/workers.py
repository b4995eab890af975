"""Worker rows: who is alive, on which GPU, with what loaded, running which job."""

from __future__ import annotations

import os
from datetime import timedelta

from sqlalchemy import select

from db.models import Worker as WorkerRow, utcnow
from db.session import retried, session


@retried
def register(worker, queues: list[str], cuda_visible: str | None, url: str | None = None) -> None:
    with session(url) as s:
        row = s.get(WorkerRow, worker.name) or WorkerRow(name=worker.name)
        row.host, row.pid, row.gpu, row.queues = worker.host, os.getpid(), worker.gpu, queues
        row.started_at = row.heartbeat_at = utcnow()
        row.stopped_at = None
        row.device = worker.device + (f" (CUDA_VISIBLE_DEVICES={cuda_visible})" if cuda_visible is not None else "")
        row.cached = []
        s.add(row)


@retried
def beat(worker, url: str | None = None) -> None:
    with session(url) as s:
        row = s.get(WorkerRow, worker.name)
        if row is None:
            return
        row.heartbeat_at = utcnow()
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
            row.stopped_at = utcnow()
            row.current_job = None


@retried
def listing(live_within_s: float | None, url: str | None = None) -> list[WorkerRow]:
    """Workers heard from within ``live_within_s`` and not stopped; all of them when None."""
    with session(url) as s:
        q = select(WorkerRow).order_by(WorkerRow.host, WorkerRow.gpu, WorkerRow.name)
        if live_within_s is not None:
            q = q.where(WorkerRow.heartbeat_at >= utcnow() - timedelta(seconds=live_within_s),
                        WorkerRow.stopped_at.is_(None))
        return list(s.scalars(q))


def as_dict(row: WorkerRow, live_within_s: float) -> dict:
    alive = row.stopped_at is None and row.heartbeat_at >= utcnow() - timedelta(seconds=live_within_s)
    state = "stopped" if row.stopped_at else ("busy" if row.current_job else "idle") if alive else "silent"
    return {"name": row.name, "host": row.host, "pid": row.pid, "gpu": row.gpu, "device": row.device,
            "queues": row.queues, "state": state, "current_job": row.current_job, "cached": row.cached or [],
            "started_at": row.started_at.isoformat(), "heartbeat_at": row.heartbeat_at.isoformat(),
            "stopped_at": row.stopped_at.isoformat() if row.stopped_at else None}
