"""Submitting jobs: a row first (the truth), then a message carrying only its id.

If the broker cannot be reached the row is failed at once with the reason, so nothing sits queued
forever waiting for a message that was never sent.
"""

from __future__ import annotations

import logging
import math
import os

from saejobs.db import jobs
from saejobs.db.models import Job
from saejobs.db.states import JobKind
from saejobs.engine.errors import SaejobsError, UsageError
from saejobs.engine.job_requests import JobRequest
from saejobs.engine.request import SweepRequest
from saejobs.tasks.app import DOWNLOAD_QUEUE, SHARED_QUEUE, Target, app, broker_url

log = logging.getLogger("saejobs.submit")

SEND_TIMEOUT_S = 3


class BrokerUnavailable(SaejobsError):
    exit_code = 6


def redact(url: str) -> str:
    from saejobs.db.session import redact as _redact

    return _redact(url) if "://" in url else url


BROKER_SCHEMES = ("redis", "rediss", "sentinel", "amqp", "amqps", "pyamqp")


def check_broker_url(url: str) -> None:
    """A malformed broker URL is a typo to fix, not an outage: refused before any row is written."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in BROKER_SCHEMES or not rest.strip("/"):
        raise UsageError(f"bad broker URL '{redact(url)}' (SAEJOBS_BROKER): expected redis://host:port/db "
                         "or amqp://user@host:port/vhost")


def submit(request: JobRequest | str, params: dict | None = None, *, sae_id: str | None = None,
           gpu: Target | None = None, local: bool = False, shard_size: int | None = None,
           timeout_s: float | None = None) -> Job:
    """Write the job's row from its typed request (its kind is the request's, ``JobKind.of``) and send it.

    A queued sweep is split into shards (``shard_plan``) that any worker takes; a ``--local`` one runs
    whole in the caller's process. ``timeout_s`` (``--timeout``) is the deadline of each attempt, stored
    beside the request's params (on every shard of a sweep: shards are what workers claim).
    ``submit(kind, params)`` (a row's params, e.g. the bench scripts') builds the kind's request from
    them first, so every row written holds a validated request either way."""
    if params is not None:
        kind = JobKind(request)
        timeout_s = params.get("timeout_s") if timeout_s is None else timeout_s
        request = kind.request_type.from_params(params)
    kind = JobKind.of(request)
    if kind == JobKind.SWEEP:
        request.check_size()
    queue = queue_for(kind, gpu)
    if not local:
        check_broker_url(broker_url())
    deadline = {"timeout_s": timeout_s} if timeout_s is not None else {}
    shards = ([{**s, **deadline} for s in shard_plan(request, shard_size)]
              if kind == JobKind.SWEEP and not local else None)
    job = jobs.create(kind, {**request.to_params(), **deadline}, sae_id=sae_id, queue=None if local else queue,
                      requested_gpu=gpu.index if gpu else None, requested_host=gpu.host if gpu else None,
                      shards=shards)
    if not local:  # a local job is run by the caller (``runner.execute``), in its own process
        dispatch(job.id, [c.id for c in jobs.shards(job.id)] or [job.id], queue)
    return jobs.get(job.id)


def queue_for(kind: str, gpu: Target | None) -> str:
    """Downloads go to their own queue (download workers, and GPU workers only when asked to), so a
    transfer never holds a GPU worker's only slot; ``--gpu`` picks one GPU's queue."""
    if gpu is not None:
        return gpu.queue
    return DOWNLOAD_QUEUE if kind == JobKind.DOWNLOAD else SHARED_QUEUE


SHARD_CONFIGS = int(os.environ.get("SAEJOBS_SHARD_CONFIGS", 256))  # at most; about one GPU batch of rows


def shard_plan(request: SweepRequest, shard_size: int | None = None) -> list[dict]:
    """Configuration ranges ``[lo, hi)`` of the sweep's grid (its order is fixed by the request): at most
    ``SHARD_CONFIGS`` each, and, when several workers are live, small enough that each gets about two
    (one worker alone gets one shard: splitting would only add claims)."""
    from saejobs.db import workers

    total = request.size()
    if shard_size is None:
        live = sum(SHARED_QUEUE in (w.queues or []) for w in workers.listing(live_within_s=workers.LIVE_WITHIN_S))
        shard_size = max(1, min(SHARD_CONFIGS, math.ceil(total / (2 * live if live > 1 else 1))))
    return [{"shard": [lo, min(lo + shard_size, total)]} for lo in range(0, total, shard_size)]


def dispatch(job_id: str, message_ids: list[str], queue: str | None = None) -> None:
    """Send the job's messages (its own, or its shards'); if the broker is out, fail the rows now and say
    how to send them again. A shard whose send failed after others went out is sent by the orphan check."""
    try:
        for i, mid in enumerate(message_ids):
            try:
                send(mid, queue)
            except BrokerUnavailable:
                if i == 0:
                    raise
                log.warning("job %s: could not send shard %s; the orphan check sends it", job_id, mid)
    except BrokerUnavailable as e:
        jobs.abandon(job_id, str(e))
        raise BrokerUnavailable(f"{e} — job {job_id[:8]} not queued (recorded as failed); "
                                f"`saejobs jobs retry {job_id[:8]}` once the broker is back") from None


def send(job_id: str, queue: str | None = None) -> None:
    if queue is None:
        queue = jobs.get(job_id).queue or SHARED_QUEUE
    try:
        with app.connection_for_write(broker_url()) as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0.5, timeout=SEND_TIMEOUT_S)
            app.send_task("saejobs.run_job", args=[job_id], queue=queue, connection=conn,
                          retry=True, retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.5})
    except Exception as e:  # kombu raises OperationalError, socket errors, timeouts: all mean the same here
        raise BrokerUnavailable(f"broker unreachable at {redact(broker_url())}: {type(e).__name__}: {e}".splitlines()[0]) from None
