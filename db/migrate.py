"""Alembic, driven from code: the migrations ship inside the package, no alembic.ini needed."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError, ProgrammingError

MIGRATIONS = Path(__file__).parent / "migrations"
# The newest migration's revision, so a process can see that its database is current with one query and
# without loading Alembic (about 150 ms of every CLI call); tests/test_db.py checks it is Alembic's head.
SCHEMA_REVISION = "0002"


def is_current(eng: Engine) -> bool:
    """The database is at ``SCHEMA_REVISION`` (False as well when it is new, or unreachable: the caller's
    upgrade then says what is wrong)."""
    try:
        with eng.connect() as conn:
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == SCHEMA_REVISION
    except (OperationalError, ProgrammingError):
        return False


def stamped(eng: Engine) -> str | None:
    """The database's revision; None for a database without saejobs' tables yet."""
    with eng.connect() as conn:
        try:
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
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


def migrate(eng: Engine) -> tuple[str | None, str]:
    """``saejobs db upgrade``: under the schema lock, from the stamped revision to this code's head.
    Returns (before, after)."""
    from saejobs.db.session import schema_lock

    with schema_lock(eng):
        before = stamped(eng)
        if before is not None and not known(before):
            from saejobs.db.session import SchemaMismatch

            raise SchemaMismatch(f"database schema {before} is newer than this saejobs ({SCHEMA_REVISION}): "
                                 "upgrade saejobs, not the database")
        upgrade(eng)
        return before, stamped(eng)


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
