"""Worker processes kept running: the supervisor ``saejobs up`` and ``saejobs worker --gpu 0,1`` share.

A worker whose job hung exits 75 (EX_TEMPFAIL: its stall watchdog handed the job on and ended the
process, the only way to free a GPU from a call that never returns), and so does an idle worker whose
Celery consumer stopped taking messages after a broker outage (``worker.main.Beat``). That is a reason to start a fresh
one, after a backoff that doubles while restarts keep failing fast; after ``SAEJOBS_RESTART_MAX``
fast failures in a row the supervisor gives up rather than loop. Any other exit ends the whole stack:
a crash or a refused schema would only repeat.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field

EX_TEMPFAIL = 75
BACKOFF_S = float(os.environ.get("SAEJOBS_RESTART_BACKOFF", 1.0))  # first delay; doubles per fast failure
MAX_BACKOFF_S = 60.0
FAST_S = float(os.environ.get("SAEJOBS_RESTART_FAST_S", 30.0))  # a run shorter than this failed fast
MAX_FAST = int(os.environ.get("SAEJOBS_RESTART_MAX", 5))


@dataclass
class Child:
    name: str
    argv: list[str]
    popen: dict
    proc: subprocess.Popen | None  # None: stopped while waiting for its restart
    started: float = field(default_factory=time.monotonic)
    fast_failures: int = 0
    restart_at: float | None = None  # waiting for its backoff to pass
    restarts: int = 0


class Supervisor:
    def __init__(self, say=print):
        self.children: dict[str, Child] = {}
        self.say = say

    def start(self, name: str, argv: list[str], **popen) -> subprocess.Popen:
        proc = subprocess.Popen(argv, **popen)
        self.children[name] = Child(name, argv, popen, proc)
        return proc

    @property
    def procs(self) -> dict[str, subprocess.Popen]:
        return {name: c.proc for name, c in self.children.items()}

    def step(self) -> str | None:
        """Look at every child once: restart what exited 75 (after its backoff); the reason to stop the
        stack when a child exited otherwise or keeps failing fast, else None."""
        now = time.monotonic()
        for c in self.children.values():
            if c.restart_at is not None:
                if now >= c.restart_at:
                    c.proc, c.started, c.restart_at = subprocess.Popen(c.argv, **c.popen), now, None
                    c.restarts += 1
                continue
            code = c.proc.poll()
            if code is None:
                continue
            if code != EX_TEMPFAIL:
                return f"worker {c.name} exited with code {code}"
            c.fast_failures = c.fast_failures + 1 if now - c.started < FAST_S else 1
            if c.fast_failures > MAX_FAST:
                return f"worker {c.name} exited {EX_TEMPFAIL} {c.fast_failures} times in a row within {FAST_S:g} s; giving up"
            delay = min(MAX_BACKOFF_S, BACKOFF_S * 2 ** (c.fast_failures - 1))
            c.restart_at = now + delay
            self.say(f"saejobs: worker {c.name} exited {EX_TEMPFAIL} (its job hung and was handed on, or it "
                     f"stopped taking messages after a broker outage); "
                     f"starting a fresh one in {delay:g} s")
        return None

    def signal_all(self, signum: int = signal.SIGTERM) -> None:
        """Pass a signal on to every running child; one waiting for its restart is not started again."""
        for c in self.children.values():
            if c.restart_at is not None:
                c.restart_at, c.proc = None, None
            elif c.proc.poll() is None:
                c.proc.send_signal(signum)

    def wait_all(self) -> dict[str, int]:
        """Each child's exit code (those stopped while waiting for a restart are left out)."""
        return {name: c.proc.wait() for name, c in self.children.items() if c.proc is not None}
