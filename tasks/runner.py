"""Runs one job by id: claim it, run its kind with a progress callback, record how it ended.

The same function runs inside a Celery worker and in-process for ``--local``, so both paths write the
same rows. It never imports Celery.
"""

from __future__ import annotations

import importlib
import logging
import os
import socket
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Callable

from saejobs.db import jobs, workers
from saejobs.db.jobs import JobCancelled
from saejobs.db.models import Job
from saejobs.db.states import JobKind, JobState
from saejobs.db.session import DatabaseError
from saejobs.engine import failpoints
from saejobs.engine.cache import EngineCache
from saejobs.engine.errors import SaejobsError, TransientError

log = logging.getLogger("saejobs.runner")

HEARTBEAT_S = float(os.environ.get("SAEJOBS_HEARTBEAT", 5))
STALE_AFTER_S = float(os.environ.get("SAEJOBS_STALE_AFTER", 30))
STALL_AFTER_S = float(os.environ.get("SAEJOBS_STALL_AFTER", 900))  # no progress call this long: the worker ends
PROGRESS_EVERY_S = 0.5

shutting_down = threading.Event()  # set by the worker on SIGTERM: running jobs hand themselves back


class Outcome(StrEnum):
    """How ``execute`` left a job (not a job state: a job handed back or retried later is queued again)."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"  # not claimable: running elsewhere, finished, or out of attempts
    HANDED_BACK = "handed_back"  # this worker is stopping; back in the queue
    TRANSIENT = "transient"  # back in the queue, to be retried
    DATABASE_UNAVAILABLE = "database_unavailable"  # left running for the reaper


class HandBack(Exception):
    """The worker is shutting down: the job goes back to the queue at its next progress report."""


def host_name() -> str:
    """This host's name in job rows, queues and SAE copies (``SAEJOBS_HOST`` overrides the system's,
    e.g. for a container whose hostname changes at every start)."""
    return os.environ.get("SAEJOBS_HOST") or socket.gethostname()


@dataclass
class Executor:
    """This process as a job executor (a Celery worker, or the CLI for ``--local``): its worker name, device
    and the engine cache it keeps loaded between jobs. (``db.models.Worker`` is its registered row.)"""

    name: str = field(default_factory=lambda: f"local@{host_name()}:{os.getpid()}")
    host: str = field(default_factory=host_name)
    gpu: str | None = None
    cache: EngineCache = field(default_factory=EngineCache)
    current_job: str | None = None
    local: bool = False  # the CLI's own process (--local): no queue behind it to retry a job

    @property
    def device(self) -> str:
        return self.cache.device


@dataclass
class JobContext:
    """What a job body gets: its row, the executor running it, progress, and children it runs in-process.

    A child (a search's round) reports to its parent as well: the parent's stall timer and progress move
    with it, and a cancelled parent stops it."""

    job: Job
    executor: Executor
    parent: "JobContext | None" = None
    span: tuple[float, float] = (0.0, 1.0)  # the part of the parent's progress this child covers
    _last: float = 0.0
    touched: float = field(default_factory=time.monotonic)  # the last progress call, written or not: the watchdog reads it

    @property
    def params(self) -> dict[str, Any]:
        return self.job.params

    def progress(self, fraction: float, message: str | None = None, *, force: bool = False) -> None:
        """Report progress (throttled); stops the job here if it was cancelled or must be handed back."""
        if shutting_down.is_set():
            raise HandBack(self.job.id)
        now = self.touched = time.monotonic()
        if force or now - self._last >= PROGRESS_EVERY_S or fraction >= 1.0:
            self._last = now
            jobs.report(self.job.id, min(max(fraction, 0.0), 1.0), message, worker=self.executor.name,
                        milestone=force)
        if self.parent is not None:
            lo, hi = self.span
            self.parent.progress(lo + (hi - lo) * min(max(fraction, 0.0), 1.0), message)

    def model_for(self, source: str, dtype: str, pairs: list[tuple], at: float = 0.0) -> Any:
        """The model ``source`` from the executor's cache, for the loaded SAEs ``pairs`` ((entry, SAE), ...): a
        pair the model cannot run (no layer at its hook, another width there) is refused before the weights load
        where the model's config is on this host (``models.local_config``), else as soon as they have. ``at``:
        the job's progress while it loads."""
        import torch

        from saejobs.engine.models import local_config
        from saejobs.engine.verify import check_pairing

        if (found := local_config(source)) is not None:
            for entry, sae in pairs:
                check_pairing(entry, sae, found[1], found[0])
        self.progress(at, f"loading model {source}", force=True)
        lm = self.executor.cache.model(source, getattr(torch, dtype))
        for entry, sae in pairs:
            check_pairing(entry, sae, lm.config, lm.model_id)
        return lm

    def run_child(self, kind: str, params: dict, *, key: str, sae_id: str | None = None,
                  span: tuple[float, float] = (0.0, 1.0), shards: list[dict] | None = None) -> Job:
        """Run a child job (its own row, results and provenance) and return its row once it succeeded. The
        child's id is derived from this job's id and ``key``, so a handed-on parent finds the children it
        already ran (succeeded: not run again; handed back or requeued: run now; taken by another worker
        after a crash: waited for; failed in a run before ``jobs retry``: run again) instead of starting over.

        With ``shards`` (a sweep's ranges, ``tasks.submit.shard_plan``) the child is a sharded sweep: its
        shards are sent to this job's queue, so other live workers take some, and this worker runs every
        shard no one has claimed; a host with one worker never waits on itself. Without, it runs here."""
        sharded = bool(shards) and len(shards) > 1
        child = jobs.create(kind, params, sae_id=sae_id, job_id=child_id(self.job.id, key),
                            queue=self.job.queue if sharded else None, shards=shards if sharded else None)
        self._offer(jobs.shards(child.id))
        ran = False
        while True:
            child = jobs.get(child.id)
            if child.state == JobState.SUCCEEDED:
                return child
            units = jobs.shards(child.id) or [child]
            if child.state in (JobState.FAILED, JobState.CANCELLED) and not ran:
                jobs.reset_for_retry(child.id)  # ended in an earlier run of this parent, which was retried since
                self._offer(jobs.shards(child.id))
                continue
            if bad := next((u for u in units if u.state in (JobState.FAILED, JobState.CANCELLED)), None):
                raise _child_error(bad)
            mine = [i for i, u in enumerate(units) if u.state == JobState.QUEUED
                    or (u.state == JobState.RUNNING and u.worker == self.executor.name)]
            if mine:  # queued, or left running by this worker (a claim whose answer was lost)
                ran = True
                lo, hi = span
                i, n = mine[0], len(units)
                outcome = execute(units[i].id, self.executor, parent=self,
                                  span=(lo + (hi - lo) * i / n, lo + (hi - lo) * (i + 1) / n))
                if outcome == Outcome.HANDED_BACK:  # this worker is stopping: the parent goes back too, resumes here
                    raise HandBack(self.job.id)
                if outcome in (Outcome.TRANSIENT, Outcome.DATABASE_UNAVAILABLE):  # the parent retries from this child
                    raise TransientError(f"{kind} {units[i].id[:8]}: {jobs.get(units[i].id).error or outcome}")
            elif any(u.state == JobState.RUNNING for u in units):  # run by other workers: wait for them
                others = sorted({u.worker for u in units if u.state == JobState.RUNNING})
                self.progress(span[0] + (span[1] - span[0]) * (child.progress or 0.0),
                              f"waiting for {kind} {child.id[:8]} on {', '.join(others)}")
                time.sleep(min(HEARTBEAT_S, 1.0))
            elif child.state not in (JobState.QUEUED, JobState.RUNNING):
                raise _child_error(child)
            else:  # every shard ended and the sweep is being settled: look again
                time.sleep(0.05)

    def _offer(self, units: list[Job]) -> None:
        """Send the queued shards' messages (to this job's queue) for other workers to take; one that cannot
        be sent is run here instead."""
        if self.executor.local or not self.job.queue:
            return
        from saejobs.tasks.submit import send

        for u in units:
            if u.state == JobState.QUEUED:
                try:
                    send(u.id, self.job.queue)
                except Exception as e:  # the broker is out: this worker runs it
                    log.warning("shard %s not sent (%s); run here", u.id[:8], e)
                    return


def child_id(parent_id: str, key: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"saejobs:{parent_id}:{key}"))


def _child_error(child: Job) -> SaejobsError:
    """A child that ended without succeeding fails its parent with the child's own reason and exit code."""
    if child.state == JobState.CANCELLED:
        return SaejobsError(f"{child.kind} {child.id[:8]} was cancelled")
    err = SaejobsError(f"{child.kind} {child.id[:8]} failed: {child.error}")
    err.exit_code = (child.result or {}).get("exit_code", 1)
    return err


_executor: Executor | None = None  # this process's one Executor: its engine cache lives as long as the process


def current_executor() -> Executor:
    """The Celery worker's identity (``worker.main`` sets it before it consumes)."""
    global _executor
    if _executor is None:
        _executor = Executor(name=f"worker@{host_name()}:{os.getpid()}")
    return _executor


def set_executor(worker: Executor) -> None:
    global _executor
    _executor = worker


def local_executor() -> Executor:
    """For ``--local``: the CLI process itself runs the job."""
    global _executor
    if _executor is None:
        _executor = Executor(local=True)
    return _executor


# Each kind's job body: ``run(ctx) -> result`` in this module of ``saejobs.tasks``. Only the kind run is imported,
# so a download (``--local`` or on a download worker) never imports torch.
BODIES = {JobKind.DOWNLOAD: "download", JobKind.VERIFY: "verify", JobKind.SWEEP: "sweep", JobKind.SCORE: "score",
          JobKind.SEARCH: "search", JobKind.FEATURES: "features"}
assert set(BODIES) == set(JobKind), "every job kind needs a body"


def body(kind: JobKind) -> Callable[[JobContext], dict]:
    """The kind's ``run``, its module imported now."""
    return importlib.import_module(f"saejobs.tasks.{BODIES[kind]}").run


def execute(job_id: str, worker: Executor, *, parent: JobContext | None = None,
            span: tuple[float, float] = (0.0, 1.0)) -> Outcome:
    """Run the job; returns how it ended: succeeded, failed, cancelled, skipped, handed_back, transient.
    ``parent``: the job that runs this one as its child (``JobContext.run_child``)."""
    if not jobs.claim(job_id, worker=worker.name, host=worker.host, gpu=worker.gpu):
        log.info("job %s: not claimable (already running elsewhere or finished); skipped", job_id)
        return Outcome.SKIPPED
    job = jobs.get(job_id)
    ctx = JobContext(job, worker, parent=parent, span=span)
    outer_job, worker.current_job = worker.current_job, job_id
    _show_job(worker)
    beat = _Heartbeat(ctx)
    beat.start()
    try:
        result = body(job.kind)(ctx)
        failpoints.hit("runner.before_finish")
        return Outcome.SUCCEEDED if jobs.finish(job_id, JobState.SUCCEEDED, worker=worker.name, result=result) else Outcome.CANCELLED
    except JobCancelled as e:
        if e.args and e.args[0] != job_id:  # raised by its parent: cancelled (the child ends) or moved (handed back)
            if jobs.get(e.args[0]).state == JobState.CANCELLED:
                jobs.finish(job_id, JobState.CANCELLED, worker=worker.name, error=f"job {e.args[0][:8]} cancelled")
            else:
                jobs.requeue(job_id, f"handed back: job {e.args[0][:8]} moved", worker=worker.name)
            raise  # the parent stops here too
        return Outcome.CANCELLED
    except HandBack:
        return Outcome.HANDED_BACK if jobs.requeue(job_id, "handed back: worker shutting down", worker=worker.name) else Outcome.FAILED
    except TransientError as e:
        if worker.local:  # nothing would pick a requeued job up: fail it, saying it is worth retrying
            jobs.finish(job_id, JobState.FAILED, worker=worker.name, error=f"{e} (transient: `saejobs jobs retry {job_id[:8]}` "
                        "tries again)", result={"error_type": type(e).__name__, "exit_code": e.exit_code})
            return Outcome.FAILED
        # False: out of attempts, failed with this error as the last one
        return Outcome.TRANSIENT if jobs.requeue(job_id, f"transient error, will retry: {e}", worker=worker.name) else Outcome.FAILED
    except DatabaseError as e:  # nothing can be written now; the reaper hands the job on once it is back
        log.error("job %s: %s; left for the reaper", job_id, e)
        return Outcome.DATABASE_UNAVAILABLE
    except SaejobsError as e:  # the error's class decides the CLI's exit code (2 usage, 3 integrity, ...)
        jobs.finish(job_id, JobState.FAILED, worker=worker.name, error=str(e),
                    result={"error_type": type(e).__name__, "exit_code": e.exit_code})
        return Outcome.FAILED
    except Exception as e:  # a bug: keep the traceback in the log, a readable line in the row
        log.error("job %s crashed:\n%s", job_id, traceback.format_exc())
        jobs.finish(job_id, JobState.FAILED, worker=worker.name, error=f"internal error: {type(e).__name__}: {e}")
        return Outcome.FAILED
    finally:
        beat.stop()
        worker.current_job = outer_job
        _show_job(worker)


def _show_job(worker: Executor) -> None:
    if worker.local:
        return
    try:
        workers.show_job(worker.name, worker.current_job)
    except Exception as e:  # the next beat says it
        log.warning("could not record worker %s's job: %s", worker.name, e)


class _Heartbeat(threading.Thread):
    """Keeps the job's heartbeat fresh while long steps (a model load) make no progress reports — and is
    the watchdog: a job that has not called ``progress`` for ``STALL_AFTER_S`` is hung (a transfer or a
    kernel that never returns), so the job is handed on and this worker process ends, freeing its GPU;
    its supervisor (compose, systemd, ``saejobs up``) starts a fresh one. A ``--local`` run is the
    user's own process: there the job is only failed."""

    def __init__(self, ctx: JobContext):
        super().__init__(daemon=True, name=f"heartbeat-{ctx.job.id[:8]}")
        self.ctx, self._stop_event = ctx, threading.Event()

    def run(self) -> None:
        job_id, worker = self.ctx.job.id, self.ctx.executor
        while not self._stop_event.wait(min(HEARTBEAT_S, STALL_AFTER_S / 4)):
            stalled = time.monotonic() - self.ctx.touched
            if stalled > STALL_AFTER_S:
                self._stalled(job_id, worker, stalled)
                return
            try:
                jobs.heartbeat(job_id, worker.name)
            except Exception as e:  # the database blinked; the next beat tries again
                log.warning("heartbeat for %s failed: %s", job_id, e)

    def _stalled(self, job_id: str, worker: Executor, stalled: float) -> None:
        reason = f"stalled: no progress for {stalled:.0f} s (SAEJOBS_STALL_AFTER={STALL_AFTER_S:g})"
        log.error("job %s %s", job_id, reason)
        try:
            if worker.local:
                jobs.finish(job_id, JobState.FAILED, worker=worker.name, error=reason)
                return
            if jobs.requeue(job_id, f"{reason}; worker {worker.name} ended, job handed on", worker=worker.name):
                from saejobs.tasks.submit import send

                send(job_id)
        finally:
            if not worker.local:
                logging.shutdown()
                os._exit(75)  # EX_TEMPFAIL: the hung call cannot be interrupted from Python

    def stop(self) -> None:
        self._stop_event.set()
