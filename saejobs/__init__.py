"""saejobs from Python, for notebooks: ``import saejobs; saejobs.results(job_id)``.

Thin on purpose: importing it loads nothing heavy (pandas, SQLAlchemy and torch load on the first
call). The database is the one the CLI uses (``$SAEJOBS_DB``, else ``$SAEJOBS_HOME/saejobs.db``).
Needs the ``notebook`` extra (``pip install 'saejobs[notebook]'``: pandas, pyarrow).
"""

from __future__ import annotations

__all__ = ["results", "write_parquet"]


def results(job_id: str, *, url: str | None = None):
    """A sweep's (or a strength search's) generations with their scores, one row each, as a pandas
    DataFrame: ``type``, ``feature``, ``strength``, ``prompt``, ``seed``, ``output``, the scores
    (``concept_mean``, ``nll``, ...; ``engine.score.Score``) and, for a search, its ``round`` job."""
    from saejobs.frame import results as _results

    return _results(job_id, url=url)


def write_parquet(job_id: str, path, *, url: str | None = None):
    """``results(job_id)`` written to ``path`` as Parquet (nested values as JSON text); returns the path."""
    from saejobs.frame import write_parquet as _write

    return _write(job_id, path, url=url)
