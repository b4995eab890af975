"""Submitting jobs: a row first (the truth), then a message carrying only its id.

If the broker cannot be reached the row is failed at once with the reason, so nothing sits queued
forever waiting for a message that was never sent.
"""

from __future__ import annotations

from db import jobs
from db.models import Job
from engine.errors import SaejobsError, UsageError
from tasks.app import SHARED_QUEUE, app, broker_url, gpu_queue

SEND_TIMEOUT_S = 3


class BrokerUnavailable(SaejobsError):
    exit_code = 6


def redact(url: str) -> str:
    from db.session import redact as _redact

    return _redact(url) if "://" in url else url


BROKER_SCHEMES = ("redis", "rediss", "sentinel", "amqp", "amqps", "pyamqp")


def check_broker_url(url: str) -> None:
    """A malformed broker URL is a typo to fix, not an outage: refused before any row is written."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in BROKER_SCHEMES or not rest.strip("/"):
        raise UsageError(f"bad broker URL '{redact(url)}' (SAEJOBS_BROKER): expected redis://host:port/db "
                         "or amqp://user@host:port/vhost")


def submit(kind: str, params: dict, *, sae_id: str | None = None, gpu: int | None = None, local: bool = False) -> Job:
    queue = gpu_queue(gpu) if gpu is not None else SHARED_QUEUE
    if not local:
        check_broker_url(broker_url())
    job = jobs.create(kind, params, sae_id=sae_id, queue=None if local else queue, requested_gpu=gpu)
    if not local:  # a local job is run by the caller (``runner.execute``), in its own process
        dispatch(job.id, queue)
    return jobs.get(job.id)


def dispatch(job_id: str, queue: str | None = None) -> None:
    """Send the job's message; if the broker is out, fail the row now and say how to send it again."""
    try:
        send(job_id, queue)
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
