"""The database's errors, and how they name a database (password hidden).

Below both ``session`` (which checks the schema before its first transaction) and ``migrate`` (which
changes it), so that each can raise them without importing the other back.
"""

from __future__ import annotations

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from saejobs.engine.errors import SaejobsError


class DatabaseError(SaejobsError):
    exit_code = 4


class SchemaMismatch(SaejobsError):
    """The database's schema is not this code's: migrating is a deliberate step (``saejobs db upgrade``),
    never a side effect of a worker or a CLI call while other workers use the database."""

    exit_code = 4


def redact(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable URL>"
