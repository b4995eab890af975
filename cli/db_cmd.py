"""``saejobs db``: the schema step. Workers and the CLI never migrate a database in use: they refuse an
older or newer schema with one line naming this command (a new, empty database is created on first use)."""

from __future__ import annotations

import click

from saejobs.cli.output import emit, json_option


@click.group()
def db() -> None:
    """The results database ($SAEJOBS_DB: a SQLite path or any SQLAlchemy URL)."""


@db.command()
@json_option
def upgrade(as_json: bool) -> None:
    """Create or migrate the database to this saejobs' schema (stop the workers first)."""
    from sqlalchemy.exc import OperationalError

    from saejobs.db import migrate
    from saejobs.db.session import DatabaseError, database_url, get_engine, redact

    eng = get_engine()
    try:
        before, after = migrate.migrate(eng)
    except OperationalError as e:
        raise DatabaseError(f"database '{redact(database_url())}' unavailable: "
                            f"{str(e.orig).strip().splitlines()[0]}") from None
    data = {"url": redact(database_url()), "from": before, "revision": after, "head": migrate.head()}
    emit(data, as_json, lambda: click.echo(
        f"{data['url']}: at revision {after}" + (f" (was {before})" if before != after else " (already current)")))
