"""The one Celery app. JSON only, late acks, one job at a time per worker.

The broker carries job ids, nothing else: parameters, state and results live in the database, so a
lost or duplicated message never loses or duplicates work.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from celery import Celery

DEFAULT_BROKER = "redis://127.0.0.1:6379/0"
SHARED_QUEUE = "saejobs"
DOWNLOAD_QUEUE = "saejobs.downloads"


def broker_url() -> str:
    return os.environ.get("SAEJOBS_BROKER") or DEFAULT_BROKER


_ON, _OFF = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")


def remote_control(strict: bool = False) -> bool:
    """Whether workers obey Celery's remote control (``SAEJOBS_REMOTE_CONTROL``, default off).

    Remote control is a broadcast queue in the broker that every worker consumes: whoever can write to the
    broker can make every worker shut down, stop consuming its queues or restart its pool. saejobs needs
    none of it — ``saejobs workers`` reads the database's workers table, ``jobs cancel`` writes the job's
    row, which the worker reads at its next progress report — so it is off unless asked for (Flower's
    worker pages and ``celery inspect`` use it). ``strict``: a value that is neither on nor off is refused
    (a worker starting), instead of read as off (anything merely importing the app)."""
    from saejobs.engine.errors import UsageError

    raw = os.environ.get("SAEJOBS_REMOTE_CONTROL", "").strip().lower()
    if raw in _ON:
        return True
    if raw not in _OFF and strict:
        raise UsageError(f"SAEJOBS_REMOTE_CONTROL is {raw!r}: give 1 (workers obey Celery's remote control) or 0")
    return False


def gpu_queue(gpu: int, host: str | None = None) -> str:
    """One GPU's queue: ``saejobs.gpu0`` is GPU 0 of any host, ``saejobs.gpu0@node2`` node2's."""
    return f"{SHARED_QUEUE}.gpu{gpu}" + (f"@{host}" if host else "")


@dataclass(frozen=True)
class Target:
    """``--gpu INDEX`` (that GPU on any host) or ``--gpu HOST:INDEX`` (on that host only)."""

    index: int
    host: str | None = None

    @property
    def queue(self) -> str:
        return gpu_queue(self.index, self.host)

    @classmethod
    def parse(cls, text: str) -> Target:
        from saejobs.engine.errors import UsageError

        host, _, index = str(text).rpartition(":")
        if not index.isdigit() or (_ and not host):
            raise UsageError(f"--gpu takes INDEX or HOST:INDEX (e.g. 0 or node2:1), not '{text}'")
        return cls(int(index), host or None)


# No fixups: the default Django one imports Celery's worker machinery into every process that merely
# sends a message (the CLI), and saejobs has no Django.
app = Celery("saejobs", include=["saejobs.tasks.celery_tasks"], fixups=[])
app.conf.update(
    broker_url=broker_url(),
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    event_serializer="json",
    task_ignore_result=True,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_default_queue=SHARED_QUEUE,
    broker_connection_retry_on_startup=True,
    broker_connection_timeout=3,
    broker_transport_options={
        # A dead worker's job is handed on by the database heartbeat (worker.reaper), not by
        # waiting for Redis' visibility timeout, so the timeout can be long enough that a
        # running sweep is never delivered twice while it is still alive.
        "visibility_timeout": float(os.environ.get("SAEJOBS_VISIBILITY_TIMEOUT", 12 * 3600)),
        "socket_connect_timeout": 3,
        "socket_timeout": 10,
    },
    worker_hijack_root_logger=False,
    worker_enable_remote_control=remote_control(),  # off: no broadcast (shutdown, cancel_consumer...) is received
)
