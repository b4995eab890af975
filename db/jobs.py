"""Job state transitions, each one transaction, each guarded so a redelivered message is harmless.

``claim`` is the only way into ``running``: an atomic conditional update, so of two deliveries of
one job exactly one runs it. A job whose worker stopped heart-beating can be claimed again.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, select, update

from db.models import Job, JobEvent, utcnow
from db.states import FINAL_STATES
from db.session import retried, session
from engine.errors import NotFoundError, UsageError


class JobCancelled(Exception):
    """Raised inside a running job when its row says it was cancelled; the task stops there."""


def create(kind: str, params: dict[str, Any], *, sae_id: str | None = None, queue: str | None = None,
           requested_gpu: int | None = None, url: str | None = None) -> Job:
    """The id is drawn once, outside the retried insert: a replayed insert cannot make a second job."""
    return _insert(str(uuid.uuid4()), dict(kind=kind, params=params, sae_id=sae_id, queue=queue,
                                           requested_gpu=requested_gpu), url)


@retried
def _insert(job_id: str, fields: dict[str, Any], url: str | None) -> Job:
    with session(url) as s:
        job = s.get(Job, job_id)
        if job is None:
            job = Job(id=job_id, state="queued", progress=0.0, attempts=0, message="queued", **fields)
            s.add(job)
            s.add(JobEvent(job_id=job_id, state="queued", progress=0.0, message="queued"))
    return job


@retried
def get(job_id: str, url: str | None = None) -> Job:
    with session(url) as s:
        job = s.get(Job, job_id)
        if job is None:
            matches = s.scalars(select(Job).where(Job.id.startswith(job_id)).limit(2)).all() if len(job_id) >= 4 else []
            if len(matches) != 1:
                raise NotFoundError(f"no job '{job_id}'")
            job = matches[0]
        job.events  # loaded while the session is open
        return job


@retried
def claim(job_id: str, *, worker: str, host: str, gpu: str | None, stale_after: float, url: str | None = None) -> bool:
    """Move a queued job (or one whose worker died) to running; False when someone else has it.

    A job already running under this worker's own name is claimable too: a worker runs one job at a
    time, so that row is left from a claim whose commit went through but whose answer was lost.
    """
    now = utcnow()
    with session(url) as s:
        res = s.execute(
            update(Job)
            .where(Job.id == job_id)
            .where(or_(Job.state == "queued",
                       (Job.state == "running") & (Job.worker == worker),
                       (Job.state == "running") & (Job.heartbeat_at < now - timedelta(seconds=stale_after))))
            .values(state="running", worker=worker, host=host, gpu=gpu, attempts=Job.attempts + 1,
                    started_at=now, heartbeat_at=now, message="running", error=None)
        )
        if res.rowcount != 1:
            return False
        s.add(JobEvent(job_id=job_id, state="running", progress=_progress(s, job_id), message=f"running on {worker}"))
    return True


def _progress(s, job_id: str) -> float:
    return s.scalar(select(Job.progress).where(Job.id == job_id)) or 0.0


@retried
def report(job_id: str, progress: float, message: str | None = None, *, worker: str | None = None,
           url: str | None = None) -> None:
    """Record progress and heartbeat; raise JobCancelled if the job was cancelled meanwhile.

    Guarded on ``worker``: a worker that lost its claim (declared dead, job handed on) stops here.
    """
    now = utcnow()
    with session(url) as s:
        stmt = update(Job).where(Job.id == job_id, Job.state == "running")
        if worker is not None:
            stmt = stmt.where(Job.worker == worker)
        res = s.execute(stmt.values(progress=progress, message=message, heartbeat_at=now))
        if res.rowcount == 1:
            s.add(JobEvent(job_id=job_id, state="running", progress=progress, message=message))
            return
    raise JobCancelled(job_id)


@retried
def heartbeat(job_id: str, worker: str, url: str | None = None) -> None:
    with session(url) as s:
        s.execute(update(Job).where(Job.id == job_id, Job.state == "running", Job.worker == worker)
                  .values(heartbeat_at=utcnow()))


@retried
def finish(job_id: str, state: str, *, worker: str | None = None, result: dict | None = None,
           error: str | None = None, url: str | None = None) -> bool:
    """Running → final state. False when the job is no longer this worker's (cancelled, handed on)."""
    assert state in FINAL_STATES
    now = utcnow()
    with session(url) as s:
        stmt = update(Job).where(Job.id == job_id, Job.state == "running")
        if worker is not None:
            stmt = stmt.where(Job.worker == worker)
        progress = 1.0 if state == "succeeded" else Job.progress
        res = s.execute(stmt.values(state=state, result=result, error=error, finished_at=now, progress=progress,
                                    message=state if error is None else error, heartbeat_at=now))
        if res.rowcount != 1:
            return False
        s.add(JobEvent(job_id=job_id, state=state, progress=_progress(s, job_id), message=error or state))
    return True


@retried
def requeue(job_id: str, reason: str, *, stale_after: float | None = None, url: str | None = None) -> bool:
    """Running → queued (worker handing it back, or declared dead): the next claim runs it again.

    With ``stale_after`` only a job whose heartbeat is that old moves, so two reapers cannot both
    hand on the same job, and a worker that is merely slow keeps it.
    """
    with session(url) as s:
        stmt = update(Job).where(Job.id == job_id, Job.state == "running")
        if stale_after is not None:
            stmt = stmt.where(Job.heartbeat_at < utcnow() - timedelta(seconds=stale_after))
        res = s.execute(stmt.values(state="queued", worker=None, message=reason, heartbeat_at=None))
        if res.rowcount != 1:
            return False
        s.add(JobEvent(job_id=job_id, state="queued", progress=_progress(s, job_id), message=reason))
    return True


@retried
def abandon(job_id: str, error: str, url: str | None = None) -> None:
    """Queued → failed, for a job whose message never reached the broker: nothing waits forever."""
    with session(url) as s:
        res = s.execute(update(Job).where(Job.id == job_id, Job.state == "queued")
                        .values(state="failed", error=error, message=error, finished_at=utcnow()))
        if res.rowcount == 1:
            s.add(JobEvent(job_id=job_id, state="failed", progress=0.0, message=error))


@retried
def cancel(job_id: str, url: str | None = None) -> Job:
    job = get(job_id, url)
    now = utcnow()
    with session(url) as s:
        res = s.execute(update(Job).where(Job.id == job.id, Job.state.in_(("queued", "running")))
                        .values(state="cancelled", finished_at=now, message="cancelled"))
        if res.rowcount != 1:
            raise UsageError(f"job {job.id} is {job.state}; only queued or running jobs can be cancelled")
        s.add(JobEvent(job_id=job.id, state="cancelled", progress=job.progress, message="cancelled"))
    return get(job.id, url)


@retried
def reset_for_retry(job_id: str, url: str | None = None) -> Job:
    job = get(job_id, url)
    with session(url) as s:
        res = s.execute(update(Job).where(Job.id == job.id, Job.state.in_(("failed", "cancelled")))
                        .values(state="queued", error=None, finished_at=None, message="queued (retry)", worker=None))
        if res.rowcount != 1:
            raise UsageError(f"job {job.id} is {job.state}; only failed or cancelled jobs can be retried")
        s.add(JobEvent(job_id=job.id, state="queued", progress=job.progress, message="queued (retry)"))
    return get(job.id, url)


@retried
def stale_running(stale_after: float, *, alive: str | None = None, url: str | None = None) -> list[str]:
    """Running jobs whose worker has not been heard from: it died (SIGKILL, host lost). ``alive`` is the
    asking worker's name: it knows it is alive, so a late beat of its own (a busy CPU) never hands its
    job on."""
    cutoff = utcnow() - timedelta(seconds=stale_after)
    with session(url) as s:
        q = select(Job.id).where(Job.state == "running", Job.heartbeat_at < cutoff)
        if alive is not None:
            q = q.where(or_(Job.worker.is_(None), Job.worker != alive))
        return list(s.scalars(q))


@retried
def waiting_since(seconds: float, url: str | None = None) -> list[tuple[str, str]]:
    """(id, queue) of queued jobs sent to a queue that have waited longer than ``seconds``."""
    cutoff = utcnow() - timedelta(seconds=seconds)
    with session(url) as s:
        last_change = (select(JobEvent.at).where(JobEvent.job_id == Job.id).order_by(JobEvent.id.desc())
                       .limit(1).scalar_subquery())
        rows = s.execute(select(Job.id, Job.queue).where(Job.state == "queued", Job.queue.is_not(None),
                                                         last_change < cutoff))
        return [(r[0], r[1]) for r in rows]


@retried
def listing(*, state: str | None = None, kind: str | None = None, limit: int = 50, url: str | None = None) -> list[Job]:
    with session(url) as s:
        q = select(Job).order_by(Job.created_at.desc()).limit(limit)
        if state:
            q = q.where(Job.state == state)
        if kind:
            q = q.where(Job.kind == kind)
        return list(s.scalars(q))


def as_dict(job: Job, events: bool = False) -> dict[str, Any]:
    d = {c: _jsonable(getattr(job, c)) for c in (
        "id", "kind", "state", "progress", "message", "error", "attempts", "sae_id", "queue", "requested_gpu",
        "worker", "host", "gpu", "params", "result", "created_at", "started_at", "finished_at")}
    if events:
        d["events"] = [{"at": _jsonable(e.at), "state": e.state, "progress": e.progress, "message": e.message}
                       for e in job.events]
    return d


def _jsonable(v: Any) -> Any:
    return v.isoformat() if isinstance(v, datetime) else v
