"""Database fixtures: a fresh SQLite file or a fresh PostgreSQL database per test.

Import the fixtures a test module needs (``from tests.dbfixtures import db_url``). The PostgreSQL
server is the one at ``SAEJOBS_TEST_PG``, or a private one the session started (``tests/services.py``).
"""

from __future__ import annotations

import os
import uuid

import pytest

from sqlalchemy.engine import make_url

from tests.services import DEFAULT_PG

PG_ADMIN = os.environ.get("SAEJOBS_TEST_PG", DEFAULT_PG)


def _pg_admin():
    import psycopg

    url = make_url(PG_ADMIN).set(drivername="postgresql").render_as_string(hide_password=False)
    return psycopg.connect(url, autocommit=True, connect_timeout=3)


def pg_available() -> bool:
    try:
        _pg_admin().close()
        return True
    except Exception:
        return False


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty $SAEJOBS_HOME (SAE cache, default SQLite database); models stay in the shared cache."""
    from saejobs.db.session import dispose_all

    h = tmp_path / "home"
    h.mkdir()
    monkeypatch.setenv("SAEJOBS_HOME", str(h))
    monkeypatch.delenv("SAEJOBS_DB", raising=False)
    yield h
    dispose_all()


@pytest.fixture
def sqlite_url(home, monkeypatch):
    """``$SAEJOBS_DB`` on a fresh SQLite file, for tests where the database's kind is not what they test
    (routing, pinning, steering through the queue): the SQL they run is the SQL ``db_url``'s tests run on
    both kinds (tests/test_db*.py, migrations, exports) and the multi-host suites run on PostgreSQL."""
    from saejobs.db.session import dispose_all

    url = f"sqlite:///{home / 'saejobs.db'}"
    monkeypatch.setenv("SAEJOBS_DB", url)
    yield url
    dispose_all()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request, home, monkeypatch):
    """``$SAEJOBS_DB`` pointing at an empty database of each kind."""
    from saejobs.db.session import dispose_all

    if request.param == "sqlite":
        url = f"sqlite:///{home / 'saejobs.db'}"
        monkeypatch.setenv("SAEJOBS_DB", url)
        yield url
        dispose_all()
        return
    if not pg_available():
        pytest.skip(f"no PostgreSQL at {make_url(PG_ADMIN).render_as_string()}")
    yield from fresh_pg_database(monkeypatch)


def fresh_pg_database(monkeypatch, prefix: str = "saejobs_test"):
    """A new database on the session's PostgreSQL as ``$SAEJOBS_DB`` (a fixture body: yields its URL,
    drops it afterwards)."""
    from saejobs.db.session import dispose_all

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with _pg_admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = make_url(PG_ADMIN).set(database=name).render_as_string(hide_password=False)
    monkeypatch.setenv("SAEJOBS_DB", url)
    yield url
    dispose_all()
    with _pg_admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
