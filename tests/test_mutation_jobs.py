"""The job state machine's details that the broader tests in test_db.py leave open (issue 25 item 4: the
mutation check of db/jobs.py). Each test is one SQLite file, direct calls to ``db.jobs``, and expected values
read back with plain ``sqlite3`` or worked out by hand; a clock is pinned where a boundary is tested."""

from __future__ import annotations

import json
import sqlite3
import uuid
from contextlib import closing
from datetime import datetime, timezone

import pytest

from saejobs.db import jobs
from saejobs.db.session import dispose_all, session
from tests.dbfixtures import home  # noqa: F401


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


def test_create_writes_to_the_database_it_is_named(db, tmp_path):
    other = tmp_path / "other.db"
    job = jobs.create("verify", {}, url=f"sqlite:///{other}")
    assert [r["id"] for r in sql(other, "SELECT id FROM jobs")] == [job.id]
    assert sql(db, "SELECT name FROM sqlite_master WHERE name = 'jobs'") == []  # $SAEJOBS_DB untouched


def test_an_attempts_limit_of_one_fails_a_handed_back_job(db, monkeypatch):
    monkeypatch.setenv("SAEJOBS_MAX_ATTEMPTS", "1")
    job = jobs.create("verify", {})
    assert claim(job.id)
    assert not jobs.requeue(job.id, "worker lost", worker="w1")
    got = row(db, job.id)
    assert (got["state"], got["error"]) == ("failed", "gave up after 1 attempts; last: worker lost")
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
