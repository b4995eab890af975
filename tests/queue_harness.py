"""Real Redis, real worker processes: the harness the queue tests share.

Workers are ``python -m worker.main --cpu`` subprocesses (the same entry point ``saejobs worker``
runs), on Redis database 15, flushed around each test. Heartbeats are fast so a killed worker is
noticed in seconds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

BROKER = os.environ.get("SAEJOBS_TEST_BROKER", "redis://127.0.0.1:6379/15")
FAST = {"SAEJOBS_HEARTBEAT": "0.5", "SAEJOBS_STALE_AFTER": "4"}


def flush(url: str = BROKER) -> None:
    import redis

    redis.Redis.from_url(url, socket_connect_timeout=3).flushdb()


@pytest.fixture
def broker(monkeypatch):
    try:
        flush()
    except Exception as e:
        pytest.fail(f"Redis is required for the queue tests ({BROKER}): {e}")
    monkeypatch.setenv("SAEJOBS_BROKER", BROKER)
    for k, v in FAST.items():
        monkeypatch.setenv(k, v)
    yield BROKER
    flush()


class WorkerProcess:
    """One CPU worker subprocess with its own log file."""

    def __init__(self, log: Path, env: dict[str, str] | None = None, args: list[str] | None = None):
        self.log = log
        full_env = {**os.environ, **FAST, **(env or {})}
        self._out = open(log, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "saejobs.worker.main", *(args or []), "--loglevel", "info"],
                                     env=full_env, stdout=self._out, stderr=subprocess.STDOUT,
                                     cwd=Path(__file__).resolve().parents[1])

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float = 60) -> "WorkerProcess":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if " ready." in self.text():
                return self
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.text()[-3000:]}")
            time.sleep(0.1)
        raise AssertionError(f"worker not ready after {timeout}s:\n{self.text()[-3000:]}")

    def terminate(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self._out.close()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=30)
        self._out.close()


@pytest.fixture
def start_worker(tmp_path, broker):
    started: list[WorkerProcess] = []

    def start(*args: str, env: dict[str, str] | None = None, ready: bool = True) -> WorkerProcess:
        w = WorkerProcess(tmp_path / f"worker{len(started)}.log", env, list(args) or ["--cpu"])
        started.append(w)
        return w.wait_ready() if ready else w

    yield start
    for w in started:
        if w.proc.poll() is None:
            w.proc.kill()
            w.proc.wait(timeout=30)


def wait_for(predicate, timeout: float, what: str, every: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
