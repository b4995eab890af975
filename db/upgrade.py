"""``saejobs db upgrade`` as one guarded step, under the schema lock: refuse a schema newer than this code,
refuse while live workers use the database (unless forced), copy a SQLite file beside itself, then migrate.

It sits above ``session`` and ``workers``: it judges liveness by the database's clock, as the workers do.
It reads the ``workers`` table with Core, on columns every revision has, because the ORM models describe
the schema being migrated to, not the one the database still has.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.orm import Session

from saejobs.db import migrate
from saejobs.db.errors import DatabaseError, SchemaMismatch
from saejobs.db.session import BUSY_TIMEOUT_MS, db_now
from saejobs.db.workers import LIVE_WITHIN_S

WORKERS = sa.table("workers", sa.column("name"), sa.column("heartbeat_at", sa.DateTime()),
                   sa.column("stopped_at", sa.DateTime()))


class WorkersLive(DatabaseError):
    """Workers would write to tables changing under them; they stop at their next beat if forced."""


@dataclass
class Upgraded:
    before: str | None
    after: str | None
    backup: Path | None  # the SQLite file as it was, when a migration ran on one


def live_workers(eng: sa.Engine) -> list[str]:
    """Workers not stopped whose heartbeat is within ``SAEJOBS_STALE_AFTER`` by the database's clock."""
    with Session(eng) as s:
        since = db_now(s) - timedelta(seconds=LIVE_WITHIN_S)
        return list(s.scalars(sa.select(WORKERS.c.name).where(WORKERS.c.stopped_at.is_(None),
                                                               WORKERS.c.heartbeat_at >= since)
                              .order_by(WORKERS.c.name)))


def backup_sqlite(eng: sa.Engine, revision: str) -> Path | None:
    """Copy the database beside itself with SQLite's online backup API (a consistent copy of a live WAL
    database, which copying the file is not): ``NAME.bak-REVISION-UTCSTAMP``."""
    if eng.dialect.name != "sqlite" or eng.url.database in (None, "", ":memory:"):
        return None
    src = Path(eng.url.database)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    dest, n = src.with_name(f"{src.name}.bak-{revision}-{stamp}"), 1
    while dest.exists():
        n += 1
        dest = src.with_name(f"{src.name}.bak-{revision}-{stamp}-{n}")
    try:
        with closing(sqlite3.connect(src, timeout=BUSY_TIMEOUT_MS / 1000)) as s, closing(sqlite3.connect(dest)) as d:
            s.backup(d)
    except sqlite3.Error as e:
        dest.unlink(missing_ok=True)
        raise DatabaseError(f"could not back up '{src}' to '{dest}' ({e}); nothing migrated") from None
    return dest


def run(eng: sa.Engine, force: bool = False) -> Upgraded:
    """From the stamped revision to this code's head. A database already current, or new, is not backed up
    and not refused: nothing in it changes under a worker."""
    with migrate.schema_lock(eng):
        before = migrate.stamped(eng)
        if before is not None and not migrate.known(before):
            raise SchemaMismatch(f"database schema {before} is newer than this saejobs ({migrate.SCHEMA_REVISION}): "
                                 "upgrade saejobs, not the database")
        backup = None
        if before is not None and before != migrate.head():
            live = [] if force else live_workers(eng)
            if live:
                many = len(live) > 1
                shown = ", ".join(live[:5]) + (f" and {len(live) - 5} more" if len(live) > 5 else "")
                raise WorkersLive(f"{len(live)} live {'workers use' if many else 'worker uses'} this database "
                                  f"({shown}): stop {'them' if many else 'it'} and run this again, or pass --force "
                                  "(a worker stops at its next beat)")
            backup = backup_sqlite(eng, before)
        try:
            migrate.upgrade(eng)
        except BaseException:
            if backup is not None and migrate.stamped(eng) == before:  # rolled back whole: the copy says nothing new
                backup.unlink(missing_ok=True)
            raise
        return Upgraded(before, migrate.stamped(eng), backup)
