"""Generations with their scores as flat rows and a pandas DataFrame (the ``notebook`` extra)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from saejobs.engine.errors import UsageError
from saejobs.engine.score import Score

FLAT_SCORES = [s.value for s in Score if s is not Score.CONCEPT]
COLUMNS = ["job", "round", "id", "type", "feature", "strength", "features", "prompt", "seed", "output", "n_tokens",
           *FLAT_SCORES, "concept", "config_key"]  # n_tokens: generated (EOS included); completion_tokens: scored
NESTED = ("features", "concept")


def rows(job_id: str, url: str | None = None) -> list[dict[str, Any]]:
    """Flat rows of a sweep job, or of every round of a search job (``round``: the round's sweep job)."""
    from saejobs.db import jobs, results
    from saejobs.db.states import JobKind

    job = jobs.get(job_id, url=url)
    if job.kind == JobKind.SWEEP:
        parts = [(job.id, None)]
    elif job.kind == JobKind.SEARCH:
        parts = [(r, r) for r in (job.result or {}).get("rounds", [])]
    else:
        raise UsageError(f"job {job.id[:8]} is a {job.kind} job; results are kept for sweeps and searches")
    out = []
    for sweep_job, round_ in parts:
        for r in results.generation_rows(sweep_job, url=url):
            sc = r.get("scores") or {}
            out.append({"job": job.id, "round": round_, "id": r["id"], "type": r["type"], "feature": r["feature"],
                        "strength": r["strengths"][0] if r["strengths"] else None, "features": r["features"],
                        "prompt": r["prompt"], "seed": r["seed"], "output": r["output"], "n_tokens": r["n_tokens"],
                        **{k: sc.get(k) for k in FLAT_SCORES}, "concept": sc.get(Score.CONCEPT),
                        "config_key": r["config_key"]})
    return out


def results(job_id: str, url: str | None = None):
    try:
        import pandas as pd
    except ImportError:
        raise UsageError("pandas is not installed: pip install 'saejobs[notebook]'") from None

    return pd.DataFrame(rows(job_id, url), columns=COLUMNS)


def write_parquet(job_id: str, path: str | Path, url: str | None = None) -> Path:
    """Written to a temporary file beside ``path`` and renamed: never half a file at ``path``."""
    df = results(job_id, url)
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise UsageError("pyarrow is not installed: pip install 'saejobs[notebook]'") from None
    for col in NESTED:
        df[col] = [None if v is None else json.dumps(v) for v in df[col]]
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=".saejobs-", suffix=".parquet.tmp", dir=path.parent)
    os.close(fd)
    try:
        df.to_parquet(tmp, index=False, engine="pyarrow")
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path
