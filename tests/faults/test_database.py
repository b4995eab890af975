"""The database locked for longer than SQLite's busy timeout, and a PostgreSQL server crashing and
coming back, while a worker writes a sweep: the job rides it out (every ``db`` call is one
transaction, retried), no row is half-written or doubled, and the CLI says what is wrong in one line.
"""

from __future__ import annotations

import sqlite3
import threading
import time

import pytest

from saejobs.db import jobs
from tests.dbfixtures import home  # noqa: F401
from tests.faults.servers import PostgresServer
from tests.faults.sweeps import N_CONFIGS, account, outputs, sqlite_db, stored, sweep_args  # noqa: F401
from tests.queue_harness import broker, start_worker, wait_for  # noqa: F401
from tests.test_queue import one_clean_line, saejobs, submitted

pytestmark = pytest.mark.model
SHORT = {"SAEJOBS_SQLITE_BUSY_MS": "200", "SAEJOBS_DB_RETRY_S": "1"}  # a CLI that gives up fast


def hold_write_lock(path: str, held: threading.Event, release: threading.Event, more: int, seconds: float) -> None:
    """Another connection's long write transactions, as a careless script or a backup tool holds them:
    the first until ``release`` is set, then ``more`` of ``seconds`` each."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=60)
    for i in range(1 + more):
        conn.execute("BEGIN EXCLUSIVE")
        held.set()
        release.wait() if i == 0 else time.sleep(seconds)
        conn.execute("COMMIT")
        time.sleep(0.3)
    conn.close()


def test_sqlite_locked_beyond_the_busy_timeout(home, sqlite_db, start_worker, tiny_gemma2_dir, ledger):
    args = sweep_args(home, tiny_gemma2_dir, n_tokens=24, batch_size=2)
    worker = start_worker(env={"SAEJOBS_SQLITE_BUSY_MS": "200"})
    job = submitted(saejobs(*args))
    wait_for(lambda: stored(job["id"]) > 0, 120, "the sweep's first rows")
    held, release = threading.Event(), threading.Event()
    locker = threading.Thread(target=hold_write_lock, args=(sqlite_db.removeprefix("sqlite:///"), held, release, 2, 3.0))
    locker.start()
    held.wait(10)
    t0 = time.monotonic()
    refused = saejobs(*args, env=SHORT)  # the CLI meanwhile: gives up after its budget, stores nothing
    time.sleep(max(0.0, 3 - (time.monotonic() - t0)))
    release.set()
    line = one_clean_line(refused, 4)
    assert "unavailable: database is locked" in line, line
    locker.join()
    done = wait_for(lambda: (j := jobs.get(job["id"])).state in ("succeeded", "failed") and j, 180, "the sweep")
    assert done.state == "succeeded" and done.attempts == 1, done.error
    assert "database unavailable (database is locked); retrying" in worker.text()  # the lock did bite
    assert stored(job["id"]) == len(outputs(job["id"])) == N_CONFIGS
    assert [j.id for j in jobs.listing(kind="sweep")] == [job["id"]]  # the refused submission left no row
    ledger.add("database_outages", 3)
    account(ledger, job["id"])


@pytest.fixture
def postgres(monkeypatch):
    try:
        server = PostgresServer().start()
    except (RuntimeError, OSError) as e:
        pytest.skip(f"no private PostgreSQL cluster: {e}")
    url = server.url.replace("postgres@", "postgres:pgPassw0rdNeverPrinted@")  # trust auth: any password works
    monkeypatch.setenv("SAEJOBS_DB", url)
    yield server
    server.close()


def test_postgres_crash_and_restart_mid_sweep(home, postgres, start_worker, tiny_gemma2_dir, ledger):
    args = sweep_args(home, tiny_gemma2_dir, n_tokens=40, batch_size=1)
    worker = start_worker()
    job = submitted(saejobs(*args))
    wait_for(lambda: stored(job["id"]) >= 4, 120, "the sweep's first rows")
    postgres.crash()  # immediate: connections cut, no checkpoint, as on a lost host
    t0 = time.monotonic()
    down = saejobs("jobs", "list", env=SHORT)
    line = one_clean_line(down, 4)
    assert "database 'postgresql+psycopg://postgres:***@127.0.0.1" in line and "unavailable" in line, line
    assert "pgPassw0rdNeverPrinted" not in down.stderr + down.stdout
    time.sleep(max(0.0, 4 - (time.monotonic() - t0)))
    postgres.start()
    ledger.figure("postgres_down", time.monotonic() - t0)
    done = wait_for(lambda: (j := jobs.get(job["id"])).state in ("succeeded", "failed") and j, 180, "the sweep")
    assert done.state == "succeeded" and done.attempts == 1, done.error
    assert "database unavailable" in worker.text()  # the outage was felt, and waited out
    assert "pgPassw0rdNeverPrinted" not in worker.text()
    assert stored(job["id"]) == len(outputs(job["id"])) == N_CONFIGS
    ledger.add("database_outages")
    account(ledger, job["id"])
