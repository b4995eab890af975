"""Workers are kept running: a worker that exits 75 (its job hung; the watchdog handed it on) is started
afresh after a backoff, a run of fast failures ends the stack instead of looping, and any other exit
stops the stack. Real child processes; the supervisor is the one ``saejobs up`` and ``worker --gpu 0,1`` use."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from saejobs.db import jobs
from tests.dbfixtures import home  # noqa: F401
from tests.faults.sweeps import Hold, sqlite_db, stored, sweep_args  # noqa: F401
from tests.queue_harness import FAST, wait_for
from tests.services import free_port
from tests.test_queue import saejobs, submitted
from tests.up_harness import running_up

ROOT = Path(__file__).resolve().parents[1]


def supervisor(monkeypatch, *, backoff=0.05, fast_s=30.0, max_fast=3):
    from saejobs.worker import supervise

    monkeypatch.setattr(supervise, "BACKOFF_S", backoff)
    monkeypatch.setattr(supervise, "FAST_S", fast_s)
    monkeypatch.setattr(supervise, "MAX_FAST", max_fast)
    said: list[str] = []
    return supervise.Supervisor(say=said.append), said


def run_until(sup, seconds: float, done=lambda: False) -> str | None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        reason = sup.step()
        if reason or done():
            return reason
        time.sleep(0.02)
    return None


def test_a_worker_that_exits_75_is_started_again_and_keeps_running(monkeypatch, tmp_path):
    marker = tmp_path / "first-run-done"
    code = (f"import os, sys, time\nif not os.path.exists({str(marker)!r}):\n"
            f"    open({str(marker)!r}, 'w').close(); sys.exit(75)\ntime.sleep(60)\n")
    sup, said = supervisor(monkeypatch)
    first = sup.start("cpu", [sys.executable, "-c", code])
    assert run_until(sup, 30, lambda: sup.children["cpu"].restarts == 1) is None
    again = sup.procs["cpu"]
    assert again.pid != first.pid and first.returncode == 75 and again.poll() is None
    assert run_until(sup, 0.5) is None and again.poll() is None  # left alone while it runs
    assert len(said) == 1 and "exited 75" in said[0]
    sup.signal_all(signal.SIGTERM)
    assert sup.wait_all() == {"cpu": -signal.SIGTERM}


def test_repeated_fast_failures_end_the_stack_with_a_growing_backoff(monkeypatch):
    sup, said = supervisor(monkeypatch, backoff=0.05, max_fast=3)
    sup.start("gpu0", [sys.executable, "-c", "import sys; sys.exit(75)"])
    reason = run_until(sup, 60)
    assert reason and "exited 75 4 times in a row" in reason and "giving up" in reason
    assert sup.children["gpu0"].restarts == 3
    delays = [float(line.rsplit(" in ", 1)[1].removesuffix(" s")) for line in said]
    assert delays == [0.05, 0.1, 0.2]  # doubling


def test_any_other_exit_stops_the_stack(monkeypatch):
    sup, _ = supervisor(monkeypatch)
    sup.start("cpu", [sys.executable, "-c", "import sys; sys.exit(4)"])
    assert run_until(sup, 30) == "worker cpu exited with code 4"
    assert sup.children["cpu"].restarts == 0


@pytest.mark.model
def test_saejobs_up_restarts_a_worker_whose_job_hung_and_the_job_finishes(home, sqlite_db, tiny_gemma2_dir,  # noqa: F811
                                                                          tmp_path, monkeypatch):
    """The worker is held without progress past SAEJOBS_STALL_AFTER: its watchdog hands the sweep on and
    exits 75; ``saejobs up`` starts a fresh worker, which finishes the sweep; up keeps running. (The stall
    limit leaves room for the model load, which reports no progress, on a loaded 2-core machine.)"""
    monkeypatch.setenv("SAEJOBS_BROKER", f"redis://127.0.0.1:{free_port()}/0")
    hold = Hold(tmp_path, "sweep.chunk_stored:1")
    env = {**os.environ, **FAST, **hold.env, "SAEJOBS_STALL_AFTER": "45", "SAEJOBS_RESTART_BACKOFF": "0.5"}
    with running_up(ROOT, env, tmp_path / "up.log") as up:
        job = submitted(saejobs(*sweep_args(home, tiny_gemma2_dir, n_tokens=8, batch_size=4)))
        hold.wait()
        wait_for(lambda: "exited 75" in up.text(), 120, "the hung worker to exit 75 and up to say so")
        hold.release()  # the fresh worker passes the failpoint
        done = wait_for(lambda: (j := jobs.get(job["id"])).state in ("succeeded", "failed") and j, 180,
                        "the sweep on the fresh worker")
        assert done.state == "succeeded" and stored(job["id"]) == done.result["generations"]
        assert up.proc.poll() is None  # the stack lives on
        up.proc.send_signal(signal.SIGINT)
        assert up.proc.wait(timeout=120) == 0, up.text()[-3000:]
