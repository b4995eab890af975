"""``saejobs up``: one command starts a broker (nothing answers at SAEJOBS_BROKER) and a worker (no GPU
here: one CPU worker); a sweep submitted from another process runs on it; Ctrl-C stops everything and
hands the running job back to the queue."""

from __future__ import annotations

import math
import os
import signal
from pathlib import Path

import pytest

from saejobs.db import jobs
from tests.dbfixtures import home  # noqa: F401
from tests.faults.sweeps import N_CONFIGS, Hold, sqlite_db, stored, sweep_args  # noqa: F401
from tests.queue_harness import FAST
from tests.services import free_port
from saejobs.worker.up import answers
from tests.test_queue import saejobs, submitted
from tests.up_harness import running_up

pytestmark = pytest.mark.model
ROOT = Path(__file__).resolve().parents[1]


def test_up_runs_a_workstation_and_ctrl_c_hands_the_running_job_back(home, sqlite_db, tiny_gemma2_dir, tmp_path,
                                                                     monkeypatch):
    port = free_port()
    assert not answers("127.0.0.1", port)
    monkeypatch.setenv("SAEJOBS_BROKER", f"redis://127.0.0.1:{port}/0")
    first_chunks = math.ceil(N_CONFIGS / 4)
    hold = Hold(tmp_path, f"sweep.chunk_stored:{first_chunks + 2}")  # the second sweep, two chunks in
    env = {**os.environ, **FAST, **hold.env}
    with running_up(ROOT, env, tmp_path / "up.log") as up:
        assert up.info["embedded_broker_pid"] and list(up.info["workers"]) == ["cpu"]
        assert answers("127.0.0.1", port)
        args = sweep_args(home, tiny_gemma2_dir, n_tokens=8, batch_size=4)
        first = submitted(saejobs(*args, "--wait"))  # runs through on up's worker
        assert first["state"] == "succeeded" and first["result"]["generations"] == stored(first["id"]) == N_CONFIGS
        second = submitted(saejobs(*args))  # the worker holds after two of its chunks
        hold.wait()
        up.proc.send_signal(signal.SIGINT)  # Ctrl-C
        hold.release()
        assert up.proc.wait(timeout=120) == 0, up.text()[-3000:]
        handed = jobs.get(second["id"])
        assert handed.state == "queued" and "handed back" in handed.message
        assert not answers("127.0.0.1", port)  # the embedded broker stopped too
        assert "celery@" in up.text() or "ready." in up.text()  # the worker's own log went to up's output
