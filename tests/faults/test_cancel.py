"""Cancelling a running sweep: the worker stops at its next progress report, the rows it stored stay
(queryable, marked by the job's ``cancelled`` state), and ``jobs retry`` runs only what is missing."""

from __future__ import annotations

import json
import time

import pytest

from saejobs.db import jobs
from tests.dbfixtures import home  # noqa: F401
from tests.faults.sweeps import N_CONFIGS, account, held, outputs, sqlite_db, stored, sweep_args  # noqa: F401
from tests.queue_harness import broker, start_worker, wait_for  # noqa: F401
from tests.test_queue import saejobs, submitted

pytestmark = pytest.mark.model


def test_cancel_a_running_sweep_then_retry_runs_only_the_rest(home, sqlite_db, start_worker, tiny_gemma2_dir, ledger,
                                                              tmp_path):
    w, job, hold = held(start_worker, sweep_args(home, tiny_gemma2_dir, n_tokens=24, batch_size=1), tmp_path)
    kept = stored(job["id"])
    assert kept == 3  # held right after its third chunk (of one row) was stored
    t0 = time.monotonic()
    assert json.loads(saejobs("jobs", "cancel", job["id"], "--json").stdout)["state"] == "cancelled"
    hold.release()
    wait_for(lambda: "'cancelled'" in w.text(), 60, "the worker to let go of the job")  # its task has returned
    ledger.figure("cancel_to_sweep_stopped", time.monotonic() - t0)
    assert stored(job["id"]) == kept and jobs.get(job["id"]).state == "cancelled"  # nothing written after
    watch = saejobs("jobs", "watch", job["id"])
    assert watch.returncode == 8 and "cancelled" in watch.stderr
    partial = submitted(saejobs("results", job["id"], "--json"))
    assert len(partial) == kept  # one row per stored generation
    again = submitted(saejobs("jobs", "retry", job["id"], "--wait", "--json"))
    assert again["state"] == "succeeded" and again["result"]["ran_now"] == N_CONFIGS - kept
    assert stored(job["id"]) == len(outputs(job["id"])) == N_CONFIGS
    ledger.add("cancels")
    account(ledger, job["id"])
