"""The one ``runner.Worker`` of this process (its engine cache lives as long as the process)."""

from __future__ import annotations

import os
import socket

from tasks.runner import Worker

_worker: Worker | None = None


def current_worker() -> Worker:
    """The Celery worker's identity, set up by ``worker.main`` before it consumes."""
    global _worker
    if _worker is None:
        from engine.cache import EngineCache

        dev = _device()
        _worker = Worker(name=f"worker@{socket.gethostname()}:{os.getpid()}", device=dev, cache=EngineCache(device=dev))
    return _worker


def set_worker(worker: Worker) -> None:
    global _worker
    _worker = worker


def local_worker() -> Worker:
    """For ``--local``: the CLI process itself runs the job."""
    global _worker
    if _worker is None:
        from engine.cache import EngineCache

        dev = _device()
        _worker = Worker(device=dev, cache=EngineCache(device=dev))
    return _worker


def _device() -> str:
    import torch

    return os.environ.get("SAEJOBS_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
