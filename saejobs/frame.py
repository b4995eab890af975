"""Generations with their scores as flat rows and a pandas DataFrame (the ``notebook`` extra)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from saejobs.engine.errors import UsageError
from saejobs.engine.score import FLAT as FLAT_SCORES
from saejobs.engine.score import Score

COLUMNS = ["job", "round", "id", "type", "feature", "strength", "features", "prompt", "seed", "output", "n_tokens",
           *FLAT_SCORES, "concept", "concept_tokens", "config_key", "label"]  # n_tokens: generated (EOS included); completion_tokens: scored
# label: the features' cached Neuronpedia explanations (db.results.joined_label), None where none is cached
NESTED = ("features", "concept", "concept_tokens")


def rows(job_id: str, url: str | None = None) -> list[dict[str, Any]]:
    """Flat rows of a sweep job, or of every round of a search job (``round``: the round's sweep job)."""
    return list(iter_rows(job_id, url))


def iter_rows(job_id: str, url: str | None = None) -> Iterator[dict[str, Any]]:
    """The same rows, read a page at a time (``results.iter_generation_rows``): exports stream."""
    from saejobs.db import jobs, results
    from saejobs.db.states import JobKind

    job = jobs.get(job_id, url=url)
    if job.kind == JobKind.SWEEP:
        parts = [(job.id, None)]
    elif job.kind == JobKind.SEARCH:
        parts = [(r, r) for r in (job.result or {}).get("rounds", [])]
    else:
        raise UsageError(f"job {job.id[:8]} is a {job.kind} job; results are kept for sweeps and searches")
    for sweep_job, round_ in parts:
        for r in results.iter_generation_rows(sweep_job, url=url):
            sc = r.get("scores") or {}
            yield {"job": job.id, "round": round_, "id": r["id"], "type": r["type"], "feature": r["feature"],
                   "strength": r["strengths"][0] if r["strengths"] else None, "features": r["features"],
                   "prompt": r["prompt"], "seed": r["seed"], "output": r["output"], "n_tokens": r["n_tokens"],
                   **{k: sc.get(k) for k in FLAT_SCORES}, "concept": sc.get(Score.CONCEPT),
                   "concept_tokens": sc.get(Score.CONCEPT_TOKENS), "config_key": r["config_key"],
                   "label": results.joined_label(r["labels"])}


def results(job_id: str, url: str | None = None):
    try:
        import pandas as pd
    except ImportError:
        raise UsageError("pandas is not installed: pip install 'saejobs[notebook]'") from None

    return pd.DataFrame(rows(job_id, url), columns=COLUMNS)


def _schema():
    """The Parquet columns, typed once (a page of all-empty values must not change a column's type)."""
    import pyarrow as pa

    types = {"id": pa.int64(), "seed": pa.int64(), "n_tokens": pa.int64(), "strength": pa.float64(),
             Score.LONGEST_REPEAT: pa.int64(), Score.COMPLETION_TOKENS: pa.int64(), Score.STOPPED_AT_EOS: pa.bool_(),
             **{k: pa.float64() for k in FLAT_SCORES if k not in (Score.LONGEST_REPEAT, Score.COMPLETION_TOKENS,
                                                                   Score.STOPPED_AT_EOS)}}
    return pa.schema([(c, types.get(c, pa.string())) for c in COLUMNS])


def write_parquet(job_id: str, path: str | Path, url: str | None = None) -> Path:
    """Streamed a page at a time into a temporary file beside ``path``, then renamed: never half a file at
    ``path``, and memory for one page, not the sweep."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise UsageError("pyarrow is not installed: pip install 'saejobs[notebook]'") from None
    from saejobs.db.results import EXPORT_PAGE

    schema, path = _schema(), Path(path)
    fd, tmp = tempfile.mkstemp(prefix=".saejobs-", suffix=".parquet.tmp", dir=path.parent)
    os.close(fd)
    try:
        with pq.ParquetWriter(tmp, schema) as out:
            for page in _pages(iter_rows(job_id, url), EXPORT_PAGE):
                for r in page:
                    for col in NESTED:
                        r[col] = None if r[col] is None else json.dumps(r[col])
                out.write_table(pa.Table.from_pylist(page, schema=schema))
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def _pages(items: Iterator[dict], size: int) -> Iterator[list[dict]]:
    page: list[dict] = []
    for item in items:
        page.append(item)
        if len(page) == size:
            yield page
            page = []
    if page:
        yield page
