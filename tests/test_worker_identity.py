"""Issue 26, item 6: a worker's name is unique per process start, even where every process is PID 1 on
one host name — as in docker compose, where each worker is its container's PID 1 and several containers
share ``SAEJOBS_HOST``. Each worker here runs in its own PID namespace (``unshare --pid``), so it is PID 1
exactly as in a container; two of them must still be two workers, each owning only its own job."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.dbfixtures import home  # noqa: F401
from tests.queue_harness import FAST, broker, wait_for  # noqa: F401
from tests.synthetic_saes import tiny_sae  # noqa: F401
from tests.test_queue import saejobs, submitted

ROOT = Path(__file__).resolve().parents[1]
HOST = "compose-host"


def _pid_namespaces() -> bool:
    try:
        return subprocess.run(["unshare", "--pid", "--fork", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


class Pid1Worker:
    """``python -m saejobs.worker.main --cpu`` as PID 1 of a fresh PID namespace (killed with its unshare)."""

    def __init__(self, log: Path):
        self.log, self._out = log, open(log, "w")
        self.proc = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--kill-child", sys.executable, "-m", "saejobs.worker.main", "--cpu",
             "--loglevel", "info"], env={**os.environ, **FAST, "SAEJOBS_HOST": HOST}, stdout=self._out,
            stderr=subprocess.STDOUT, cwd=ROOT)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # --kill-child: the worker (PID 1 inside) goes with it
            self.proc.wait(timeout=30)
        self._out.close()


def test_two_pid_1_workers_on_one_host_have_two_names(home, broker, tiny_sae, tmp_path):
    if not _pid_namespaces():
        pytest.skip("no PID namespaces here (unshare --pid needs CAP_SYS_ADMIN)")
    workers = [Pid1Worker(tmp_path / f"pid1-{i}.log") for i in range(2)]
    try:
        for w in workers:
            wait_for(lambda: " ready." in w.text() or w.proc.poll() is not None, 90, "a PID-1 worker to start")
            assert w.proc.poll() is None, w.text()[-3000:]

        def live() -> list[dict]:
            res = saejobs("workers", "--json")
            return json.loads(res.stdout) if res.returncode == 0 else []

        wait_for(live, 20, "a registered worker")
        time.sleep(2)  # four beats: both have registered by now
        rows = live()
        names = [r["name"] for r in rows]
        assert len(set(names)) == 2, names
        assert all(r["pid"] == 1 and r["host"] == HOST for r in rows), rows  # as in two compose containers
        for name in names:  # readable: kind, PID, a random part drawn at start, host
            assert re.fullmatch(rf"saejobs-cpu-1-[0-9a-z]{{6}}@{HOST}", name), name

        job = submitted(saejobs("download", tiny_sae.id, "--source", str(tiny_sae.mirror), "--wait", "--json"))
        assert job["state"] == "succeeded" and job["worker"] in names
        assert job["worker"].startswith("saejobs-cpu-")
    finally:
        for w in workers:
            w.stop()
