"""Database engines and sessions for any SQLAlchemy URL (SQLite by default, PostgreSQL for clusters).

SQLite is set up for several worker processes writing at once: WAL journal, a busy timeout, and
``BEGIN IMMEDIATE`` so a writing transaction takes the write lock up front instead of failing with
"database is locked" when it upgrades from reading to writing. A ``read_session`` begins deferred
(plain ``BEGIN``): under WAL it reads a snapshot without the write lock, so a watcher polling a job
never queues behind (or in front of) a worker's heartbeat. Beyond that, every function of the
``db`` package is one transaction wrapped in ``retried``: a database locked for longer than the busy
timeout, or a PostgreSQL server restarting, is waited out (workers: 120 s, the CLI: 5 s), then one
clear error. Re-running is safe because each transaction is all-or-nothing and its writes are
guarded (conditional updates, unique keys).
"""

from __future__ import annotations

import functools
import logging
import os
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from saejobs.db import migrate
from saejobs.db.errors import DatabaseError, SchemaMismatch, redact  # also imported from here by callers
from saejobs.engine import paths
from saejobs.engine.errors import UsageError

log = logging.getLogger("saejobs.db")
BUSY_TIMEOUT_MS = int(os.environ.get("SAEJOBS_SQLITE_BUSY_MS", 30_000))
RETRY_S = {"cli": 5.0, "worker": 120.0}
_role = "cli"


def set_role(role: str) -> None:
    """``worker`` waits out long outages (a job should survive a database restart); the CLI answers fast."""
    global _role
    _role = role


def retry_budget() -> float:
    return float(os.environ.get("SAEJOBS_DB_RETRY_S") or RETRY_S[_role])


def outage(e: DBAPIError) -> bool:
    """A locked or unreachable database (worth waiting for), not a wrong statement or a broken constraint."""
    if e.connection_invalidated:
        return True
    if not isinstance(e, OperationalError):
        return False
    if type(e.orig).__module__.startswith("sqlite3"):
        msg = str(e.orig).lower()
        return "locked" in msg or "busy" in msg
    return True  # psycopg's OperationalError: refused, terminated, shutting down, starting up


def retried(fn):
    """Run one transaction again while the database is out, up to the budget; then a DatabaseError."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        deadline, delay = time.monotonic() + retry_budget(), 0.05
        while True:
            try:
                return fn(*args, **kwargs)
            except DBAPIError as e:
                if not outage(e):
                    raise
                reason = str(e.orig).strip().splitlines()[0] if str(e.orig).strip() else type(e.orig).__name__
                if time.monotonic() + delay > deadline:
                    url = kwargs.get("url") or database_url()
                    raise DatabaseError(f"database '{redact(url)}' unavailable: {reason}") from None
                log.log(logging.WARNING if _role == "worker" else logging.DEBUG,  # the CLI's stderr stays one line
                        "%s: database unavailable (%s); retrying in %.2fs", fn.__qualname__, reason, delay)
                time.sleep(delay)
                delay = min(2 * delay, 2.0)
    return wrapper


def database_url() -> str:
    """``$SAEJOBS_DB`` (any SQLAlchemy URL or a file path), default ``$SAEJOBS_HOME/saejobs.db``."""
    url = os.environ.get("SAEJOBS_DB") or str(paths.home() / "saejobs.db")
    if "://" not in url:
        url = f"sqlite:///{Path(url).expanduser().resolve()}"
    return url


def get_engine(url: str | None = None) -> Engine:
    """The process's engine for ``url`` (default: ``database_url()`` as the environment says now)."""
    return _engine(url or database_url())


def dispose_all() -> None:
    """Close every pooled connection and forget the engines (tests, forked processes)."""
    for eng in list(_ENGINES):
        eng.dispose()
    _ENGINES.clear()
    _engine.cache_clear()
    _sessionmaker.cache_clear()
    _read_sessionmaker.cache_clear()


_ENGINES: list[Engine] = []


@functools.cache
def _engine(url: str) -> Engine:
    try:
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            eng = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})
            _tune_sqlite(eng)
        else:
            eng = create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": 5} if parsed.get_backend_name() == "postgresql" else {})
    except (ArgumentError, NoSuchModuleError, ValueError) as e:
        raise UsageError(f"bad database URL '{redact(url)}': {e}") from None
    _ENGINES.append(eng)
    return eng


def _tune_sqlite(eng: Engine) -> None:
    @event.listens_for(eng, "connect")
    def _connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None  # let the "begin" hook below issue BEGIN itself
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA journal_mode = WAL")
        cur.execute("PRAGMA synchronous = NORMAL")
        cur.execute("PRAGMA foreign_keys = ON")
        cur.close()

    @event.listens_for(eng, "begin")
    def _begin(conn):
        conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get(READ_ONLY) else "BEGIN IMMEDIATE")


def check_schema(url: str | None = None) -> None:
    """For a starting worker: SchemaMismatch now, rather than on its first job."""
    migrate.check(get_engine(url))


def schema_unchanged(s: Session) -> None:
    """For a running worker, at each beat: its sessions were made once, when the schema matched; a migration
    since (``db upgrade --force`` under it) raises SchemaMismatch here, before the beat writes anything."""
    try:
        found = migrate.revision_in(s.connection())
    except DBAPIError as e:
        if outage(e):
            raise
        found = None  # no alembic_version any more: not this worker's schema either
    if found != migrate.SCHEMA_REVISION:
        raise SchemaMismatch(f"database '{redact(str(s.bind.url))}' is now at schema {found}, not the "
                             f"{migrate.SCHEMA_REVISION} this worker started with (migrated under it)")


def db_now(s: Session) -> datetime:
    """The database server's clock (UTC): every heartbeat written and every staleness judged by one
    clock, so hosts whose clocks disagree never take each other's healthy jobs."""
    if s.bind.dialect.name == "sqlite":
        raw = s.execute(text("SELECT strftime('%Y-%m-%d %H:%M:%f', 'now')")).scalar()
        return datetime.fromisoformat(raw).replace(tzinfo=timezone.utc)
    return s.execute(text("SELECT CURRENT_TIMESTAMP")).scalar().astimezone(timezone.utc)


@functools.cache
def _sessionmaker(url: str) -> sessionmaker[Session]:
    """Made once the schema is known to match: an unreachable database raises here (and is retried), so
    a process started before its database checks again on the next transaction."""
    eng = get_engine(url)
    migrate.check(eng)
    return sessionmaker(eng, expire_on_commit=False)


@contextmanager
def session(url: str | None = None) -> Iterator[Session]:
    """A transaction: committed when the block ends, rolled back (nothing half-written) on error."""
    with _sessionmaker(url or database_url()).begin() as s:
        yield s


READ_ONLY = "saejobs_read_only"  # the execution option a read session's connections carry


@functools.cache
def _read_sessionmaker(url: str) -> sessionmaker[Session]:
    eng = get_engine(url).execution_options(**{READ_ONLY: True})
    if not migrate.is_current(eng):  # a current schema is seen without the write lock; else as writers do
        _sessionmaker(url)
    return sessionmaker(eng, expire_on_commit=False)


@contextmanager
def read_session(url: str | None = None) -> Iterator[Session]:
    """A transaction that only reads: on SQLite a deferred ``BEGIN`` (no write lock; WAL gives it a
    snapshot), elsewhere an ordinary one. Writes in it are a bug (SQLite would take the lock late)."""
    with _read_sessionmaker(url or database_url()).begin() as s:
        yield s
