"""``saejobs db``: the schema step. Workers and the CLI never migrate a database in use: they refuse an
older or newer schema with one line naming this command (a new, empty database is created on first use);
and ``db prune``, the retention step for job history (``db.retention``)."""

from __future__ import annotations

import click

from saejobs.cli.output import emit, json_option


@click.group()
def db() -> None:
    """The results database ($SAEJOBS_DB: a SQLite path or any SQLAlchemy URL)."""


@db.command()
@click.option("--force", is_flag=True, help="Migrate even while live workers use the database (they stop at their "
                                            "next beat).")
@json_option
def upgrade(force: bool, as_json: bool) -> None:
    """Create or migrate the database to this saejobs' schema (stop the workers first).

    On SQLite the file is first copied beside itself (NAME.bak-REVISION-TIME); the migration is one
    transaction, rolled back whole if it fails."""
    from sqlalchemy.exc import OperationalError

    from saejobs.db import migrate
    from saejobs.db import upgrade as step
    from saejobs.db.session import DatabaseError, database_url, get_engine, redact

    eng = get_engine()
    try:
        done = step.run(eng, force=force)
    except OperationalError as e:
        raise DatabaseError(f"database '{redact(database_url())}' unavailable: "
                            f"{str(e.orig).strip().splitlines()[0]}") from None
    data = {"url": redact(database_url()), "from": done.before, "revision": done.after, "head": migrate.head(),
            "backup": str(done.backup) if done.backup else None}
    emit(data, as_json, lambda: click.echo(
        f"{data['url']}: at revision {done.after}"
        + (f" (was {done.before})" if done.before != done.after else " (already current)")
        + (f"; backup: {done.backup}" if done.backup else "")))


@db.command()
@click.option("--older-than", "older_than", default=None, metavar="AGE",
              help="Prune the events of jobs that ended more than AGE ago (30d, 12h, 90m, 45s). "
                   "[default: 30d]")
@click.option("--dry-run", is_flag=True, help="Count what would be deleted; delete nothing.")
@json_option
def prune(older_than: str | None, dry_run: bool, as_json: bool) -> None:
    """Delete old job history: the events of jobs that ended more than --older-than ago, each job's
    last event kept. Jobs, results and scores are never deleted."""
    from saejobs.db import retention
    from saejobs.db.session import database_url, redact

    done = retention.prune(retention.duration_s(older_than or retention.DEFAULT_RETENTION), dry_run=dry_run)
    emit({"url": redact(database_url()), **done}, as_json, lambda: click.echo(
        f"{'would delete' if dry_run else 'deleted'} {done['events']} events of jobs ended before {done['cutoff']}"))
