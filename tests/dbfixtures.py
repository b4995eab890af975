"""Database fixtures: a fresh SQLite file or a fresh PostgreSQL database per test.

Import the fixtures a test module needs (``from tests.dbfixtures import db_url``); the PostgreSQL
variant is skipped when no server answers on 127.0.0.1:5432.
"""

from __future__ import annotations

import os
import uuid

import pytest

PG_ADMIN = os.environ.get("SAEJOBS_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def _pg_admin():
    import psycopg

    url = PG_ADMIN.replace("postgresql+psycopg://", "postgresql://")
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
    from db.session import dispose_all

    h = tmp_path / "home"
    h.mkdir()
    monkeypatch.setenv("SAEJOBS_HOME", str(h))
    monkeypatch.delenv("SAEJOBS_DB", raising=False)
    yield h
    dispose_all()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request, home, monkeypatch):
    """``$SAEJOBS_DB`` pointing at an empty database of each kind."""
    from db.session import dispose_all

    if request.param == "sqlite":
        url = f"sqlite:///{home / 'saejobs.db'}"
        monkeypatch.setenv("SAEJOBS_DB", url)
        yield url
        dispose_all()
        return
    if not pg_available():
        pytest.skip("no PostgreSQL on 127.0.0.1:5432")
    name = f"saejobs_test_{uuid.uuid4().hex[:12]}"
    with _pg_admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    monkeypatch.setenv("SAEJOBS_DB", url)
    yield url
    dispose_all()
    with _pg_admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
