"""The one Celery app. JSON only, late acks, one job at a time per worker.

The broker carries job ids, nothing else: parameters, state and results live in the database, so a
lost or duplicated message never loses or duplicates work.
"""

from __future__ import annotations

import os

from celery import Celery

DEFAULT_BROKER = "redis://127.0.0.1:6379/0"
SHARED_QUEUE = "saejobs"


def broker_url() -> str:
    return os.environ.get("SAEJOBS_BROKER") or DEFAULT_BROKER


def gpu_queue(gpu: int) -> str:
    return f"{SHARED_QUEUE}.gpu{gpu}"


# No fixups: the default Django one imports Celery's worker machinery into every process that merely
# sends a message (the CLI), and saejobs has no Django.
app = Celery("saejobs", include=["tasks.celery_tasks"], fixups=[])
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
    task_soft_time_limit=float(os.environ.get("SAEJOBS_SOFT_TIME_LIMIT", 0)) or None,
    task_time_limit=float(os.environ.get("SAEJOBS_TIME_LIMIT", 0)) or None,
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
)
