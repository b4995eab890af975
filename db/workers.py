"""Worker rows: who is alive, on which GPU, with what loaded, running which job."""

from __future__ import annotations

import os
from datetime import timedelta

from sqlalchemy import select

from db.models import Worker as WorkerRow, utcnow
from db.session import session


def register(worker, queues: list[str], cuda_visible: str | None, url: str | None = None) -> None:
    with session(url) as s:
        row = s.get(WorkerRow, worker.name) or WorkerRow(name=worker.name)
        row.host, row.pid, row.gpu, row.queues = worker.host, os.getpid(), worker.gpu, queues
        row.started_at = row.heartbeat_at = utcnow()
        row.stopped_at = None
        row.device = worker.device + (f" (CUDA_VISIBLE_DEVICES={cuda_visible})" if cuda_visible is not None else "")
        row.cached = []
        s.add(row)


def beat(worker, url: str | None = None) -> None:
    with session(url) as s:
        row = s.get(WorkerRow, worker.name)
        if row is None:
            return
        row.heartbeat_at = utcnow()
        row.current_job = worker.current_job
        row.cached = worker.cache.describe()


def stopped(worker, url: str | None = None) -> None:
    with session(url) as s:
        row = s.get(WorkerRow, worker.name)
        if row is not None:
            row.stopped_at = utcnow()
            row.current_job = None


def live(within_s: float, url: str | None = None) -> list[WorkerRow]:
    cutoff = utcnow() - timedelta(seconds=within_s)
    with session(url) as s:
        return list(s.scalars(select(WorkerRow).where(WorkerRow.heartbeat_at >= cutoff, WorkerRow.stopped_at.is_(None))
                              .order_by(WorkerRow.host, WorkerRow.gpu)))
