"""SIGKILL a worker at six points of one multi-config sweep; each time a fresh worker takes over.

Five kills land on exact instants through ``engine.failpoints`` (after the loads, between generating
and storing a chunk, inside the chunk's transaction before its commit, between the commit and the
progress report, after the last row before the job is marked done); one is an outside SIGKILL at
whatever instant the sweep is at. The sweep must end ``succeeded`` with every configuration stored
exactly once and the same tokens as an uninterrupted run. SIGTERM hands the job back instead.
"""

from __future__ import annotations

import signal
import time

import pytest

from saejobs.db import jobs
from tests.dbfixtures import home  # noqa: F401
from tests.faults.sweeps import N_CONFIGS, Hold, account, held, outputs, sqlite_db, stored, sweep_args  # noqa: F401
from tests.queue_harness import broker, start_worker, wait_for  # noqa: F401
from tests.test_queue import saejobs, submitted

pytestmark = pytest.mark.model
BATCH = 4


def killed(worker) -> None:
    """Wait for a worker's failpoint to fire: the process must die of SIGKILL, not exit."""
    assert worker.proc.wait(timeout=120) == -9, worker.text()[-2000:]


def test_six_sigkills_during_one_sweep_lose_and_duplicate_nothing(home, sqlite_db, start_worker, tiny_gemma2_dir,
                                                                 ledger, tmp_path, monkeypatch):
    monkeypatch.setenv("SAEJOBS_MAX_ATTEMPTS", "7")  # seven claims here are the test, not a job circulating
    args = sweep_args(home, tiny_gemma2_dir, batch_size=BATCH)
    reference = submitted(saejobs(*args, "--local"))
    assert reference["state"] == "succeeded"
    job = submitted(saejobs(*args))
    took_over: list[float] = []

    def survive(point: str | None, expect_rows) -> int:
        """Start a worker that dies at ``point`` (or is shot from outside) and check what it left."""
        t0 = time.monotonic()
        hold = Hold(tmp_path, "sweep.chunk_stored:1")  # its first chunk stored, progress not yet reported
        w = start_worker("--cpu", env={"SAEJOBS_KILL_AT": point} if point else hold.env, ready=False)
        if point:
            killed(w)
        else:
            hold.wait()
            w.kill()
        took_over.append(time.monotonic() - t0)
        n = stored(job["id"])
        assert expect_rows(n), f"after a kill at {point or 'an outside instant'}: {n} rows"
        assert jobs.get(job["id"]).state == "running"  # its dead worker's claim, until a reaper sees it
        ledger.add("sigkills")
        return n

    survive("sweep.loaded:1", lambda n: n == 0)
    survive("sweep.chunk_generated:2", lambda n: n == BATCH)  # the second chunk's generations died unsaved
    survive("results.before_commit:2", lambda n: n == 2 * BATCH)  # its rows were inserted, never committed
    n = survive("sweep.chunk_stored:2", lambda n: n == 4 * BATCH)  # committed; the progress report never came
    assert jobs.get(job["id"]).progress < n / N_CONFIGS
    survive(None, lambda n: n == 5 * BATCH)  # held after storing its first chunk (the 5th), shot from outside
    survive("runner.before_finish:1", lambda n: n == N_CONFIGS)

    start_worker()
    done = wait_for(lambda: (j := jobs.get(job["id"])).state in ("succeeded", "failed") and j, 120, "the last worker")
    assert done.state == "succeeded", done.error
    assert done.attempts == 7 and done.result["ran_now"] == 0 and done.result["generations"] == N_CONFIGS
    (shard,) = jobs.shards(job["id"])  # one worker live at a time: the sweep is one shard
    shard_events = jobs.events(shard.id, limit=10_000)
    assert ([e.state for e in jobs.events(done.id)].count("succeeded") == [e.state for e in shard_events].count("succeeded")
            == 1)
    assert sum((e.message or "").startswith("running on") for e in shard_events) == 7
    assert sum("worker lost" in (e.message or "") for e in shard_events) == 6
    assert stored(job["id"]) == N_CONFIGS
    got, want = outputs(job["id"]), outputs(reference["id"])
    assert got == want and len(got) == N_CONFIGS  # every configuration once, same tokens as the clean run
    account(ledger, job["id"])
    ledger.figure("kill_to_next_worker_running", max(took_over))


def test_sigterm_hands_the_running_sweep_back(home, sqlite_db, start_worker, tiny_gemma2_dir, ledger, tmp_path):
    first, job, hold = held(start_worker, sweep_args(home, tiny_gemma2_dir, n_tokens=24, batch_size=2), tmp_path)
    t0 = time.monotonic()
    first.proc.send_signal(signal.SIGTERM)  # while it is held: it cannot have finished the sweep meanwhile
    hold.release()
    first.proc.wait(timeout=120)  # hands the job back at its next progress report, then exits
    assert first.terminate() == 0
    ledger.figure("sigterm_to_handed_back", time.monotonic() - t0)
    handed = jobs.get(job["id"])
    assert handed.state == "queued" and "handed back" in handed.message
    start_worker()
    done = wait_for(lambda: (j := jobs.get(job["id"])).state == "succeeded" and j, 120, "the sweep on the new worker")
    assert done.attempts == 2 and stored(job["id"]) == N_CONFIGS
    ledger.add("sigterms")
    account(ledger, job["id"])
