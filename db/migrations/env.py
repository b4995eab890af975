"""Alembic's entry point: every migration in one transaction, all or nothing.

On SQLite, Alembic's batch mode rebuilds a table by copy-and-drop; with foreign keys on, dropping the old
``jobs`` cascades into every result (events, sweeps, generations, comparisons, verifications). So foreign
keys are off for the migration — set on the connection before its transaction begins, as ``PRAGMA
foreign_keys`` is a no-op inside one — and ``PRAGMA foreign_key_check`` must find nothing before the
commit, else the whole migration is rolled back. The pooled connection gets foreign keys back after.
"""

from collections import Counter

from alembic import context

from saejobs.db.errors import DatabaseError
from saejobs.db.models import Base, fts_object

engine = context.config.attributes["engine"]


def dangling(connection) -> str:
    """What ``foreign_key_check`` reports, as ``child → parent: N rows``; empty when every key resolves."""
    rows = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
    return ", ".join(f"{child} → {parent}: {n} row{'s' * (n > 1)}"
                     for (child, parent), n in sorted(Counter((r[0], r[2]) for r in rows).items()))


def include_name(name, type_, parent_names) -> bool:
    """Autogenerate leaves the full-text search objects alone: the migrations make them, not the models."""
    return not fts_object(name)


with engine.connect() as connection:
    sqlite = connection.dialect.name == "sqlite"
    if sqlite:  # on the DBAPI connection, outside any transaction (the engine's "begin" hook has not run)
        connection.connection.driver_connection.execute("PRAGMA foreign_keys = OFF")
    try:
        with connection.begin():
            if connection.dialect.name == "postgresql":  # a migration waits for a busy table this long, then fails
                connection.exec_driver_sql("SET LOCAL lock_timeout = '10s'")
            context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True,
                              include_name=include_name)
            context.run_migrations()
            if sqlite and (found := dangling(connection)):
                raise DatabaseError(f"the migration would leave rows whose foreign key points nowhere ({found}); "
                                    "rolled back, nothing changed: fix or delete those rows first")
    finally:
        if sqlite:
            connection.connection.driver_connection.execute("PRAGMA foreign_keys = ON")
