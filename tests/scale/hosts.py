"""Several "hosts" on one machine: worker processes with their own ``SAEJOBS_HOME`` (so no shared SAE
cache) and ``SAEJOBS_HOST``, one PostgreSQL, one Redis — and, for one host, a clock running ahead
(libfaketime's ``LD_PRELOAD`` library, from the ``libfaketime`` wheel: the whole process's time moves,
not a knob inside saejobs)."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from saejobs.db import jobs
from saejobs.db.models import JobEvent
from saejobs.db.session import session


def host_env(root: Path, host: str, **extra: str) -> dict[str, str]:
    home = root / f"host-{host}"
    home.mkdir(exist_ok=True)
    return {"SAEJOBS_HOME": str(home), "SAEJOBS_HOST": host, **extra}


def clock_ahead(seconds: int) -> dict[str, str]:
    import libfaketime

    return {"LD_PRELOAD": str(Path(libfaketime._get_lib_path()) / "libfaketime.so.1"), "FAKETIME": f"+{seconds}s",
            "DONT_FAKE_MONOTONIC": "1", "FAKETIME_NO_CACHE": "1"}


def clock_offset(worker) -> float:
    """How far the worker's clock (its own ``time.time()``, which stamps its log lines) is ahead of this
    process's: the stamp of its `` ready.`` line less our time now. Call it as soon as ``wait_ready`` has
    seen that line: on our clock the answer is at most 0 (less the seconds since), never tens of seconds
    ahead; a skewed worker's is its skew less those seconds."""
    now = time.time()
    (line,) = [ln for ln in worker.text().splitlines() if ln.endswith(" ready.")]
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp() - now


@pytest.fixture
def pg_url(home, monkeypatch):
    """A fresh database on the session's PostgreSQL (the shared database of a multi-host setup)."""
    from tests.dbfixtures import fresh_pg_database

    yield from fresh_pg_database(monkeypatch, "saejobs_scale")


def events(job_id: str) -> list[tuple[str, str]]:
    with session() as s:
        return [(e.state, e.message or "") for e in s.scalars(select(JobEvent).where(JobEvent.job_id == job_id)
                                                               .order_by(JobEvent.id))]


def claims(parent_id: str) -> dict[str, list[str]]:
    """Shard id → the workers that claimed it, in order (from its ``running on W`` events)."""
    return {j.id: [m.removeprefix("running on ") for st, m in events(j.id) if st == "running" and m.startswith("running on ")]
            for j in jobs.shards(parent_id)}


def handed_on(parent_id: str) -> list[str]:
    """Shards a reaper took from their worker."""
    return [j.id for j in jobs.shards(parent_id) if any("worker lost" in m for _, m in events(j.id))]
