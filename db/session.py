"""Database engines and sessions for any SQLAlchemy URL (SQLite by default, PostgreSQL for clusters).

SQLite is set up for several worker processes writing at once: WAL journal, a busy timeout, and
``BEGIN IMMEDIATE`` so a transaction takes the write lock up front instead of failing with
"database is locked" when it upgrades from reading to writing.
"""

from __future__ import annotations

import fcntl
import functools
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from engine import paths
from engine.errors import SaejobsError, UsageError

BUSY_TIMEOUT_MS = 30_000


class DatabaseError(SaejobsError):
    exit_code = 4


def database_url() -> str:
    """``$SAEJOBS_DB`` (any SQLAlchemy URL or a file path), default ``$SAEJOBS_HOME/saejobs.db``."""
    url = os.environ.get("SAEJOBS_DB") or str(paths.home() / "saejobs.db")
    if "://" not in url:
        url = f"sqlite:///{Path(url).expanduser().resolve()}"
    return url


def redact(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable URL>"


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
    _upgrade_once(eng)
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
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def _upgrade_once(eng: Engine) -> None:
    """Bring a new or old database to the current schema, once per process, under a lock."""
    from db.migrate import upgrade

    try:
        with _schema_lock(eng):
            upgrade(eng)
    except OperationalError as e:
        raise DatabaseError(f"database '{redact(str(eng.url))}' unavailable: {str(e.orig).strip().splitlines()[0]}") from None


@contextmanager
def _schema_lock(eng: Engine) -> Iterator[None]:
    """Two workers starting at once must not both create tables."""
    if eng.dialect.name == "sqlite" and eng.url.database not in (None, "", ":memory:"):
        with open(f"{eng.url.database}.lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            yield
    elif eng.dialect.name == "postgresql":
        with eng.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(727274)"))
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(727274)"))
                conn.commit()
    else:
        yield


@functools.cache
def _sessionmaker(url: str) -> sessionmaker[Session]:
    return sessionmaker(get_engine(url), expire_on_commit=False)


@contextmanager
def session(url: str | None = None) -> Iterator[Session]:
    """A transaction: committed when the block ends, rolled back (nothing half-written) on error."""
    with _sessionmaker(url or database_url()).begin() as s:
        yield s
