"""Migrations keep every row, on SQLite and PostgreSQL, from every earlier revision (issue 26, item 1).

The rows are written with SQLAlchemy Core against the tables as reflected at that revision, never through
the live ORM models, and generated from the column types alone, so a future migration is covered without
touching this file. The expected values are the ones this file inserted, not anything read back.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.dbfixtures import db_url, home  # noqa: F401
from tests.queue_harness import broker, start_worker  # noqa: F401
from tests.test_queue import one_clean_line, saejobs, submitted

ROWS = 3  # per table: row i of a child points at row i of its parent; the last row's nullable columns are NULL
# The tables a user's results live in: reflection must find them, or this test proves nothing.
RESULT_TABLES = {"jobs", "job_events", "sweeps", "generations", "comparisons", "verifications", "saes", "workers",
                 "neuronpedia_runs"}
HEAD_TABLES = RESULT_TABLES | {"feature_explanations", "judgements"}  # at head: the explanation cache (0004), judge ratings (0005)


def revisions() -> list[str]:
    """Alembic's revisions, oldest first (read from the migration scripts, not from saejobs' constant)."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).resolve().parents[1] / "db" / "migrations"))
    return [s.revision for s in reversed(list(ScriptDirectory.from_config(cfg).walk_revisions()))]


REVISIONS = revisions()
EARLIER = REVISIONS[:-1]


def value(table: sa.Table, col: sa.Column, i: int):
    """A distinct, exactly representable value of the column's type for row ``i``."""
    if col.nullable and not col.primary_key and i == ROWS - 1:
        return None
    kind = dict if isinstance(col.type, sa.JSON) else col.type.python_type
    if kind is str:
        return f"{i}-{table.name}.{col.name}"[: getattr(col.type, "length", None) or 1000]
    if kind is int:
        return i + 1 if col.primary_key else 100 * (len(col.name) + 1) + i
    if kind is float:
        return i + 0.25
    if kind is bool:
        return i % 2 == 0
    if kind is dt.datetime:
        return dt.datetime(2026, 1, 2, 3, 4, 5, 123456 + i)
    if kind is dict:  # JSON
        return {"table": table.name, "column": col.name, "row": i, "nested": [1, 2.5, "é", None, True]}
    raise AssertionError(f"{table.name}.{col.name}: no test value for {col.type!r}; teach tests/test_migrations.py")


def derived(eng: sa.Engine) -> set[str]:
    """SQLite's virtual tables and their shadow tables (the full-text index of migration 0004): kept by
    triggers from the real tables, never written or compared as rows of their own."""
    if eng.dialect.name != "sqlite":
        return set()
    with eng.connect() as conn:
        return {r[1] for r in conn.exec_driver_sql("PRAGMA table_list") if r[2] in ("virtual", "shadow")}


def reflected(eng: sa.Engine) -> sa.MetaData:
    meta = sa.MetaData()
    skip = derived(eng)
    meta.reflect(eng, only=lambda name, _: name not in skip)
    return meta


def populate(eng: sa.Engine) -> dict[str, list[dict]]:
    """ROWS rows in every table of the database as it is now; returns what was inserted."""
    meta = reflected(eng)
    inserted: dict[str, list[dict]] = {}
    with eng.begin() as conn:
        for table in meta.sorted_tables:
            if table.name == "alembic_version":
                continue
            rows = inserted[table.name] = []
            for i in range(ROWS):
                row = {c.name: value(table, c, i) for c in table.columns}
                for fk in table.foreign_keys:
                    if row[fk.parent.name] is None:
                        continue
                    if fk.column.table is table:  # a self-reference: row 0 points at itself, the others at row 0
                        parent = rows[0] if rows else row
                    else:
                        parent = inserted[fk.column.table.name][i]
                    row[fk.parent.name] = parent[fk.column.name]
                conn.execute(table.insert().values(row))
                rows.append(row)
    assert RESULT_TABLES <= set(inserted), sorted(inserted)
    return inserted


def contents(eng: sa.Engine) -> dict[str, dict[tuple, dict]]:
    """Every row of every table, keyed by primary key, as the database holds them now."""
    meta = reflected(eng)
    out = {}
    with eng.connect() as conn:
        for table in meta.sorted_tables:
            pk = [c.name for c in table.primary_key.columns]
            out[table.name] = {tuple(r[k] for k in pk): dict(r) for r in conn.execute(table.select()).mappings()}
    return out


def assert_kept(inserted: dict[str, list[dict]], eng: sa.Engine, tables_dropped: set[str] = frozenset()) -> None:
    """Every inserted row is still there, each of its columns that still exists with the value inserted."""
    now = contents(eng)
    lost = {t: f"{len(rows)} -> {len(now.get(t, {}))}" for t, rows in inserted.items()
            if t not in tables_dropped and len(now.get(t, {})) != len(rows)}
    assert not lost, f"rows lost (inserted -> after): {lost}"
    meta = reflected(eng)
    for name, rows in inserted.items():
        if name in tables_dropped:
            continue
        pk = [c.name for c in meta.tables[name].primary_key.columns]
        for row in rows:
            got = now[name][tuple(row[k] for k in pk)]
            changed = {c: (v, got[c]) for c, v in row.items() if c in got and got[c] != v}
            assert not changed, f"{name} row {[row[k] for k in pk]}: (inserted, after) {changed}"


def at(revision: str) -> sa.Engine:
    from saejobs.db import migrate
    from saejobs.db.session import get_engine

    eng = get_engine()
    migrate.upgrade(eng, revision)
    assert migrate.stamped(eng) == revision
    return eng


@pytest.mark.parametrize("revision", EARLIER)
def test_upgrade_to_head_keeps_every_row(db_url, revision):
    from saejobs.db import migrate

    eng = at(revision)
    inserted = populate(eng)
    migrate.upgrade(eng)
    assert migrate.stamped(eng) == REVISIONS[-1]
    assert_kept(inserted, eng)
    if eng.dialect.name == "sqlite":  # the pooled connection the migration used has its foreign keys back
        pooled = [eng.connect() for _ in range(eng.pool.checkedin())]
        assert pooled and all(c.connection.driver_connection.execute("PRAGMA foreign_keys").fetchone()[0] == 1
                              for c in pooled)
        for c in pooled:
            c.close()


def test_downgrade_by_one_step_keeps_every_row(db_url):
    from alembic import command

    from saejobs.db import migrate

    eng = at(REVISIONS[-1])
    before = set(sa.inspect(eng).get_table_names())
    inserted = populate(eng)
    assert HEAD_TABLES <= set(inserted), sorted(inserted)
    command.downgrade(migrate.config(eng), REVISIONS[-2])
    assert migrate.stamped(eng) == REVISIONS[-2]
    dropped = before - set(sa.inspect(eng).get_table_names())  # tables the head migration created
    assert_kept(inserted, eng, tables_dropped=dropped)


def sqlite_count(path: Path, table: str) -> int:
    with sqlite3.connect(path) as conn:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def test_cli_upgrade_of_a_populated_sqlite_file_keeps_every_generation_and_backs_it_up(home, monkeypatch):
    path = home / "saejobs.db"
    monkeypatch.setenv("SAEJOBS_DB", str(path))
    inserted = populate(at(REVISIONS[0]))
    from saejobs.db.session import dispose_all

    dispose_all()
    out = submitted(saejobs("db", "upgrade", "--json"))
    assert (out["from"], out["revision"]) == (REVISIONS[0], REVISIONS[-1])
    assert sqlite_count(path, "generations") == len(inserted["generations"]) == ROWS
    backup = Path(out["backup"])
    assert backup.parent == path.parent and backup.name.startswith(f"saejobs.db.bak-{REVISIONS[0]}-"), backup
    with sqlite3.connect(backup) as conn:  # the database as it was: the old revision, every row
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone()[0] == REVISIONS[0]
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    for table, rows in inserted.items():
        assert sqlite_count(backup, table) == len(rows), table
    human = saejobs("db", "upgrade")  # already current: nothing to back up
    assert human.returncode == 0 and "already current" in human.stdout and "backup" not in human.stdout


def test_cli_upgrade_says_where_the_backup_is(home, monkeypatch):
    path = home / "saejobs.db"
    monkeypatch.setenv("SAEJOBS_DB", str(path))
    populate(at(REVISIONS[0]))
    from saejobs.db.session import dispose_all

    dispose_all()
    res = saejobs("db", "upgrade")
    assert res.returncode == 0, res.stderr
    backups = list(home.glob("saejobs.db.bak-*"))
    assert len(backups) == 1 and f"backup: {backups[0]}" in res.stdout, res.stdout


def test_a_migration_that_leaves_a_dangling_foreign_key_is_rolled_back(home, monkeypatch):
    """``PRAGMA foreign_key_check`` after the migration: anything reported fails it, and nothing changes."""
    path = home / "saejobs.db"
    monkeypatch.setenv("SAEJOBS_DB", str(path))
    inserted = populate(at(REVISIONS[0]))
    from saejobs.db.session import dispose_all

    dispose_all()
    with sqlite3.connect(path) as conn:  # a row whose job is gone (written with foreign keys off)
        conn.execute("PRAGMA foreign_keys = OFF")
        conn.execute("INSERT INTO job_events (id, job_id, at, state, progress) "
                     "VALUES (999, 'no-such-job', '2026-01-01 00:00:00.000000', 'queued', 0)")
    line = one_clean_line(saejobs("db", "upgrade"), 4)
    assert "job_events" in line and "foreign key" in line, line
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone()[0] == REVISIONS[0]
        assert conn.execute("SELECT count(*) FROM job_events").fetchone()[0] == ROWS + 1
        assert [r[1] for r in conn.execute("PRAGMA table_info(jobs)")] == list(inserted["jobs"][0])
    assert not list(home.glob("saejobs.db.bak-*"))  # the copy of a database left as it was is not kept


def set_worker(eng: sa.Engine, name: str, fresh: bool, stopped: bool = False) -> None:
    """A worker row whose heartbeat is now, or an hour ago, by the database's own clock."""
    now = "strftime('%Y-%m-%d %H:%M:%f', 'now')" if eng.dialect.name == "sqlite" else "CURRENT_TIMESTAMP"
    ago = "strftime('%Y-%m-%d %H:%M:%f', 'now', '-1 hour')" if eng.dialect.name == "sqlite" else \
        "CURRENT_TIMESTAMP - interval '1 hour'"
    with eng.begin() as conn:
        conn.execute(sa.text(f"UPDATE workers SET heartbeat_at = {now if fresh else ago}, "
                             f"stopped_at = {now if stopped else 'NULL'} WHERE name = :name"), {"name": name})


def test_upgrade_refuses_while_live_workers_are_registered_unless_forced(db_url, home):
    from saejobs.db import migrate
    from saejobs.db.session import dispose_all

    eng = at(REVISIONS[0])
    inserted = populate(eng)
    names = [r["name"] for r in inserted["workers"]]
    set_worker(eng, names[0], fresh=True)  # live
    set_worker(eng, names[1], fresh=False)  # silent for an hour: dead
    set_worker(eng, names[2], fresh=True, stopped=True)  # stopped cleanly
    dispose_all()
    line = one_clean_line(saejobs("db", "upgrade"), 4)
    assert names[0] in line and "--force" in line and names[1] not in line and names[2] not in line, line
    assert migrate.stamped(at(REVISIONS[0])) == REVISIONS[0] and not list(home.glob("*.bak-*"))  # nothing changed
    dispose_all()
    out = submitted(saejobs("db", "upgrade", "--force", "--json"))
    assert (out["from"], out["revision"]) == (REVISIONS[0], REVISIONS[-1])
    set_worker(eng, names[0], fresh=True)
    dispose_all()
    again = submitted(saejobs("db", "upgrade", "--json"))  # already current: nothing changes under the worker
    assert (again["from"], again["revision"], again["backup"]) == (REVISIONS[-1], REVISIONS[-1], None)


def test_migrate_and_session_import_each_other_in_no_circle():
    """issue 24: the session checks the schema through migrate; migrate never imports the session back."""
    import ast
    import subprocess
    import sys

    src = Path(__file__).resolve().parents[1] / "db" / "migrate.py"
    imported = {n.module for n in ast.walk(ast.parse(src.read_text())) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(ast.parse(src.read_text())) if isinstance(n, ast.Import) for a in n.names}
    assert not {m for m in imported if m and m.startswith("saejobs.db.session")}, imported
    res = subprocess.run([sys.executable, "-c", "import sys, saejobs.db.migrate; "
                          "print(sorted(m for m in sys.modules if m.startswith('saejobs.db')))"],
                         capture_output=True, text=True, check=True)
    assert "saejobs.db.session" not in json.loads(res.stdout.replace("'", '"'))


def test_a_running_worker_stops_within_a_beat_when_its_schema_changes(db_url, start_worker):
    """issue 26 item 9: sessions are made once, so only the beat's own read of the revision can notice a
    migration made under a running worker (``db upgrade --force``); it stops consuming and exits 4."""
    import time

    from saejobs.db import migrate
    from saejobs.db.session import get_engine
    from tests.queue_harness import FAST, wait_for

    saejobs("jobs", "list")  # a new database: created at head
    w = start_worker()
    eng = get_engine()
    name = wait_for(lambda: sa_scalar(eng, "SELECT name FROM workers"), 60, "the worker's row")
    with eng.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '9999'"))
    stamped_at, beat = time.monotonic(), float(FAST["SAEJOBS_HEARTBEAT"])
    wait_for(lambda: "9999" in w.text(), 30, "the worker to say the schema changed")
    noticed = time.monotonic() - stamped_at
    assert w.proc.wait(timeout=60) == 4, w.text()[-3000:]
    said = [ln for ln in w.text().splitlines() if "9999" in ln]
    assert len(said) == 1 and "this worker stops (exit 4)" in said[0] and migrate.SCHEMA_REVISION in said[0], said
    assert "Traceback" not in w.text()
    assert noticed < 2 * beat + 3, f"noticed after {noticed:.1f} s (beat {beat} s)"  # one beat, plus a loaded host
    assert sa_scalar(eng, f"SELECT stopped_at FROM workers WHERE name = '{name}'") is None  # wrote nothing after


def sa_scalar(eng: sa.Engine, sql: str):
    with eng.connect() as conn:
        return conn.execute(sa.text(sql)).scalar()
