"""The job state machine and result storage, on SQLite and PostgreSQL."""

from __future__ import annotations

import multiprocessing as mp

import pytest
from sqlalchemy import func, select

from db import jobs, results
from db.jobs import JobCancelled
from db.models import Generation, Job, JobEvent
from db.session import session
from engine.errors import NotFoundError, UsageError
from tests.dbfixtures import db_url, home  # noqa: F401


def claim(job_id, worker="w1", stale_after=30.0):
    return jobs.claim(job_id, worker=worker, host="h", gpu=None, stale_after=stale_after)


def test_lifecycle_records_progress_events_and_result(db_url):
    job = jobs.create("verify", {"sae": "x"}, sae_id="x", queue="saejobs")
    assert jobs.get(job.id).state == "queued"
    assert claim(job.id)
    jobs.report(job.id, 0.5, "half", worker="w1")
    assert jobs.finish(job.id, "succeeded", worker="w1", result={"verdict": "PASS"})
    got = jobs.get(job.id[:8])  # a prefix finds it
    assert (got.state, got.progress, got.attempts, got.result) == ("succeeded", 1.0, 1, {"verdict": "PASS"})
    assert got.started_at <= got.finished_at
    assert [e.state for e in got.events] == ["queued", "running", "running", "succeeded"]
    assert got.events[2].message == "half"


def test_a_redelivered_job_is_claimed_once(db_url):
    job = jobs.create("verify", {})
    assert claim(job.id, "w1")
    assert not claim(job.id, "w2")  # second delivery while w1 is alive
    jobs.finish(job.id, "succeeded", worker="w1")
    assert not claim(job.id, "w2")  # and after it finished


def test_a_dead_workers_job_is_handed_on_and_the_old_worker_stops(db_url):
    job = jobs.create("sweep", {})
    assert claim(job.id, "w1")
    assert job.id not in jobs.stale_running(60)
    _age_heartbeat(job.id, 120)
    assert job.id in jobs.stale_running(60)
    assert job.id in jobs.stale_running(60, alive="w2")
    assert job.id not in jobs.stale_running(60, alive="w1")  # a worker never reaps its own job: it is alive
    assert jobs.requeue(job.id, "worker lost", stale_after=60)
    assert not jobs.requeue(job.id, "second reaper", stale_after=60)
    assert claim(job.id, "w2")
    with pytest.raises(JobCancelled):
        jobs.report(job.id, 0.9, worker="w1")  # w1 comes back from a pause: it no longer owns the job
    assert not jobs.finish(job.id, "succeeded", worker="w1")
    assert jobs.finish(job.id, "succeeded", worker="w2")
    assert jobs.get(job.id).attempts == 2


def _age_heartbeat(job_id, seconds):
    from datetime import timedelta

    from db.models import utcnow

    with session() as s:
        s.get(Job, job_id).heartbeat_at = utcnow() - timedelta(seconds=seconds)


def test_cancel_stops_a_running_job_at_its_next_report(db_url):
    job = jobs.create("sweep", {})
    claim(job.id)
    assert jobs.cancel(job.id[:6]).state == "cancelled"
    with pytest.raises(JobCancelled):
        jobs.report(job.id, 0.3, worker="w1")
    assert not jobs.finish(job.id, "succeeded", worker="w1")
    assert jobs.get(job.id).state == "cancelled"
    with pytest.raises(UsageError, match="only queued or running"):
        jobs.cancel(job.id)


def test_retry_only_failed_or_cancelled(db_url):
    job = jobs.create("download", {})
    claim(job.id)
    jobs.finish(job.id, "failed", worker="w1", error="boom")
    again = jobs.reset_for_retry(job.id)
    assert (again.state, again.error) == ("queued", None)
    assert claim(again.id, "w2")
    jobs.finish(job.id, "succeeded", worker="w2")
    with pytest.raises(UsageError, match="only failed or cancelled"):
        jobs.reset_for_retry(job.id)


def test_unknown_job_is_a_clear_error(db_url):
    with pytest.raises(NotFoundError, match="no job 'nope'"):
        jobs.get("nope")


def test_abandon_fails_a_job_that_never_reached_the_broker(db_url):
    job = jobs.create("verify", {})
    jobs.abandon(job.id, "broker unreachable at redis://127.0.0.1:1/0")
    got = jobs.get(job.id)
    assert got.state == "failed" and "broker unreachable" in got.error


def test_generations_are_keyed_so_a_rerun_never_duplicates(db_url):
    job = jobs.create("sweep", {})
    sid = results.ensure_sweep(job.id, "sae", "model", {"a": 1}, {"p": 1})
    assert results.ensure_sweep(job.id, "sae", "model", {"a": 1}, {"p": 2}) == sid
    row = {"type": "STEERED", "features": [{"index": 1, "strength": 2.0}], "prompt": "p", "prompt_token_ids": [2, 3],
           "seed": 42, "sampling": {}, "output": "p x", "token_ids": [4], "logprobs": None}
    assert results.add_generations(sid, [{**row, "config_key": "k1"}, {**row, "config_key": "k2"}]) == 2
    assert results.add_generations(sid, [{**row, "config_key": "k2"}, {**row, "config_key": "k3"}]) == 1
    assert results.config_keys(sid) == {"k1", "k2", "k3"}
    with session() as s:
        assert s.scalar(select(func.count()).select_from(Generation)) == 3


def _hammer(url: str, n: int, out) -> None:
    """Another process: create, claim, report and finish ``n`` jobs as fast as it can."""
    import os

    os.environ["SAEJOBS_DB"] = url
    from db import jobs as j

    try:
        for i in range(n):
            job = j.create("verify", {"i": i})
            assert j.claim(job.id, worker=f"p{os.getpid()}", host="h", gpu=None, stale_after=30)
            for k in range(3):
                j.report(job.id, k / 3, f"step {k}", worker=f"p{os.getpid()}")
            assert j.finish(job.id, "succeeded", worker=f"p{os.getpid()}")
        out.put("ok")
    except Exception as e:  # reported to the parent, which fails the test with it
        out.put(f"{type(e).__name__}: {e}")


def test_several_processes_write_at_once_without_lock_errors(db_url):
    jobs.listing()  # create the schema before the writers start
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_hammer, args=(db_url, 25, out)) for _ in range(4)]
    for p in procs:
        p.start()
    answers = [out.get(timeout=240) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    assert answers == ["ok"] * 4, answers
    with session() as s:
        assert s.scalar(select(func.count()).where(Job.state == "succeeded")) == 100
        assert s.scalar(select(func.count()).select_from(JobEvent)) == 100 * 6


def test_models_and_migrations_agree(db_url):
    """Autogenerate against the migrated database finds nothing: the migration is the models."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from db.models import Base
    from db.session import get_engine

    with get_engine().connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_the_schema_revision_a_process_checks_is_alembics_head(db_url):
    """The fast path's constant cannot drift from the migrations: a new migration must update it."""
    from db import migrate
    from db.session import get_engine

    assert migrate.SCHEMA_REVISION == migrate.head()
    assert migrate.is_current(get_engine()) and migrate.current(get_engine()) == migrate.SCHEMA_REVISION
