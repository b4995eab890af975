"""The job state machine's details that the broader tests in test_db.py leave open (issue 25 item 4: the
mutation check of db/jobs.py). Each test is one SQLite file, direct calls to ``db.jobs``, and expected values
read back with plain ``sqlite3`` or worked out by hand; a clock is pinned where a boundary is tested."""

from __future__ import annotations

import json
import sqlite3
import uuid
from contextlib import closing
from datetime import datetime, timedelta, timezone

import pytest

from saejobs.db import jobs
from saejobs.db.session import dispose_all, session
from saejobs.engine.errors import NotFoundError
from tests.dbfixtures import db_url, home  # noqa: F401


@pytest.fixture
def db(home, monkeypatch):
    """``$SAEJOBS_DB``: a fresh SQLite file; its path, for reading rows back with sqlite3."""
    path = home / "jobs.db"
    monkeypatch.setenv("SAEJOBS_DB", f"sqlite:///{path}")
    monkeypatch.delenv("SAEJOBS_MAX_ATTEMPTS", raising=False)
    monkeypatch.delenv("SAEJOBS_EVENT_EVERY_S", raising=False)
    yield path
    dispose_all()


def sql(path, query: str, *args) -> list[sqlite3.Row]:
    """Rows of a plain SQL query, outside the product's functions."""
    with closing(sqlite3.connect(path)) as c:
        c.row_factory = sqlite3.Row
        return c.execute(query, args).fetchall()


def write(path, query: str, *args) -> None:
    with closing(sqlite3.connect(path)) as c:
        c.execute(query, args)
        c.commit()


def row(path, job_id: str) -> sqlite3.Row:
    (r,) = sql(path, "SELECT * FROM jobs WHERE id = ?", job_id)
    return r


def event_rows(path, job_id: str) -> list[tuple]:
    return [tuple(r) for r in sql(path, "SELECT state, progress, message FROM job_events WHERE job_id = ? "
                                        "ORDER BY id", job_id)]


def claim(job_id: str, worker: str = "w1") -> bool:
    return jobs.claim(job_id, worker=worker, host="h", gpu=None)


def ids(*hexes: str):
    """A stand-in for uuid.uuid4 that hands out these ids in turn (create draws the shards' ids, then the
    sweep's)."""
    return iter(uuid.UUID(h) for h in hexes).__next__


T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)  # stored as '2026-01-02 03:04:05.000000'


@pytest.fixture
def clock(monkeypatch):
    """The database's clock, pinned: ``clock.now`` is what ``db_now`` answers (T0 until a test moves it)."""
    class Clock:
        now = T0

        def __call__(self, s):
            return self.now

    c = Clock()
    monkeypatch.setattr(jobs, "db_now", c)
    return c


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_a_sweeps_shards_keep_the_order_they_were_given(db):
    """Shards made in one transaction used to be stamped with the same microsecond; the tie went to their
    random ids, so `jobs show`, dispatch and "first shard" followed no order."""
    parent = jobs.create("sweep", {}, queue="q", shards=[{"shard": [i, i + 1]} for i in range(12)])
    assert [c.params["shard"][0] for c in jobs.shards(parent.id)] == list(range(12))
    stored = sql(db, "SELECT params, created_at FROM jobs WHERE parent_id = ? ORDER BY created_at, id", parent.id)
    assert [json.loads(r["params"])["shard"][0] for r in stored] == list(range(12))
    assert len({r["created_at"] for r in stored}) == 12  # no two alike


def test_an_ended_job_says_its_error_or_its_state(db):
    bad, good = jobs.create("verify", {}), jobs.create("verify", {})
    assert claim(bad.id) and claim(good.id)
    assert jobs.finish(bad.id, "failed", worker="w1", error="checksum mismatch")
    assert jobs.finish(good.id, "succeeded", worker="w1", result={"verdict": "PASS"})
    assert (row(db, bad.id)["message"], row(db, bad.id)["error"]) == ("checksum mismatch", "checksum mismatch")
    assert event_rows(db, bad.id)[-1] == ("failed", 0.0, "checksum mismatch")
    assert (row(db, good.id)["message"], row(db, good.id)["error"]) == ("succeeded", None)
    assert event_rows(db, good.id)[-1] == ("succeeded", 1.0, "succeeded")


def test_a_delivery_of_a_job_out_of_attempts_fails_it_with_its_last_message(db):
    job = jobs.create("verify", {})
    write(db, "UPDATE jobs SET attempts = 3 WHERE id = ?", job.id)  # three claims used, no error recorded
    assert not claim(job.id)
    got = row(db, job.id)
    assert (got["state"], got["error"], got["message"]) == ("failed", "gave up after 3 attempts; last: queued",
                                                            "gave up after 3 attempts; last: queued")
    assert got["finished_at"] is not None and got["finished_at"] == got["heartbeat_at"]
    assert event_rows(db, job.id) == [("queued", 0.0, "queued"),
                                      ("failed", 0.0, "gave up after 3 attempts; last: queued")]


def test_a_duplicate_delivery_fails_no_other_job_and_not_a_running_last_attempt(db, monkeypatch):
    """The limit lowered to 1 while ``waiting`` (handed back once) waits and ``busy`` runs its 1st attempt:
    a duplicate message for ``busy`` is refused and leaves both alone; ``waiting`` fails at its own delivery."""
    waiting, busy = jobs.create("verify", {}), jobs.create("verify", {})
    assert claim(waiting.id) and jobs.requeue(waiting.id, "handed back: worker shutting down", worker="w1")
    assert claim(busy.id, "w1")
    monkeypatch.setenv("SAEJOBS_MAX_ATTEMPTS", "1")
    assert not claim(busy.id, "w2")
    assert [(r["state"], r["worker"], r["attempts"]) for r in (row(db, waiting.id), row(db, busy.id))] == [
        ("queued", None, 1), ("running", "w1", 1)]
    assert [e[0] for e in event_rows(db, busy.id)] == ["queued", "running"]
    assert not claim(waiting.id, "w3")
    assert (row(db, waiting.id)["state"], row(db, waiting.id)["error"]) == (
        "failed", "gave up after 1 attempts; last: handed back: worker shutting down")


def test_a_job_claimed_again_starts_from_the_progress_it_had(db):
    other = jobs.create("verify", {})  # another job's progress is not this one's
    assert claim(other.id, "wx")
    jobs.report(other.id, 0.75, "elsewhere", worker="wx")
    job = jobs.create("verify", {})
    assert claim(job.id, "w1")
    jobs.report(job.id, 0.5, "half", worker="w1")
    assert jobs.requeue(job.id, "handed back: worker shutting down", worker="w1")
    assert claim(job.id, "w2")
    assert event_rows(db, job.id) == [("queued", 0.0, "queued"), ("running", 0.0, "running on w1"),
                                      ("running", 0.5, "half"), ("queued", 0.5, "handed back: worker shutting down"),
                                      ("running", 0.5, "running on w2")]


def test_a_sweep_whose_shards_all_wait_again_is_queued_with_the_reason(db):
    parent = jobs.create("sweep", {}, queue="q", shards=[{"shard": [0, 1]}, {"shard": [1, 2]}])
    a, _ = jobs.shards(parent.id)
    assert claim(a.id) and row(db, parent.id)["state"] == "running"
    jobs.report(a.id, 0.5, "half", worker="w1")
    assert jobs.requeue(a.id, "handed back: worker shutting down", worker="w1")
    got = row(db, parent.id)
    assert (got["state"], got["progress"], got["message"]) == ("queued", 0.25,
                                                               "handed back: worker shutting down (0/2 shards done)")
    assert event_rows(db, parent.id)[-1] == ("queued", 0.25, "handed back: worker shutting down (0/2 shards done)")


def test_a_succeeded_sweep_sums_its_shards_results(db):
    parent = jobs.create("sweep", {}, queue="q", shards=[{"shard": [0, 5]}, {"shard": [5, 8]}])
    a, b = jobs.shards(parent.id)
    assert claim(a.id) and jobs.finish(a.id, "succeeded", worker="w1",
                                       result={"sae": "res-a", "model": "gemma", "shard_size": 5, "ran_now": 2})
    assert claim(b.id) and jobs.finish(b.id, "succeeded", worker="w1", result={"sweep_id": 7})  # sizes not said: 0
    got = row(db, parent.id)
    assert json.loads(got["result"]) == {"sweep_id": 7, "shards": 2, "generations": 5, "ran_now": 2,
                                         "sae": "res-a", "model": "gemma"}
    assert (got["state"], got["progress"], got["message"]) == ("succeeded", 1.0, "succeeded")
    assert got["finished_at"] is not None and got["finished_at"] == got["heartbeat_at"]


def test_a_failed_sweep_carries_its_shards_result_and_a_cancelled_one_none(db):
    """The failed shard's result (its exit code) is the sweep's; once retried and cancelled, that stale
    result is not."""
    parent = jobs.create("sweep", {}, queue="q", shards=[{"shard": [0, 1]}])
    (a,) = jobs.shards(parent.id)
    assert claim(a.id) and jobs.finish(a.id, "failed", worker="w1", error="checksum mismatch",
                                       result={"error_type": "IntegrityError", "exit_code": 3})
    got = row(db, parent.id)
    assert (got["state"], got["error"]) == ("failed", "1 of 1 shards failed; first: checksum mismatch")
    assert json.loads(got["result"]) == {"error_type": "IntegrityError", "exit_code": 3}
    assert jobs.reset_for_retry(parent.id) == [a.id]
    jobs.cancel(a.id)
    got = row(db, parent.id)
    assert (got["state"], got["error"], json.loads(got["result"])) == (
        "cancelled", "1 of 1 shards cancelled; first: cancelled", None)


def test_the_first_shard_is_the_earliest_made_then_the_lowest_id(db, monkeypatch):
    with monkeypatch.context() as m:  # the first shard made has the higher id
        m.setattr(uuid, "uuid4", ids("bbbbbbbb-0000-4000-8000-000000000000", "aaaaaaaa-0000-4000-8000-000000000000",
                                     "cccccccc-0000-4000-8000-000000000000"))
        parent = jobs.create("sweep", {}, queue="q", shards=[{"shard": [0, 1]}, {"shard": [1, 2]}])
    assert [c.id[0] for c in jobs.shards(parent.id)] == ["b", "a"]
    for shard in jobs.shards(parent.id):
        assert claim(shard.id) and jobs.finish(shard.id, "failed", worker="w1", error=f"boom {shard.id[0]}")
    assert row(db, parent.id)["error"] == "2 of 2 shards failed; first: boom b"

    with monkeypatch.context() as m:
        m.setattr(uuid, "uuid4", ids("dddddddd-0000-4000-8000-000000000000", "00000000-0000-4000-8000-000000000000",
                                     "eeeeeeee-0000-4000-8000-000000000000"))
        legacy = jobs.create("sweep", {}, queue="q", shards=[{"shard": [0, 1]}, {"shard": [1, 2]}])
    write(db, "UPDATE jobs SET created_at = '2026-01-02 03:04:05.000000' WHERE parent_id = ?", legacy.id)  # a tie
    for shard in jobs.shards(legacy.id):
        assert claim(shard.id) and jobs.finish(shard.id, "failed", worker="w1", error=f"boom {shard.id[0]}")
    assert row(db, legacy.id)["error"] == "2 of 2 shards failed; first: boom 0"


def test_settling_a_settled_sweep_again_changes_nothing(db):
    parent = jobs.create("sweep", {}, queue="q", shards=[{"shard": [0, 1]}])
    (a,) = jobs.shards(parent.id)
    assert claim(a.id) and jobs.finish(a.id, "succeeded", worker="w1", result={"shard_size": 1})
    plain = jobs.create("verify", {})  # no shards: nothing to settle
    before = [tuple(r) for r in sql(db, "SELECT * FROM jobs ORDER BY id")]
    with session() as s:
        for job_id in (parent.id, plain.id):
            jobs._settle_parent(s, job_id, datetime(2030, 1, 1, tzinfo=timezone.utc))
    assert [tuple(r) for r in sql(db, "SELECT * FROM jobs ORDER BY id")] == before
    assert [e[0] for e in event_rows(db, parent.id)] == ["queued", "succeeded"]
    assert [e[0] for e in event_rows(db, plain.id)] == ["queued"]


def test_a_report_is_an_event_once_progress_moved_a_full_step(db, monkeypatch):
    monkeypatch.setenv("SAEJOBS_EVENT_EVERY_S", "3600")
    job = jobs.create("verify", {})
    assert claim(job.id)
    jobs.report(job.id, 0.01, "a little", worker="w1")  # from the claim's 0%
    assert len(event_rows(db, job.id)) == 2 and row(db, job.id)["message"] == "a little"
    jobs.report(job.id, 0.05, "one step", worker="w1")
    assert event_rows(db, job.id)[-1] == ("running", 0.05, "one step")


def test_a_report_is_an_event_once_the_latest_is_30_s_old(db, monkeypatch):
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    monkeypatch.setattr(jobs, "db_now", lambda s: now)  # the database's clock, pinned
    job = jobs.create("verify", {})
    assert claim(job.id)
    last = "SELECT max(id) FROM job_events WHERE job_id = ?"
    write(db, f"UPDATE job_events SET at = '2026-01-02 03:03:35.000001' WHERE id = ({last})", job.id)
    jobs.report(job.id, 0.01, "29.999999 s on", worker="w1")
    assert len(event_rows(db, job.id)) == 2  # coalesced
    write(db, f"UPDATE job_events SET at = '2026-01-02 03:03:35.000000' WHERE id = ({last})", job.id)
    jobs.report(job.id, 0.02, "30 s on", worker="w1")
    assert event_rows(db, job.id)[-1] == ("running", 0.02, "30 s on")


def test_create_stores_the_request_on_the_job_and_each_shard(db):
    job = jobs.create("verify", {"sae": "x"}, sae_id="res-x", queue="saejobs", requested_gpu=1,
                      requested_host="gpu-box")
    sweep = jobs.create("sweep", {"sae": "x"}, sae_id="res-x", queue="saejobs", requested_gpu=2,
                        requested_host="gpu-box", shards=[{"shard": [0, 1]}, {"shard": [1, 2]}])
    fields = "kind, params, sae_id, queue, requested_gpu, requested_host, state, attempts, parent_id"
    got = [tuple(r) for r in sql(db, f"SELECT {fields} FROM jobs WHERE id IN (?, ?) OR parent_id = ? "
                                     "ORDER BY parent_id IS NOT NULL, kind DESC, params", job.id, sweep.id, sweep.id)]
    assert got == [
        ("verify", '{"sae": "x"}', "res-x", "saejobs", 1, "gpu-box", "queued", 0, None),
        ("sweep", '{"sae": "x"}', "res-x", None, 2, "gpu-box", "queued", 0, None),
        ("sweep", '{"shard": [0, 1]}', "res-x", "saejobs", 2, "gpu-box", "queued", 0, sweep.id),
        ("sweep", '{"shard": [1, 2]}', "res-x", "saejobs", 2, "gpu-box", "queued", 0, sweep.id),
    ]
    assert event_rows(db, sweep.id) == [("queued", 0.0, "queued (2 shards)")]


def test_an_attempts_limit_of_one_fails_a_handed_back_job_at_that_moment(db, clock, monkeypatch):
    monkeypatch.setenv("SAEJOBS_MAX_ATTEMPTS", "1")
    job = jobs.create("verify", {})
    assert claim(job.id)
    clock.now = at(3)
    assert not jobs.requeue(job.id, "worker lost", worker="w1")
    got = row(db, job.id)
    assert (got["state"], got["error"], got["finished_at"], got["heartbeat_at"]) == (
        "failed", "gave up after 1 attempts; last: worker lost", "2026-01-02 03:04:08.000000",
        "2026-01-02 03:04:08.000000")
    monkeypatch.setenv("SAEJOBS_MAX_ATTEMPTS", "0")  # below one: one
    assert jobs.max_attempts() == 1


def test_owned_only_by_the_worker_running_that_job(db):
    done, queued, running = jobs.create("verify", {}), jobs.create("verify", {}), jobs.create("verify", {})
    assert claim(done.id) and jobs.finish(done.id, "succeeded", worker="w1")
    assert claim(running.id)
    with session() as s:
        assert jobs.owned(s, running.id, "w1") and jobs.owned(s, running.id, None)
        assert not jobs.owned(s, running.id, "w2")
        assert not jobs.owned(s, done.id, "w1")  # it ran there, but has ended
        assert not jobs.owned(s, queued.id, None)  # another job runs, not this one


def test_as_dict_is_every_field_and_event_as_json(db):
    job = jobs.create("sweep", {"sae": "x"}, sae_id="res-x", queue="saejobs", requested_gpu=0,
                      requested_host="gpu-box")
    write(db, "UPDATE jobs SET state = 'failed', progress = 0.5, message = 'boom', error = 'boom', attempts = 2, "
              "worker = 'w1', host = 'h1', gpu = '0', result = '{\"exit_code\": 3}', "
              "created_at = '2026-01-02 03:04:05.000001', started_at = '2026-01-02 03:04:06.500000', "
              "finished_at = '2026-01-02 03:05:00.250000', deadline_at = '2026-01-02 04:04:06.500000' WHERE id = ?",
          job.id)
    write(db, "UPDATE job_events SET at = '2026-01-02 03:04:05.000002' WHERE job_id = ?", job.id)
    (event_id,) = sql(db, "SELECT id FROM job_events WHERE job_id = ?", job.id)[0]
    want = {"id": job.id, "kind": "sweep", "state": "failed", "progress": 0.5, "message": "boom", "error": "boom",
            "attempts": 2, "sae_id": "res-x", "queue": "saejobs", "requested_gpu": 0, "worker": "w1", "host": "h1",
            "gpu": "0", "params": {"sae": "x"}, "result": {"exit_code": 3},
            "created_at": "2026-01-02T03:04:05.000001+00:00", "started_at": "2026-01-02T03:04:06.500000+00:00",
            "finished_at": "2026-01-02T03:05:00.250000+00:00", "parent_id": None, "requested_host": "gpu-box",
            "deadline_at": "2026-01-02T04:04:06.500000+00:00"}
    got = jobs.get(job.id)
    assert jobs.as_dict(got) == want
    assert jobs.as_dict(got, jobs.events(job.id)) == {**want, "events": [
        {"id": event_id, "at": "2026-01-02T03:04:05.000002+00:00", "state": "queued", "progress": 0.0,
         "message": "queued"}]}
    assert json.loads(json.dumps(jobs.as_dict(got))) == want  # JSON as it is


def test_every_call_acts_on_the_database_it_is_named(db, tmp_path, clock):
    """``url`` reaches each call's own transaction: the default database ($SAEJOBS_DB) is never created."""
    u = f"sqlite:///{tmp_path / 'other.db'}"
    other = tmp_path / "other.db"
    sweep = jobs.create("sweep", {}, queue="q", shards=[{"shard": [0, 1]}, {"shard": [1, 2]}], url=u)
    a, b = jobs.shards(sweep.id, url=u)
    assert jobs.get(sweep.id[:8], url=u).id == sweep.id
    assert jobs.claim(a.id, worker="w1", host="h", gpu=None, url=u)
    clock.now = at(1)
    jobs.heartbeat(a.id, "w1", url=u)
    assert row(other, a.id)["heartbeat_at"] == "2026-01-02 03:04:06.000000"
    jobs.report(a.id, 0.5, "half", worker="w1", url=u)
    assert jobs.finish(a.id, "succeeded", worker="w1", url=u)
    assert jobs.claim(b.id, worker="w2", host="h", gpu=None, url=u)
    clock.now = at(100)
    assert jobs.stale_running(60, url=u) == [b.id]
    assert jobs.requeue(b.id, "worker lost", stale_after=60, url=u)
    write(other, "UPDATE job_events SET at = '2026-01-02 03:04:05.000000'")
    assert jobs.waiting_since(60, url=u) == [(b.id, "q")]
    jobs.abandon(b.id, "broker down", url=u)
    assert (row(other, b.id)["state"], row(other, sweep.id)["state"]) == ("failed", "failed")
    assert jobs.reset_for_retry(sweep.id, url=u) == [b.id]
    assert jobs.cancel(sweep.id, url=u).state == "cancelled"
    (n,) = sql(other, "SELECT count(*) FROM job_events WHERE job_id = ?", b.id)[0]
    assert n == 6 and jobs.event_count(b.id, url=u) == 6 and len(jobs.events(b.id, url=u)) == 6
    assert [j.id for j in jobs.listing(url=u)] == [sweep.id]
    assert sql(db, "SELECT name FROM sqlite_master WHERE name = 'jobs'") == []  # $SAEJOBS_DB untouched


def test_create_with_a_job_id_returns_the_row_of_that_id_as_it_is(db):
    first = jobs.create("verify", {"n": 1}, job_id="child-0001")
    assert claim(first.id)
    again = jobs.create("verify", {"n": 2}, job_id="child-0001")  # a redelivered parent makes its child again
    assert (again.id, again.state, again.params) == ("child-0001", "running", {"n": 1})
    assert [tuple(r) for r in sql(db, "SELECT id, params FROM jobs")] == [("child-0001", '{"n": 1}')]
    assert [e[0] for e in event_rows(db, "child-0001")] == ["queued", "running"]


def test_each_shard_is_queued_with_its_own_event(db):
    parent = jobs.create("sweep", {}, queue="q", shards=[{"shard": [0, 1]}, {"shard": [1, 2]}])
    for shard in jobs.shards(parent.id):
        got = row(db, shard.id)
        assert (got["state"], got["progress"], got["attempts"], got["message"]) == ("queued", 0.0, 0, "queued")
        assert event_rows(db, shard.id) == [("queued", 0.0, "queued")]


def test_get_takes_the_exact_id_then_a_unique_prefix_of_four_or_more(db):
    for job_id in ("abcd", "abcdef", "xyz12345"):
        jobs.create("verify", {}, job_id=job_id)
    assert jobs.get("abcd").id == "abcd"  # exact, though "abcdef" starts with it too
    assert jobs.get("abcde").id == "abcdef"
    assert jobs.get("xyz1").id == "xyz12345"  # four characters are enough
    for short in ("xyz", "abc"):
        with pytest.raises(NotFoundError, match=f"^no job '{short}'$"):
            jobs.get(short)


def test_event_count_of_a_job_without_events_is_zero(db):
    job = jobs.create("verify", {})
    assert (jobs.event_count("no-such-job"), jobs.event_count(job.id)) == (0, 1)


def test_a_claim_records_who_runs_it_where_and_since_when(db, clock):
    job = jobs.create("verify", {})
    assert jobs.claim(job.id, worker="w1", host="h1", gpu="0")
    fields = "state, worker, host, gpu, attempts, started_at, heartbeat_at, message, deadline_at"
    got = sql(db, f"SELECT {fields} FROM jobs WHERE id = ?", job.id)
    assert [tuple(r) for r in got] == [("running", "w1", "h1", "0", 1, "2026-01-02 03:04:05.000000",
                                        "2026-01-02 03:04:05.000000", "running", None)]
    clock.now = at(1)
    jobs.report(job.id, 0.25, "a quarter", worker="w1")  # a report beats the heart too
    assert row(db, job.id)["heartbeat_at"] == "2026-01-02 03:04:06.000000"
    clock.now = at(2)
    assert jobs.requeue(job.id, "handed back: worker shutting down", worker="w1")
    assert jobs.claim(job.id, worker="w2", host="h2", gpu=None)
    got = sql(db, f"SELECT {fields} FROM jobs WHERE id = ?", job.id)
    assert [tuple(r) for r in got] == [("running", "w2", "h2", None, 2, "2026-01-02 03:04:07.000000",
                                        "2026-01-02 03:04:07.000000", "running", None)]


def test_a_worker_claims_again_the_job_whose_claim_answer_it_lost_but_not_one_it_ended(db):
    job = jobs.create("verify", {})
    assert claim(job.id, "w1")
    assert claim(job.id, "w1")  # its commit went through, its answer did not: the redelivery runs it
    assert (row(db, job.id)["state"], row(db, job.id)["attempts"]) == ("running", 2)
    assert jobs.finish(job.id, "succeeded", worker="w1")
    assert not claim(job.id, "w1")
    assert (row(db, job.id)["state"], row(db, job.id)["attempts"]) == ("succeeded", 2)


def test_a_shards_own_timeout_is_its_deadline(db, clock):
    """A shard whose params carry timeout_s keeps it (its sweep's is only for shards written without one);
    the deadline's own instant still takes reports, the next microsecond does not."""
    parent = jobs.create("sweep", {"timeout_s": 100}, queue="q", shards=[{"shard": [0, 1], "timeout_s": 5}])
    (a,) = jobs.shards(parent.id)
    assert claim(a.id)
    assert row(db, a.id)["deadline_at"] == "2026-01-02 03:04:10.000000"
    clock.now = at(5)
    jobs.report(a.id, 0.9, "nearly", worker="w1")
    assert row(db, a.id)["progress"] == 0.9
    clock.now = at(5.000001)
    with pytest.raises(jobs.DeadlineExceeded) as e:
        jobs.report(a.id, 0.95, worker="w1")
    assert str(e.value) == "deadline passed (5 s after the attempt started at 03:04:05); stopped at 90%"


def test_a_stopped_job_names_itself_to_its_reporter(db):
    """The runner tells a job's own cancellation from its parent's by the id the exception carries."""
    job = jobs.create("verify", {})
    assert claim(job.id)
    jobs.cancel(job.id)
    with pytest.raises(jobs.JobCancelled) as e:
        jobs.report(job.id, 0.5, worker="w1")
    assert e.value.args == (job.id,)


def test_heartbeat_moves_only_its_workers_running_job(db, clock):
    mine, mine_too, theirs, done = (jobs.create("verify", {}) for _ in range(4))
    assert claim(mine.id, "w1") and claim(mine_too.id, "w1") and claim(theirs.id, "w2") and claim(done.id, "w1")
    assert jobs.finish(done.id, "succeeded", worker="w1")
    clock.now = at(10)
    jobs.heartbeat(mine.id, "w1")
    jobs.heartbeat(theirs.id, "w1")  # not w1's
    jobs.heartbeat(done.id, "w1")  # w1's, but ended
    got = {r["id"]: r["heartbeat_at"] for r in sql(db, "SELECT id, heartbeat_at FROM jobs")}
    assert got == {mine.id: "2026-01-02 03:04:15.000000", mine_too.id: "2026-01-02 03:04:05.000000",
                   theirs.id: "2026-01-02 03:04:05.000000", done.id: "2026-01-02 03:04:05.000000"}


def test_a_sweep_shows_its_first_start_and_its_latest_claim(db, clock):
    """The sweep's row: started when its first shard is claimed (again when it waited again), and the
    worker, host, gpu and most attempts of its latest claim; no other running job's row changes."""
    bystander = jobs.create("verify", {})
    assert jobs.claim(bystander.id, worker="wx", host="hx", gpu="7")
    parent = jobs.create("sweep", {}, queue="q", shards=[{"shard": [0, 1]}, {"shard": [1, 2]}])
    a, b = jobs.shards(parent.id)
    fields = "state, started_at, message, worker, host, gpu, attempts"
    assert jobs.claim(a.id, worker="w1", host="h1", gpu="0")
    assert [tuple(r) for r in sql(db, f"SELECT {fields} FROM jobs WHERE id = ?", parent.id)] == [
        ("running", "2026-01-02 03:04:05.000000", "running", "w1", "h1", "0", 1)]
    clock.now = at(1)
    assert jobs.requeue(a.id, "handed back", worker="w1")  # every shard waits: the sweep is queued again
    clock.now = at(2)
    assert jobs.claim(a.id, worker="w2", host="h2", gpu="1")
    assert [tuple(r) for r in sql(db, f"SELECT {fields} FROM jobs WHERE id = ?", parent.id)] == [
        ("running", "2026-01-02 03:04:07.000000", "running", "w2", "h2", "1", 2)]
    assert jobs.finish(a.id, "succeeded", worker="w2", result={"shard_size": 1})
    clock.now = at(3)
    assert jobs.claim(b.id, worker="w3", host="h3", gpu=None)  # the sweep already runs: its start stays
    assert [tuple(r) for r in sql(db, f"SELECT {fields} FROM jobs WHERE id = ?", parent.id)] == [
        ("running", "2026-01-02 03:04:07.000000", "1/2 shards done", "w3", "h3", None, 2)]
    assert [tuple(r) for r in sql(db, "SELECT worker, host, gpu, attempts FROM jobs WHERE id = ?", bystander.id)] == [
        ("wx", "hx", "7", 1)]


def test_a_claim_leaves_a_sweep_row_that_has_ended(db):
    """A sweep left failed while a shard still waits (as older releases' reaper could leave it): the shard
    runs, and the ended row takes no claim's worker or attempts."""
    parent = jobs.create("sweep", {}, queue="q", shards=[{"shard": [0, 1]}])
    (a,) = jobs.shards(parent.id)
    write(db, "UPDATE jobs SET state = 'failed', error = 'worker lost' WHERE id = ?", parent.id)
    assert claim(a.id)
    got = row(db, parent.id)
    assert (got["state"], got["worker"], got["host"], got["attempts"]) == ("failed", None, None, 0)


def test_abandon_fails_the_job_and_its_waiting_shards_and_nothing_else(db, clock):
    sweep = jobs.create("sweep", {}, queue="q", shards=[{"shard": [0, 1]}, {"shard": [1, 2]}])
    other = jobs.create("sweep", {}, queue="q", shards=[{"shard": [0, 1]}])
    plain = jobs.create("verify", {}, queue="q")
    jobs.abandon(sweep.id, "broker unreachable")
    mine = [sweep.id] + [s.id for s in jobs.shards(sweep.id)]
    for job_id in mine:
        got = row(db, job_id)
        assert (got["state"], got["finished_at"]) == ("failed", "2026-01-02 03:04:05.000000")
        assert [e[0] for e in event_rows(db, job_id)].count("failed") == 1
    assert [s.id for s in jobs.shards(sweep.id)] == mine[1:]
    assert row(db, sweep.id)["error"] == "2 of 2 shards failed; first: broker unreachable"
    left = [other.id, jobs.shards(other.id)[0].id, plain.id]
    assert [row(db, i)["state"] for i in left] == ["queued", "queued", "queued"]


def test_cancel_ends_the_shards_first_then_the_sweep(db, clock):
    sweep = jobs.create("sweep", {}, queue="q", shards=[{"shard": [0, 1]}, {"shard": [1, 2]}])
    a, b = jobs.shards(sweep.id)
    assert claim(a.id)
    jobs.report(a.id, 0.5, "half", worker="w1")
    clock.now = at(1)
    assert jobs.cancel(sweep.id).state == "cancelled"
    for job_id, progress in ((a.id, 0.5), (b.id, 0.0), (sweep.id, 0.25)):
        got = row(db, job_id)
        assert (got["state"], got["message"], got["finished_at"]) == ("cancelled", "cancelled",
                                                                      "2026-01-02 03:04:06.000000")
        assert event_rows(db, job_id)[-1] == ("cancelled", progress, "cancelled")
    last = sql(db, "SELECT job_id FROM job_events WHERE state = 'cancelled' ORDER BY id")
    assert last[-1]["job_id"] == sweep.id  # the sweep's history ends after its shards'

    lone = jobs.create("sweep", {}, queue="q", shards=[{"shard": [0, 1]}])
    (c,) = jobs.shards(lone.id)
    clock.now = at(2)
    jobs.cancel(c.id)  # its last open shard: the sweep ends with it
    assert (row(db, lone.id)["state"], row(db, lone.id)["finished_at"]) == ("cancelled", "2026-01-02 03:04:07.000000")


def test_requeue_hands_on_only_a_heartbeat_older_than_stale_after(db, clock):
    job = jobs.create("verify", {})
    assert claim(job.id)
    clock.now = at(60)
    assert not jobs.requeue(job.id, "worker lost", stale_after=60)  # exactly 60 s: not yet
    assert row(db, job.id)["state"] == "running"
    clock.now = at(60.000001)
    assert jobs.requeue(job.id, "worker lost", stale_after=60)
    assert (row(db, job.id)["state"], row(db, job.id)["heartbeat_at"]) == ("queued", None)


def test_an_ended_job_cannot_be_handed_back(db):
    job = jobs.create("verify", {})
    assert claim(job.id) and jobs.finish(job.id, "succeeded", worker="w1")
    assert not jobs.requeue(job.id, "handed back: worker shutting down", worker="w1")
    got = row(db, job.id)
    assert (got["state"], got["error"], got["attempts"]) == ("succeeded", None, 1)


def test_stale_running_is_a_running_job_silent_longer_than_stale_after(db, clock):
    running, done = jobs.create("verify", {}), jobs.create("verify", {})
    assert claim(running.id) and claim(done.id) and jobs.finish(done.id, "succeeded", worker="w1")
    clock.now = at(60)
    assert jobs.stale_running(60) == []  # exactly 60 s: not yet
    clock.now = at(60.000001)
    assert jobs.stale_running(60) == [running.id]  # the ended job's last beat is as old, but it ended


def test_a_retried_job_says_so(db):
    job = jobs.create("verify", {})
    assert claim(job.id) and jobs.finish(job.id, "failed", worker="w1", error="boom")
    assert jobs.reset_for_retry(job.id) == [job.id]
    assert (row(db, job.id)["message"], row(db, job.id)["error"]) == ("queued (retry)", None)
    assert event_rows(db, job.id)[-1] == ("queued", 0.0, "queued (retry)")


def test_retrying_a_sweep_whose_shards_all_succeeded_ends_it_now(db, clock):
    parent = jobs.create("sweep", {}, queue="q", shards=[{"shard": [0, 1]}])
    (a,) = jobs.shards(parent.id)
    assert claim(a.id) and jobs.finish(a.id, "succeeded", worker="w1", result={"shard_size": 1})
    write(db, "UPDATE jobs SET state = 'failed' WHERE id = ?", parent.id)
    clock.now = at(9)
    assert jobs.reset_for_retry(parent.id) == []
    got = row(db, parent.id)
    assert (got["state"], got["finished_at"]) == ("succeeded", "2026-01-02 03:04:14.000000")


def test_shards_made_at_the_same_instant_are_listed_by_id(db, monkeypatch):
    monkeypatch.setattr(uuid, "uuid4", ids("dddddddd-0000-4000-8000-000000000000",
                                           "00000000-0000-4000-8000-000000000000",
                                           "eeeeeeee-0000-4000-8000-000000000000"))
    parent = jobs.create("sweep", {}, queue="q", shards=[{"shard": [0, 1]}, {"shard": [1, 2]}])
    write(db, "UPDATE jobs SET created_at = '2026-01-02 03:04:05.000000' WHERE parent_id = ?", parent.id)
    assert [s.id[0] for s in jobs.shards(parent.id)] == ["0", "d"]


def test_listing_is_newest_first_filtered_and_limited(db):
    for job_id, kind, state, made in (("old", "verify", "failed", "2026-01-01 00:00:03.000000"),
                                      ("new", "download", "queued", "2026-01-01 00:00:05.000000"),
                                      ("mid", "verify", "queued", "2026-01-01 00:00:04.000000")):
        jobs.create(kind, {}, job_id=job_id)
        write(db, "UPDATE jobs SET state = ?, created_at = ? WHERE id = ?", state, made, job_id)
    assert [j.id for j in jobs.listing()] == ["new", "mid", "old"]
    assert [j.id for j in jobs.listing(limit=1)] == ["new"]
    assert [j.id for j in jobs.listing(state="queued")] == ["new", "mid"]
    assert [j.id for j in jobs.listing(kind="verify")] == ["mid", "old"]
    with closing(sqlite3.connect(db)) as c:  # 48 more, older: 51 in all
        c.executemany("INSERT INTO jobs (id, kind, state, params, progress, attempts, created_at) "
                      "VALUES (?, 'verify', 'queued', '{}', 0.0, 0, '2025-01-01 00:00:00.000000')",
                      [(f"bulk-{i}",) for i in range(48)])
        c.commit()
    assert len(jobs.listing()) == 50


def test_waiting_since_is_each_queued_job_sent_to_a_queue_whose_latest_event_is_older(db, clock):
    """(id, queue) of jobs waiting in a queue since before ``seconds`` ago, judged by each job's latest event."""
    old, edge, moved, running = (jobs.create("verify", {}, queue="q", job_id=i)
                                 for i in ("old", "edge", "moved", "running"))
    sweep = jobs.create("sweep", {}, queue="q2", shards=[{"shard": [0, 1]}])
    (shard,) = jobs.shards(sweep.id)
    assert claim(running.id) and claim(moved.id) and jobs.requeue(moved.id, "handed back", worker="w1")
    write(db, "UPDATE job_events SET at = '2026-01-02 03:03:00.000000'")  # all long ago, then:
    write(db, "UPDATE job_events SET at = '2026-01-02 03:03:35.000000' WHERE job_id = 'edge'")  # 30 s exactly
    write(db, "UPDATE job_events SET at = '2026-01-02 03:04:00.000000' WHERE id = "
              "(SELECT max(id) FROM job_events WHERE job_id = 'moved')")  # handed back 5 s ago
    assert sorted(jobs.waiting_since(30)) == sorted([("old", "q"), (shard.id, "q2")])


def test_heartbeat_and_waiting_since_read_the_databases_own_clock(db_url):
    """Unpinned, on each kind of database: a beat is stamped by the server's clock, and a job waits since its
    latest event only (a job with several events: PostgreSQL refuses a subquery of more than one row)."""
    from sqlalchemy import text

    job = jobs.create("verify", {}, queue="q")
    moved = jobs.create("verify", {}, queue="q")
    assert claim(job.id) and claim(moved.id) and jobs.requeue(moved.id, "handed back", worker="w1")
    with session() as s:
        s.execute(text("UPDATE jobs SET heartbeat_at = '2000-01-01 00:00:00' WHERE id = :i"), {"i": job.id})
        s.execute(text("UPDATE job_events SET at = '2000-01-01 00:00:00' WHERE job_id = :i"), {"i": moved.id})
    jobs.heartbeat(job.id, "w1")
    with session() as s:
        beat, server_now = s.execute(text("SELECT heartbeat_at, CURRENT_TIMESTAMP FROM jobs WHERE id = :i"),
                                     {"i": job.id}).one()
    assert str(beat)[:4] == str(server_now)[:4] != "2000"  # this year's beat, by the server
    assert jobs.waiting_since(60) == [(moved.id, "q")]
