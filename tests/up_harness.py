"""``saejobs up`` as a test runs it: started in the background with its log in a file, its first line (what
it started) read, and on the way out nothing it started left running (workers, embedded broker)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

from tests.queue_harness import wait_for


class Up:
    def __init__(self, proc: subprocess.Popen, log: Path):
        self.proc, self.log, self.info = proc, log, {}

    def text(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def running_up(cwd: Path, env: dict, log: Path):
    out = open(log, "w")
    up = Up(subprocess.Popen([sys.executable, "-m", "saejobs.cli.main", "up", "--json"], cwd=cwd, env=env,
                             stdout=out, stderr=subprocess.STDOUT), log)
    try:
        first = lambda: next((x for x in up.text().splitlines() if x.startswith('{"broker"')), None)  # noqa: E731
        up.info.update(json.loads(wait_for(first, 60, "saejobs up to say what it started")))
        yield up
    finally:
        if up.proc.poll() is None:
            up.proc.kill()
        for pid in [*(up.info.get("workers") or {}).values(), up.info.get("embedded_broker_pid")]:
            try:
                if pid:
                    os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        out.close()
