"""A strength search is a job that runs its rounds as child jobs (with one live worker, in its worker's process;
with several, as shards other workers share). Faults in a round are the search's: SIGTERM in the second round
hands both back and the next worker resumes from the round that was cut (the first is not run again, nothing
is left queued); cancelling the search mid-round ends the round too; a round's progress keeps the search's
watchdog fed; a worker SIGKILLed holding a round's shard loses nothing (the other finishes it)."""

from __future__ import annotations

import signal

import pytest

from saejobs.db import jobs
from saejobs.db.models import Job
from saejobs.db.session import session
from tests.dbfixtures import home  # noqa: F401
from tests.faults.sweeps import Hold, sqlite_db  # noqa: F401
from tests.queue_harness import broker, start_worker, wait_for  # noqa: F401
from tests.synthetic_saes import make
from tests.test_queue import saejobs, submitted

pytestmark = pytest.mark.model
SECOND_ROUND_STORED = "sweep.chunk_stored:2"  # each round is one chunk: the 2nd store is round 2's


def search_args(home, model_dir) -> list[str]:
    sae = make(home, d_model=64, d_sae=256, layer=1)
    submitted(saejobs("download", sae.id, "--source", str(sae.mirror), "--local", "--json"))
    return ["search", "--sae", sae.id, "--feature", "3", "--prompt", "Once upon a time", "--range", "0:16",
            "--points", "3", "--rounds", "1", "--n-tokens", "8", "--model", str(model_dir), "--json"]


def all_jobs() -> list[Job]:
    with session() as s:
        return list(s.query(Job))


def test_sigterm_in_a_round_hands_back_and_the_search_resumes_from_that_round(home, sqlite_db, start_worker,
                                                                              tiny_gemma2_dir, tmp_path, ledger):
    args = search_args(home, tiny_gemma2_dir)
    local = submitted(saejobs(*args, "--local"))
    hold = Hold(tmp_path, SECOND_ROUND_STORED)
    first = start_worker(env=hold.env)
    search = submitted(saejobs(*args))
    hold.wait()
    rounds_then = [j for j in all_jobs() if j.kind == "sweep" and j.id not in local["result"]["rounds"]]
    done_round = next(j for j in rounds_then if j.state == "succeeded")
    cut_round = next(j for j in rounds_then if j.state == "running")
    first.proc.send_signal(signal.SIGTERM)
    hold.release()
    assert first.proc.wait(timeout=120) == 0, first.text()[-3000:]
    assert jobs.get(cut_round.id).state == "queued" and jobs.get(search["id"]).state == "queued"
    start_worker()
    done = wait_for(lambda: (j := jobs.get(search["id"])).state in ("succeeded", "failed") and j, 180,
                    "the search on the second worker")
    assert done.state == "succeeded", done.error
    assert done.result["rounds"] == [done_round.id, cut_round.id]  # resumed: the same two rounds, no new ones
    assert jobs.get(done_round.id).attempts == 1  # the finished round was not run again
    assert jobs.get(cut_round.id).attempts == 2 and jobs.get(cut_round.id).state == "succeeded"
    assert done.result["chosen"] == local["result"]["chosen"]
    left = [(j.kind, j.state) for j in all_jobs() if j.state not in ("succeeded", "failed", "cancelled")]
    assert left == []  # nothing left queued with no message
    ledger.add("sigterms")


def test_cancelling_a_search_mid_round_ends_the_round_and_keeps_the_worker(home, sqlite_db, start_worker,
                                                                           tiny_gemma2_dir, tmp_path, ledger):
    args = search_args(home, tiny_gemma2_dir)
    hold = Hold(tmp_path, SECOND_ROUND_STORED)
    worker = start_worker(env=hold.env)
    search = submitted(saejobs(*args))
    hold.wait()
    cut_round = next(j for j in all_jobs() if j.kind == "sweep" and j.state == "running")
    assert saejobs("jobs", "cancel", search["id"], "--json").returncode == 0
    hold.release()
    wait_for(lambda: jobs.get(cut_round.id).state == "cancelled", 120, "the round to end with its search")
    assert jobs.get(search["id"]).state == "cancelled"
    assert worker.proc.poll() is None  # the worker lives on and takes the next job
    again = submitted(saejobs(*args[:-1], "--n-tokens", "4", "--json", "--wait"))
    assert again["state"] == "succeeded"
    ledger.add("cancels")


def test_a_rounds_progress_feeds_its_searchs_watchdog(home, sqlite_db):
    """In-process: the round's progress calls move the search's stall timer and its progress bar, so a
    round longer than SAEJOBS_STALL_AFTER does not end a healthy worker."""
    from saejobs.db.states import JobKind
    from saejobs.tasks.runner import Executor, JobContext

    search = jobs.create(JobKind.SEARCH, {"sae": "x"})
    rnd = jobs.create(JobKind.SWEEP, {"sae": "x"})
    ex = Executor(name="w@test")
    for j in (search, rnd):
        assert jobs.claim(j.id, worker=ex.name, host="h", gpu=None)
    parent = JobContext(jobs.get(search.id), ex)
    child = JobContext(jobs.get(rnd.id), ex, parent=parent, span=(0.5, 1.0))
    parent.touched = child.touched = 0.0  # long ago
    child.progress(0.5, "round 2: half", force=True)
    assert parent.touched > 0.0
    assert jobs.get(search.id).progress == pytest.approx(0.75)  # half of the second half


def test_a_round_that_fails_fails_its_search_once(home, sqlite_db):  # noqa: F811
    """A child that fails ends ``run_child`` with the child's reason and exit code — it is not run again in
    the same call (a failed row keeps its worker's name: that is not a claim left running)."""
    from saejobs.db.states import JobKind
    from saejobs.engine.errors import SaejobsError
    from saejobs.tasks.runner import Executor, JobContext

    search = jobs.create(JobKind.SEARCH, {"sae": "x"})
    ex = Executor(name="w@test")
    assert jobs.claim(search.id, worker=ex.name, host="h", gpu=None)
    ctx = JobContext(jobs.get(search.id), ex)
    with pytest.raises(SaejobsError, match="failed") as raised:
        ctx.run_child(JobKind.SWEEP, {"sae": "x"}, key="round-0")  # not a valid sweep: the round fails at once
    assert raised.value.exit_code == 2
    (rnd,) = [j for j in all_jobs() if j.kind == "sweep"]
    assert rnd.state == "failed" and rnd.attempts == 1


def test_a_worker_killed_holding_a_rounds_shard_loses_nothing(home, sqlite_db, start_worker, tiny_gemma2_dir,
                                                              tmp_path, ledger):
    """Two workers, a search whose rounds fan out as shards. Each worker is held at its first stored chunk,
    so both are inside the search's first round at once (whichever took the search runs a shard in its
    process, the other took a shard from the queue); one is SIGKILLed there. The other's reaper hands the
    killed worker's jobs on and it finishes them: the search succeeds with --local's answer, each shard
    ran to success once more than it was cut, and nothing is left queued."""
    from tests.test_search_queue import close

    args = search_args(home, tiny_gemma2_dir)
    local = submitted(saejobs(*args, "--local"))
    holds = [Hold(tmp_path / name, "sweep.chunk_stored:1") for name in ("a", "b")]
    for h in holds:
        h.folder.mkdir()
    survivor, victim = start_worker(env=holds[0].env), start_worker(env=holds[1].env)
    search = submitted(saejobs(*args))
    for h in holds:
        h.wait()
    victim.kill()
    holds[0].release()
    done = wait_for(lambda: (j := jobs.get(search["id"])).state in ("succeeded", "failed") and j, 180,
                    "the search on the surviving worker")
    assert done.state == "succeeded", done.error
    assert close(done.result["chosen"], local["result"]["chosen"])
    shards = [s for r in done.result["rounds"] for s in jobs.shards(r)]
    assert len(shards) > 2 and all(s.state == "succeeded" for s in shards)
    assert sorted(s.attempts for s in shards)[-1] == 2  # the shard the killed worker held ran again, once
    left = [(j.kind, j.state) for j in all_jobs() if j.state not in ("succeeded", "failed", "cancelled")]
    assert left == []
    ledger.add("sigkills")
