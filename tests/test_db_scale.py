"""The database at scale (issue 26, items 11-12): reads that take no write lock, a job read without its
history, events paged and coalesced, old history pruned, parent progress from one aggregate query.
Expected values come from plain SQL, not from the functions under test."""

from __future__ import annotations

import json
import sqlite3
import time
from datetime import timedelta

import pytest
from sqlalchemy import event, text

from saejobs.db import jobs, session as db_session
from saejobs.db.session import get_engine
from saejobs.engine.errors import SaejobsError
from tests.dbfixtures import db_url, home  # noqa: F401
from tests.test_queue import one_clean_line, saejobs


def claim(job_id, worker="w1"):
    return jobs.claim(job_id, worker=worker, host="h", gpu=None)


def sql(query: str, **params):
    """Rows of a plain SQL query, outside the product's functions."""
    with get_engine().connect() as c:
        return c.execute(text(query), params).all()


def add_events(job_id: str, n: int, state: str = "running") -> None:
    with get_engine().begin() as c:
        c.execute(text("INSERT INTO job_events (job_id, at, state, progress, message) "
                       "VALUES (:j, CURRENT_TIMESTAMP, :s, :p, :m)"),
                  [{"j": job_id, "s": state, "p": i / n, "m": f"step {i}"} for i in range(n)])


class Statements:
    """The SQL one engine runs while the block is open."""

    def __enter__(self):
        self.seen: list[str] = []
        event.listen(get_engine(), "before_cursor_execute", self._add)
        return self.seen

    def _add(self, conn, cursor, statement, *args):
        self.seen.append(statement)

    def __exit__(self, *exc):
        event.remove(get_engine(), "before_cursor_execute", self._add)


def test_reads_take_no_write_lock(home, monkeypatch):
    """SQLite only: the write lock is SQLite's (PostgreSQL's reads never took one)."""
    db_url = f"sqlite:///{home / 'saejobs.db'}"
    monkeypatch.setenv("SAEJOBS_DB", db_url)
    job = jobs.create("verify", {"sae": "x"}, sae_id="x", queue="saejobs")
    assert claim(job.id)
    monkeypatch.setattr(db_session, "BUSY_TIMEOUT_MS", 200)
    monkeypatch.setenv("SAEJOBS_DB_RETRY_S", "0.3")
    db_session.dispose_all()
    writer = sqlite3.connect(db_url.removeprefix("sqlite:///"), isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # another process mid-write holds the lock
    try:
        t0 = time.monotonic()
        assert jobs.get(job.id).state == "running"
        assert [e.state for e in jobs.events(job.id)] == ["queued", "running"]
        assert [j.id for j in jobs.listing()] == [job.id]
        assert jobs.stale_running(3600) == []
        assert time.monotonic() - t0 < 0.2  # none waited for the lock
        with pytest.raises(SaejobsError, match="unavailable"):  # while a write does wait: the lock is real
            jobs.heartbeat(job.id, "w1")
    finally:
        writer.rollback()
        writer.close()


def test_a_job_is_read_without_its_events_and_they_come_in_pages(db_url):
    job = jobs.create("verify", {"sae": "x"}, sae_id="x", queue="saejobs")
    assert claim(job.id)
    add_events(job.id, 2_000)
    with Statements() as seen:
        got = jobs.get(job.id[:8])
    assert got.id == job.id and seen and not [q for q in seen if "job_events" in q]
    want = [r.id for r in sql("SELECT id FROM job_events WHERE job_id = :j ORDER BY id", j=job.id)]
    pages, before = [], None
    while page := jobs.events(job.id, limit=300, before=before):
        assert len(page) <= 300 and [e.id for e in page] == sorted(e.id for e in page)
        pages[:0] = [e.id for e in page]
        before = page[0].id
    assert pages == want and jobs.event_count(job.id) == len(want) == 2_002
    assert [e.id for e in jobs.events(job.id, limit=5)] == want[-5:]


def test_progress_reports_are_coalesced_into_few_events(db_url, monkeypatch):
    job = jobs.create("verify", {"sae": "x"}, sae_id="x", queue="saejobs")
    assert claim(job.id)
    for i in range(1, 401):
        jobs.report(job.id, i / 400, f"{i}/400", worker="w1")
    assert jobs.get(job.id).message == "400/400"  # the job's row has every report
    (n,) = sql("SELECT count(*) FROM job_events WHERE job_id = :j AND state = 'running'", j=job.id)[0]
    assert 10 <= n <= 2 + 1 / jobs.EVENT_STEP  # the claim, then about one per 5% of progress (was: 401)
    jobs.report(job.id, 1.0, "stored", worker="w1", milestone=True)  # a milestone is always recorded
    assert jobs.events(job.id, limit=1)[0].message == "stored"
    monkeypatch.setenv("SAEJOBS_EVENT_EVERY_S", "0")  # as old as the interval: recorded
    jobs.report(job.id, 1.0, "later", worker="w1")
    assert jobs.events(job.id, limit=1)[0].message == "later"


def test_db_prune_deletes_old_history_of_ended_jobs_only(db_url):
    old, recent, running = (jobs.create("verify", {"sae": "x"}, sae_id="x", queue="saejobs") for _ in range(3))
    for j in (old, recent, running):
        assert claim(j.id)
        add_events(j.id, 50)
    for j in (old, recent):
        assert jobs.finish(j.id, "succeeded", worker="w1", result={})
    with get_engine().begin() as c:  # ended 40 days ago (the default retention is 30 days)
        c.execute(text("UPDATE jobs SET finished_at = :t WHERE id = :j"),
                  {"t": jobs.get(old.id).finished_at.replace(tzinfo=None) - timedelta(days=40), "j": old.id})
    count = "SELECT count(*) FROM job_events WHERE job_id = :j"
    before = {j.id: sql(count, j=j.id)[0][0] for j in (old, recent, running)}
    dry = json.loads(saejobs("db", "prune", "--dry-run", "--json").stdout)
    assert dry["events"] == before[old.id] - 1 and dry["dry_run"] is True
    assert {j: sql(count, j=j)[0][0] for j in before} == before  # nothing deleted
    res = saejobs("db", "prune")
    assert res.returncode == 0 and f"deleted {before[old.id] - 1} events" in res.stdout
    left = sql("SELECT state FROM job_events WHERE job_id = :j", j=old.id)
    assert [r.state for r in left] == ["succeeded"]  # the final event stays
    assert sql(count, j=recent.id)[0][0] == before[recent.id] and sql(count, j=running.id)[0][0] == before[running.id]
    assert json.loads(saejobs("db", "prune", "--older-than", "0s", "--json").stdout)["events"] == before[recent.id] - 1
    for bad in ("soon", "-3d", "5y"):
        assert "--older-than" in one_clean_line(saejobs("db", "prune", "--older-than", bad), 2)
