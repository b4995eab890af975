"""``--timeout`` end to end through the CLI: a sweep submitted with ``--timeout 1 --wait``, its worker held
at a failpoint (``engine/failpoints.py``) past the deadline, fails at its next progress report with the
deadline's message and exit code, and ``--wait`` exits with that code."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from saejobs.db import jobs
from tests.dbfixtures import home  # noqa: F401
from tests.faults.sweeps import Hold, sqlite_db, stored, sweep_args  # noqa: F401
from tests.queue_harness import broker, start_worker, wait_for  # noqa: F401
from tests.test_queue import one_clean_line

pytestmark = pytest.mark.model


def test_a_sweep_held_past_its_timeout_fails_with_the_deadline_and_wait_exits_5(home, sqlite_db, start_worker,
                                                                                   tiny_gemma2_dir, tmp_path):
    args = sweep_args(home, tiny_gemma2_dir)  # --json: stdout the final job, stderr only the error line
    hold = Hold(tmp_path, "sweep.loaded:1")  # after the loads, before the first chunk or progress report
    start_worker(env=hold.env)
    waiting = subprocess.Popen([sys.executable, "-m", "saejobs.cli.main", *args, "--timeout", "1", "--wait"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # held after the loads (so a fast machine cannot finish within 1 s), or — a machine so slow that its
        # loads take longer than the deadline — already failed at the "loading model" report: either way
        # the deadline, not the work, ends the attempt
        wait_for(lambda: (tmp_path / "sweep.loaded.paused").exists() or any(
            j.state == "failed" for j in _all_jobs() if j.parent_id is not None), 300, "the hold or the deadline")
        time.sleep(2)  # past the 1 s deadline, held: no progress reported, nothing stored
        hold.release()
        out, err = waiting.communicate(timeout=300)
    finally:
        if waiting.poll() is None:
            waiting.kill()
    line = one_clean_line(subprocess.CompletedProcess(waiting.args, waiting.returncode, out, err), 5)
    shown = json.loads(out)
    assert line == f"saejobs: error: job {shown['id']} failed: {shown['error']}" and shown["state"] == "failed", line
    assert "shards failed; first: deadline passed (1 s after the attempt started at" in line, line
    assert line.endswith("); stopped at 0%"), line
    (shard,) = [j for j in _all_jobs() if j.parent_id is not None]
    sweep = jobs.get(shard.parent_id)
    assert shard.state == sweep.state == "failed" and shard.attempts == 1  # not retried: the deadline is the answer
    assert shard.error.startswith("deadline passed (1 s after the attempt started at"), shard.error
    assert sweep.error == f"1 of 1 shards failed; first: {shard.error}" and sweep.result["exit_code"] == 5
    assert stored(sweep.id) == 0  # it stopped at the report: no chunk written after the deadline


def _all_jobs():
    from sqlalchemy import select

    from saejobs.db.models import Job
    from saejobs.db.session import session

    with session() as s:
        return list(s.scalars(select(Job)))
