"""Alembic, driven from code: the migrations ship inside the package, no alembic.ini needed."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

MIGRATIONS = Path(__file__).parent / "migrations"


def config(eng: Engine | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if eng is not None:
        cfg.attributes["engine"] = eng
    return cfg


def current(eng: Engine) -> str | None:
    with eng.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head() -> str | None:
    return ScriptDirectory.from_config(config()).get_current_head()


def upgrade(eng: Engine, revision: str = "head") -> bool:
    """Upgrade to ``revision``; False when already there (the common, cheap case)."""
    if revision == "head" and current(eng) == head():
        return False
    command.upgrade(config(eng), revision)
    return True
