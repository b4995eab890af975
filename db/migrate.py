"""Alembic, driven from code: the migrations ship inside the package, no alembic.ini needed.

What the schema is and who may change it: the revision this code runs, the check every process makes
before its first transaction (``check``), and the lock one migrator holds (``schema_lock``). It imports
nothing of ``session``: the session calls ``check``, never the other way round.
"""

from __future__ import annotations

import fcntl
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import OperationalError, ProgrammingError

from saejobs.db.errors import DatabaseError, SchemaMismatch, redact

MIGRATIONS = Path(__file__).parent / "migrations"
# The newest migration's revision, so a process can see that its database is current with one query and
# without loading Alembic (about 150 ms of every CLI call); tests/test_db.py checks it is Alembic's head.
SCHEMA_REVISION = "0005"
LOCK_TIMEOUT_S = float(os.environ.get("SAEJOBS_MIGRATION_LOCK_S", 60))


def revision_in(conn: Connection) -> str | None:
    """The revision stamped in the database, read on ``conn`` (errors, e.g. no such table, propagate)."""
    return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


def is_current(eng: Engine) -> bool:
    """The database is at ``SCHEMA_REVISION`` (False as well when it is new, or unreachable: the caller's
    upgrade then says what is wrong)."""
    try:
        with eng.connect() as conn:
            return revision_in(conn) == SCHEMA_REVISION
    except (OperationalError, ProgrammingError):
        return False


def stamped(eng: Engine) -> str | None:
    """The database's revision; None for a database without saejobs' tables yet."""
    with eng.connect() as conn:
        try:
            return revision_in(conn)
        except (OperationalError, ProgrammingError):  # no such table: a new database
            return None


def known(revision: str) -> bool:
    """A revision this code has a migration for (else the database was migrated by a newer saejobs)."""
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    try:
        return ScriptDirectory.from_config(config()).get_revision(revision) is not None
    except CommandError:
        return False


def check(eng: Engine) -> None:
    """A current database passes with one query. A new, empty one is created (nobody can be using it);
    one older or newer than this code is refused with one line that says what to run."""
    if is_current(eng):
        return
    with eng.connect():  # unreachable: an outage (``retried`` waits it out), not a schema problem
        pass
    found = stamped(eng)
    if found is None:
        with schema_lock(eng):
            if stamped(eng) is None:
                upgrade(eng)
        return
    if found == SCHEMA_REVISION:
        return
    where = redact(str(eng.url))
    if known(found):
        raise SchemaMismatch(f"database '{where}' has schema {found}, older than this saejobs' {SCHEMA_REVISION}: "
                             "stop its workers and run `saejobs db upgrade`")
    raise SchemaMismatch(f"database '{where}' has schema {found}, newer than this saejobs ({SCHEMA_REVISION}): "
                         "upgrade saejobs on this host")


@contextmanager
def schema_lock(eng: Engine, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """One migrator at a time; on PostgreSQL an advisory lock tried until ``timeout``, then one line
    (a migration never waits forever behind a session that holds a lock)."""
    if eng.dialect.name == "sqlite" and eng.url.database not in (None, "", ":memory:"):
        with open(f"{eng.url.database}.lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            yield
    elif eng.dialect.name == "postgresql":
        with eng.connect() as conn:
            deadline = time.monotonic() + timeout
            while not conn.execute(text("SELECT pg_try_advisory_lock(727274)")).scalar():
                if time.monotonic() > deadline:
                    raise DatabaseError(f"another process has held the schema lock for {timeout:.0f} s; "
                                        "is a migration still running?")
                time.sleep(0.2)
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(727274)"))
                conn.commit()
    else:
        yield


def config(eng: Engine | None = None):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if eng is not None:
        cfg.attributes["engine"] = eng
    return cfg


def current(eng: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with eng.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(config()).get_current_head()


def upgrade(eng: Engine, revision: str = "head") -> bool:
    """Upgrade to ``revision``; False when already there (the common, cheap case)."""
    from alembic import command

    if revision == "head" and current(eng) == head():
        return False
    command.upgrade(config(eng), revision)
    return True

