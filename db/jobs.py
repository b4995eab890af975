"""Job state transitions, each one transaction, each guarded so a redelivered message is harmless.

``claim`` is the only way into ``running``: an atomic conditional update, so of two deliveries of
one job exactly one runs it. A job whose worker stopped heart-beating can be claimed again, at most
``SAEJOBS_MAX_ATTEMPTS`` times in all: then it fails with the last error instead of circulating.

Time is the database server's (``db_now``): hosts whose clocks disagree judge staleness by one clock.
Every write a running job makes is guarded by its owner (``worker``): a worker whose job was handed on
while it was cut off finds the guard false and stops without writing.

A sweep is a parent row and shard rows (``parent_id``): each shard a range of the sweep's
configurations, a job of its own that any worker claims. The parent is never run: its progress is its
shards', it ends when the last shard ends, and cancel/retry on it act on every shard.
"""

from __future__ import annotations

import os
import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, func, or_, select, update
from sqlalchemy.orm import aliased

from saejobs.db.models import Job, JobEvent, utcnow
from saejobs.db.states import FINAL_STATES, JobKind, JobState
from saejobs.db.session import db_now, read_session, retried, session
from saejobs.engine.errors import NotFoundError, SaejobsError, UsageError


DEFAULT_MAX_ATTEMPTS = 3


def max_attempts() -> int:
    """The one attempts limit: claims of a job, whichever path delivered it (``tasks.celery_tasks`` lists
    them; Celery's own retry counter is switched off there)."""
    return max(1, int(os.environ.get("SAEJOBS_MAX_ATTEMPTS", DEFAULT_MAX_ATTEMPTS)))


class DeadlineExceeded(SaejobsError):
    """The running attempt passed its deadline (``--timeout``): a hung transfer or generation ends."""

    exit_code = 5


class JobCancelled(Exception):
    """Raised inside a running job when its row says it was cancelled; the task stops there."""


def create(kind: JobKind, params: dict[str, Any], *, sae_id: str | None = None, queue: str | None = None,
           requested_gpu: int | None = None, requested_host: str | None = None,
           shards: list[dict[str, Any]] | None = None, job_id: str | None = None, url: str | None = None) -> Job:
    """The ids are drawn once, outside the retried insert: a replayed insert cannot make a second job.
    With ``shards`` (each shard's params), the job is a parent and its shards are queued in the same
    transaction; the parent itself takes no queue. With ``job_id`` (a job's child, named by its parent),
    an existing row of that id is returned as it is."""
    fields = dict(kind=kind, params=params, sae_id=sae_id, requested_gpu=requested_gpu, requested_host=requested_host)
    children = [(str(uuid.uuid4()), p) for p in shards or []]
    return _insert(job_id or str(uuid.uuid4()), {**fields, "queue": None if shards else queue},
                   [(i, {**fields, "params": p, "queue": queue}) for i, p in children], url)


@retried
def _insert(job_id: str, fields: dict[str, Any], children: list[tuple[str, dict]], url: str | None) -> Job:
    with session(url) as s:
        job = s.get(Job, job_id)
        if job is None:
            message = f"queued ({len(children)} shards)" if children else JobState.QUEUED
            job = Job(id=job_id, state=JobState.QUEUED, progress=0.0, attempts=0, message=message, **fields)
            s.add(job)
            s.add(JobEvent(job_id=job_id, state=JobState.QUEUED, progress=0.0, message=message))
            s.flush()
            made = utcnow()  # one stamp a microsecond apart each: their order is the order given, not their ids'
            for n, (child_id, child) in enumerate(children):
                s.add(Job(id=child_id, state=JobState.QUEUED, progress=0.0, attempts=0, message=JobState.QUEUED,
                          parent_id=job_id, created_at=made + timedelta(microseconds=n), **child))
                s.add(JobEvent(job_id=child_id, state=JobState.QUEUED, progress=0.0, message=JobState.QUEUED))
    return job


@retried
def shards(job_id: str, url: str | None = None) -> list[Job]:
    with read_session(url) as s:
        return list(s.scalars(select(Job).where(Job.parent_id == job_id).order_by(Job.created_at, Job.id)))


AMBIGUOUS_SHOWN = 5  # candidates an ambiguous id prefix names


@retried
def get(job_id: str, url: str | None = None) -> Job:
    with read_session(url) as s:
        job = s.get(Job, job_id)
        if job is None:
            matches = s.scalars(select(Job).where(Job.id.startswith(job_id, autoescape=True)).order_by(Job.id)
                                .limit(AMBIGUOUS_SHOWN + 1)).all() if len(job_id) >= 4 else []
            if len(matches) > 1:  # as git says of a short commit id: which ones, so the next try is right
                ids = [m.id for m in matches[:AMBIGUOUS_SHOWN]]
                n = max(8, *(len(os.path.commonprefix(pair)) + 1 for pair in zip(ids, ids[1:])))  # each told apart
                shown = ", ".join(i[:n] for i in ids)
                raise UsageError(f"job id prefix '{job_id}' is ambiguous: {shown}"
                                 + (" and more" if len(matches) > AMBIGUOUS_SHOWN else "") + "; give more characters")
            if not matches:
                raise NotFoundError(f"no job '{job_id}'")
            job = matches[0]
        return job  # without its events (a long job has many): ``events`` reads them a page at a time


EVENTS_PAGE = 100


@retried
def events(job_id: str, *, limit: int = EVENTS_PAGE, before: int | None = None, url: str | None = None
           ) -> list[JobEvent]:
    """A page of a job's events, oldest first: its ``limit`` latest, or those before event id ``before``
    (the first id of the page shown, to page back) — never all of a long job's history at once."""
    with read_session(url) as s:
        q = select(JobEvent).where(JobEvent.job_id == job_id)
        if before is not None:
            q = q.where(JobEvent.id < before)
        return list(s.scalars(q.order_by(JobEvent.id.desc()).limit(limit)))[::-1]


@retried
def event_count(job_id: str, url: str | None = None) -> int:
    with read_session(url) as s:
        return s.scalar(select(func.count()).select_from(JobEvent).where(JobEvent.job_id == job_id)) or 0


@retried
def claim(job_id: str, *, worker: str, host: str, gpu: str | None, url: str | None = None) -> bool:
    """Move a queued job to running; False when someone else has it, or when it has used up its attempts
    (it is then failed with its last error).

    A job already running under this worker's own name is claimable too: a worker runs one job at a
    time, so that row is left from a claim whose commit went through but whose answer was lost. A job
    whose worker went silent is not claimable here: only a reaper hands it on (``requeue`` with
    ``stale_after``), after its own grace — so a duplicate message never takes a slow worker's job.
    """
    with session(url) as s:
        now = db_now(s)
        claimable = or_(Job.state == JobState.QUEUED, (Job.state == JobState.RUNNING) & (Job.worker == worker))
        params, parent_id = s.execute(select(Job.params, Job.parent_id).where(Job.id == job_id)).first() or ({}, None)
        timeout = (params or {}).get("timeout_s")
        if timeout is None and parent_id is not None:  # a shard written before shards carried their sweep's
            timeout = (s.scalar(select(Job.params).where(Job.id == parent_id)) or {}).get("timeout_s")
        child = aliased(Job)
        res = s.execute(
            update(Job).where(Job.id == job_id, ~select(child.id).where(child.parent_id == job_id).exists())
            .where(claimable, Job.attempts < max_attempts())
            .values(state=JobState.RUNNING, worker=worker, host=host, gpu=gpu, attempts=Job.attempts + 1,
                    started_at=now, heartbeat_at=now, message=JobState.RUNNING,
                    deadline_at=now + timedelta(seconds=timeout) if timeout else None)
        )
        if res.rowcount != 1:
            _give_up(s, job_id, now, claimable)
            return False
        s.add(JobEvent(job_id=job_id, state=JobState.RUNNING, progress=_progress(s, job_id),
                       message=f"running on {worker}"))
        parent = s.scalar(select(Job.parent_id).where(Job.id == job_id))
        if parent is not None:  # the sweep shows its latest claim: who runs it, and the most attempts a shard took
            s.execute(update(Job).where(Job.id == parent, Job.state == JobState.QUEUED)
                      .values(state=JobState.RUNNING, started_at=now, message=JobState.RUNNING))
            s.execute(update(Job).where(Job.id == parent, Job.state == JobState.RUNNING)
                      .values(worker=worker, host=host, gpu=gpu,
                              attempts=select(func.max(child.attempts)).where(child.parent_id == parent)
                              .scalar_subquery()))
    return True


def _give_up(s, job_id: str, now: datetime, claimable) -> None:
    """A claimable job out of attempts fails here, once, with its last error (then no delivery can run it)."""
    job = s.scalar(select(Job).where(Job.id == job_id, claimable, Job.attempts >= max_attempts()))
    if job is not None:
        _end(s, job, JobState.FAILED, now,
             error=f"gave up after {job.attempts} attempts; last: {job.error or job.message}")


def _end(s, job: Job, state: JobState, now: datetime, *, error: str | None = None, result: dict | None = None) -> None:
    """Put ``job`` (locked or just read in this transaction) in a final state, and its parent when it was
    the last shard standing."""
    job.state, job.finished_at, job.heartbeat_at = state, now, now
    job.error, job.result = error, result
    job.message = error or state
    if state == JobState.SUCCEEDED:
        job.progress = 1.0
    s.add(JobEvent(job_id=job.id, state=state, progress=job.progress, message=error or state))
    if job.parent_id is not None:
        s.flush()
        _settle_parent(s, job.parent_id, now)


def _settle_parent(s, parent_id: str, now: datetime, note: str | None = None) -> None:
    """Parent progress is its shards' mean, its state queued while every shard waits (``note``: why, e.g.
    handed back), else running; when none is left running or queued it ends: succeeded if every
    shard did, else failed (or cancelled) naming the first shard's error. Read as one aggregate query
    (a progress report of one shard does not fetch its siblings); their rows only once, at the end."""
    parent = s.scalar(select(Job).where(Job.id == parent_id).with_for_update())

    def count(cond):
        return func.coalesce(func.sum(case((cond, 1), else_=0)), 0)

    n, total, done, failed, queued, open_ = s.execute(select(
        func.count(), func.coalesce(func.sum(Job.progress), 0.0), count(Job.state == JobState.SUCCEEDED),
        count(Job.state == JobState.FAILED), count(Job.state == JobState.QUEUED),
        count(Job.state.not_in(list(FINAL_STATES)))).where(Job.parent_id == parent_id)).one()
    if parent is None or not n:
        return
    ended = JobState.SUCCEEDED if done == n else JobState.FAILED if failed else JobState.CANCELLED
    if parent.state == ended and not open_:
        return  # already what its shards say (no second event)
    parent.progress = total / n
    parent.message = f"{note} ({done}/{n} shards done)" if note else f"{done}/{n} shards done"
    if open_:
        state = JobState.QUEUED if queued == n else JobState.RUNNING  # none started or ended: the sweep waits
        if parent.state != state:
            parent.state, parent.finished_at = state, None
            s.add(JobEvent(job_id=parent_id, state=parent.state, progress=parent.progress, message=parent.message))
        return
    shards_in_order = select(Job.state, Job.error, Job.result).where(Job.parent_id == parent_id).order_by(
        Job.created_at, Job.id)
    if done == n:
        results = [r.result or {} for r in s.execute(shards_in_order)]
        result = {"sweep_id": next((r.get("sweep_id") for r in results if r.get("sweep_id")), None),
                  "shards": n, "generations": sum(r.get("shard_size", 0) for r in results),
                  "ran_now": sum(r.get("ran_now", 0) for r in results),
                  **{k: results[0][k] for k in ("sae", "model") if k in results[0]}}
        _end(s, parent, JobState.SUCCEEDED, now, result=result)
        return
    bad = s.execute(shards_in_order.where(Job.state == ended).limit(1)).one()
    _end(s, parent, ended, now, error=f"{n - done} of {n} shards {ended}; first: {bad.error or bad.state}",
         result=bad.result if failed else None)


EVENT_STEP = 0.05  # progress moved this much since the job's latest event: a new event


def event_every_s() -> float:
    """Progress events are coalesced: a plain report adds a row only when progress moved ``EVENT_STEP``
    since the job's latest event, or that event is this old (``SAEJOBS_EVENT_EVERY_S``, default 30 s);
    in between only the job's own row (progress, message, heartbeat) changes. Milestones (a phase
    starting, a chunk stored) always add one. A job's history stays readable in rows, not one per beat."""
    return float(os.environ.get("SAEJOBS_EVENT_EVERY_S", 30))


def _worth_an_event(s, job_id: str, progress: float, now: datetime) -> bool:
    last = s.execute(select(JobEvent.at, JobEvent.progress).where(JobEvent.job_id == job_id)
                     .order_by(JobEvent.id.desc()).limit(1)).first()
    return (last is None or abs(progress - (last.progress or 0.0)) >= EVENT_STEP
            or last.at <= now - timedelta(seconds=event_every_s()))


def _progress(s, job_id: str) -> float:
    return s.scalar(select(Job.progress).where(Job.id == job_id)) or 0.0


@retried
def report(job_id: str, progress: float, message: str | None = None, *, worker: str | None = None,
           milestone: bool = False, url: str | None = None) -> None:
    """Record progress and heartbeat; raise JobCancelled if the job was cancelled or handed on meanwhile,
    DeadlineExceeded once its deadline has passed (then nothing is written: the runner fails it).

    Guarded on ``worker``: a worker that lost its claim (declared dead, job handed on) stops here.
    An event row is added for a ``milestone``, else only as ``event_every_s`` says (coalesced).
    """
    with session(url) as s:
        now = db_now(s)
        stmt = update(Job).where(Job.id == job_id, Job.state == JobState.RUNNING)
        if worker is not None:
            stmt = stmt.where(Job.worker == worker)
        res = s.execute(stmt.where(or_(Job.deadline_at.is_(None), Job.deadline_at >= now))
                        .values(progress=progress, message=message, heartbeat_at=now))
        if res.rowcount == 1:
            if milestone or _worth_an_event(s, job_id, progress, now):
                s.add(JobEvent(job_id=job_id, state=JobState.RUNNING, progress=progress, message=message))
            parent = s.scalar(select(Job.parent_id).where(Job.id == job_id))
            if parent is not None:
                _settle_parent(s, parent, now)
            return
        job = s.get(Job, job_id)
        if job is not None and job.state == JobState.RUNNING and (worker is None or job.worker == worker):
            timeout = (job.params or {}).get("timeout_s")
            if timeout is None and job.parent_id is not None:  # a shard written before shards carried it
                timeout = (s.scalar(select(Job.params).where(Job.id == job.parent_id)) or {}).get("timeout_s")
            raise DeadlineExceeded(f"deadline passed ({timeout:g} s after the attempt started "
                                   f"at {job.started_at:%H:%M:%S}); stopped at {100 * job.progress:.0f}%")
    raise JobCancelled(job_id)


@retried
def heartbeat(job_id: str, worker: str, url: str | None = None) -> None:
    with session(url) as s:
        s.execute(update(Job).where(Job.id == job_id, Job.state == JobState.RUNNING, Job.worker == worker)
                  .values(heartbeat_at=db_now(s)))


def owned(s, job_id: str, worker: str | None) -> bool:
    """Inside a writing transaction: lock the job's row and say whether ``worker`` still runs it. Rows a
    job writes (its results) are written only when this holds, so a stale owner's write is refused
    instead of racing the rightful owner's."""
    q = select(Job.id).where(Job.id == job_id, Job.state == JobState.RUNNING).with_for_update()
    if worker is not None:
        q = q.where(Job.worker == worker)
    return s.scalar(q) is not None


@retried
def finish(job_id: str, state: JobState, *, worker: str | None = None, result: dict | None = None,
           error: str | None = None, url: str | None = None) -> bool:
    """Running → final state. False when the job is no longer this worker's (cancelled, handed on)."""
    assert state in FINAL_STATES
    with session(url) as s:
        q = select(Job).where(Job.id == job_id, Job.state == JobState.RUNNING).with_for_update()
        if worker is not None:
            q = q.where(Job.worker == worker)
        job = s.scalar(q)
        if job is None:
            return False
        _end(s, job, state, db_now(s), error=error, result=result)
    return True


@retried
def requeue(job_id: str, reason: str, *, worker: str | None = None, stale_after: float | None = None,
            url: str | None = None) -> bool:
    """Running → queued (worker handing it back, or declared dead): True when the caller should send it
    again. The reason is kept as the job's last error. A job that has used its attempts fails instead.

    With ``stale_after`` only a job whose heartbeat is that old (by the database's clock) moves, so two
    reapers cannot both hand on the same job, and a worker that is merely slow keeps it. With ``worker``
    only that worker's own job moves (a worker back from an outage cannot hand back a job it lost).
    """
    with session(url) as s:
        now = db_now(s)
        q = select(Job).where(Job.id == job_id, Job.state == JobState.RUNNING).with_for_update()
        if stale_after is not None:
            q = q.where(Job.heartbeat_at < now - timedelta(seconds=stale_after))
        if worker is not None:
            q = q.where(Job.worker == worker)
        job = s.scalar(q)
        if job is None or s.scalar(select(Job.id).where(Job.parent_id == job_id).limit(1)) is not None:
            return False  # gone, or a sweep whose state is its shards' (never handed on itself)
        if job.attempts >= max_attempts():
            _end(s, job, JobState.FAILED, now, error=f"gave up after {job.attempts} attempts; last: {reason}")
            return False
        job.state, job.worker, job.heartbeat_at, job.deadline_at = JobState.QUEUED, None, None, None
        job.message = job.error = reason
        s.add(JobEvent(job_id=job_id, state=JobState.QUEUED, progress=job.progress, message=reason))
        if job.parent_id is not None:
            s.flush()
            _settle_parent(s, job.parent_id, now, note=reason)
    return True


@retried
def abandon(job_id: str, error: str, url: str | None = None) -> None:
    """Queued → failed, for a job whose message never reached the broker: nothing waits forever."""
    with session(url) as s:
        rows = s.scalars(select(Job).where(or_(Job.id == job_id, Job.parent_id == job_id),
                                           Job.state == JobState.QUEUED))
        for job in sorted(rows, key=lambda j: j.id == job_id):  # shards first: the last one settles the sweep
            if job.state == JobState.QUEUED:
                _end(s, job, JobState.FAILED, db_now(s), error=error)


@retried
def cancel(job_id: str, url: str | None = None) -> Job:
    """Cancel a job; a sweep's shards with it. A running one stops at its next progress report."""
    job = get(job_id, url)
    with session(url) as s:
        now = db_now(s)
        rows = list(s.scalars(select(Job).where(or_(Job.id == job.id, Job.parent_id == job.id),
                                                Job.state.in_((JobState.QUEUED, JobState.RUNNING))).with_for_update()))
        if not any(r.id == job.id for r in rows):
            raise UsageError(f"job {job.id} is {job.state}; only queued or running jobs can be cancelled")
        for r in sorted(rows, key=lambda r: r.id == job.id):  # shards first: the parent is settled by its own cancel
            if r.state in (JobState.QUEUED, JobState.RUNNING):
                r.state, r.finished_at, r.message = JobState.CANCELLED, now, JobState.CANCELLED
                s.add(JobEvent(job_id=r.id, state=JobState.CANCELLED, progress=r.progress, message=JobState.CANCELLED))
        s.flush()
        if job.parent_id is not None:
            _settle_parent(s, job.parent_id, now)
    return get(job.id, url)


@retried
def reset_for_retry(job_id: str, url: str | None = None) -> list[str]:
    """Failed/cancelled → queued with a fresh attempt budget; for a sweep, each shard that did not succeed.
    Returns the ids to send (the job's own, or its shards')."""
    job = get(job_id, url)
    with session(url) as s:
        rows = list(s.scalars(select(Job).where(or_(Job.id == job.id, Job.parent_id == job.id)).with_for_update()))
        me = next(r for r in rows if r.id == job.id)
        if me.state not in (JobState.FAILED, JobState.CANCELLED):
            raise UsageError(f"job {job.id} is {job.state}; only failed or cancelled jobs can be retried")
        again = [r for r in rows if r.state in (JobState.FAILED, JobState.CANCELLED)]
        if me.parent_id is not None:  # one shard again: its sweep is open again until that shard ends
            parent = s.get(Job, me.parent_id)
            if parent.state in (JobState.FAILED, JobState.CANCELLED):
                again.append(parent)
        for r in again:
            r.state, r.error, r.finished_at, r.worker, r.attempts = JobState.QUEUED, None, None, None, 0
            r.message = "queued (retry)"
            s.add(JobEvent(job_id=r.id, state=JobState.QUEUED, progress=r.progress, message="queued (retry)"))
        if len(rows) > 1:  # a sweep: queued again for its shards that did not succeed
            shards_again = [r.id for r in again if r.id != job.id]
            if not shards_again:  # every shard had succeeded: the sweep is done, nothing to send
                s.flush()
                _settle_parent(s, job.id, db_now(s))
            return shards_again
        return [r.id for r in again if r.id != me.parent_id] or [job.id]


@retried
def stale_running(stale_after: float, *, running: str | None = None, url: str | None = None) -> list[str]:
    """Running jobs whose worker has not been heard from: it died (SIGKILL, host lost). ``running`` is the
    job the asking worker is running now: it knows that one is alive, so a late beat of its own (a busy
    CPU) never hands it on — while a job of its own it has given up (a long database outage) is reaped
    like any other, even by a worker alone. Judged by the database's clock."""
    with read_session(url) as s:
        cutoff = db_now(s) - timedelta(seconds=stale_after)
        shard = aliased(Job)
        q = select(Job.id).where(Job.state == JobState.RUNNING, Job.heartbeat_at < cutoff,  # a sweep runs only in its shards
                                 ~select(shard.id).where(shard.parent_id == Job.id).exists())
        if running is not None:
            q = q.where(Job.id != running)
        return list(s.scalars(q))


@retried
def waiting_since(seconds: float, url: str | None = None) -> list[tuple[str, str]]:
    """(id, queue) of queued jobs sent to a queue that have waited longer than ``seconds``."""
    with read_session(url) as s:
        cutoff = db_now(s) - timedelta(seconds=seconds)
        last_change = (select(JobEvent.at).where(JobEvent.job_id == Job.id).order_by(JobEvent.id.desc())
                       .limit(1).scalar_subquery())
        rows = s.execute(select(Job.id, Job.queue).where(Job.state == JobState.QUEUED, Job.queue.is_not(None),
                                                         last_change < cutoff))
        return [(r[0], r[1]) for r in rows]


@retried
def listing(*, state: JobState | None = None, kind: JobKind | None = None, limit: int = 50, shards: bool = False,
            url: str | None = None) -> list[Job]:
    """Most recent first; a sweep's shards only with ``shards`` (the sweep's own row speaks for them)."""
    with read_session(url) as s:
        q = select(Job).order_by(Job.created_at.desc()).limit(limit)
        if not shards:
            q = q.where(Job.parent_id.is_(None))
        if state:
            q = q.where(Job.state == state)
        if kind:
            q = q.where(Job.kind == kind)
        return list(s.scalars(q))


def as_dict(job: Job, events: list[JobEvent] | None = None) -> dict[str, Any]:
    """``events``: a page of them (``events()``), listed under "events" when given."""
    d = {c: _jsonable(getattr(job, c)) for c in (
        "id", "kind", "state", "progress", "message", "error", "attempts", "sae_id", "queue", "requested_gpu",
        "worker", "host", "gpu", "params", "result", "created_at", "started_at", "finished_at", "parent_id",
        "requested_host", "deadline_at")}
    if events is not None:
        d["events"] = [{"id": e.id, "at": _jsonable(e.at), "state": e.state, "progress": e.progress,
                        "message": e.message} for e in events]
    return d


def _jsonable(v: Any) -> Any:
    return v.isoformat() if isinstance(v, datetime) else v
