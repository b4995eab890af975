"""``saejobs db``: schema upgrades (also done automatically on first use)."""

from __future__ import annotations

import click

from cli.output import emit, json_option


@click.group()
def db() -> None:
    """The results database ($SAEJOBS_DB: a SQLite path or any SQLAlchemy URL)."""


@db.command()
@json_option
def upgrade(as_json: bool) -> None:
    """Create or migrate the database to the current schema."""
    from db import migrate
    from db.session import database_url, get_engine, redact

    eng = get_engine()
    data = {"url": redact(database_url()), "revision": migrate.current(eng), "head": migrate.head()}
    emit(data, as_json, lambda: click.echo(f"{data['url']}: at revision {data['revision']} (head {data['head']})"))
