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
# What no worker of these suites may log unless its test made that happen on purpose (a Beat thread swallows
# its exceptions into "beat failed"; an escaped exception prints a Traceback): checked when the test ends.
LOG_PROBLEMS = ("beat failed", "Traceback")
CLEAN_LOG_SUITES = ("faults", "scale")  # tests/faults, tests/scale


def log_problems(text: str, tolerate: tuple[str, ...] = ()) -> list[str]:
    """The lines of a worker log that say one of LOG_PROBLEMS, less those the test made on purpose: a line is
    tolerated when it contains one of ``tolerate``; a Traceback when its exception line (the first line
    after it that is not indented) does — so tolerating "ConnectionError" never hides a TypeError."""
    lines, bad = text.splitlines(), []
    for i, ln in enumerate(lines):
        if not any(p in ln for p in LOG_PROBLEMS):
            continue
        said = ln
        if "Traceback" in ln:
            said = next((x for x in lines[i + 1:] if x.strip() and not x.startswith((" ", "\t"))), ln)
        if not any(t in said for t in tolerate):
            bad.append(ln if said == ln else f"{ln} ... {said}")
    return bad


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

    def __init__(self, log: Path, env: dict[str, str] | None = None, args: list[str] | None = None,
                 tolerate: tuple[str, ...] = ()):
        self.log, self.tolerate = log, tuple(tolerate)
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

    def terminate(self, timeout: float = 60, clean: bool = False) -> int:
        """SIGTERM and wait; with ``clean``, then assert its log has no LOG_PROBLEMS line it was not told to
        tolerate."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=timeout)
        finally:
            self._out.close()
        if clean:
            self.assert_clean_log()
        return code

    def assert_clean_log(self) -> None:
        bad = log_problems(self.text(), self.tolerate)
        assert not bad, f"{self.log.name} (pid {self.proc.pid}) logged {bad[:5]}:\n{self.text()[-3000:]}"

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=30)
        self._out.close()


@pytest.fixture
def start_worker(request, tmp_path, broker):
    """``start(*args, env=..., ready=True, tolerate=())``: a worker. In tests/faults and tests/scale every
    worker's log is checked when the test ends (after its process is gone): no "beat failed", no Traceback,
    except lines containing one of ``tolerate`` — what that test does on purpose (a database it crashes)."""
    started: list[WorkerProcess] = []

    def start(*args: str, env: dict[str, str] | None = None, ready: bool = True,
              tolerate: tuple[str, ...] = ()) -> WorkerProcess:
        w = WorkerProcess(tmp_path / f"worker{len(started)}.log", env, list(args) or ["--cpu"], tolerate)
        started.append(w)
        return w.wait_ready() if ready else w

    yield start
    for w in started:
        if w.proc.poll() is None:
            w.proc.kill()
            w.proc.wait(timeout=30)
    if Path(request.node.path).parent.name in CLEAN_LOG_SUITES:
        for w in started:
            w.assert_clean_log()


def wait_for(predicate, timeout: float, what: str, every: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
