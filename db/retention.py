"""How long job history is kept: ``saejobs db prune`` deletes the events of jobs that ended long ago.

Results (generations, verifications, scores) and the jobs' own rows are never pruned; of an ended job's
events only the last (its final state, with its time and message) is kept. Running and queued jobs
keep every event (their progress events are coalesced as they are written: ``jobs.event_every_s``).
"""

from __future__ import annotations

import re
from datetime import timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.orm import aliased

from saejobs.db.models import Job, JobEvent
from saejobs.db.session import db_now, retried, session
from saejobs.db.states import FINAL_STATES
from saejobs.engine.errors import UsageError

DEFAULT_RETENTION = "30d"
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


def duration_s(text: str) -> float:
    """``30d``, ``12h``, ``90m``, ``45s`` or plain seconds; anything else is a usage error."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text or "")
    if m is None:
        raise UsageError(f"--older-than '{text}' is not a duration (e.g. 30d, 12h, 90m, 45s)")
    return float(m.group(1)) * UNITS[m.group(2) or "s"]


def _prunable(cutoff):
    """Events of jobs that ended before ``cutoff``, each job's last event excepted."""
    later = aliased(JobEvent)
    ended = select(Job.id).where(Job.state.in_(list(FINAL_STATES)), Job.finished_at < cutoff)
    return (JobEvent.job_id.in_(ended),
            select(later.id).where(later.job_id == JobEvent.job_id, later.id > JobEvent.id).exists())


@retried
def prune(older_than_s: float, *, dry_run: bool = False, url: str | None = None) -> dict:
    """Delete (or with ``dry_run`` count) the prunable events; one transaction."""
    with session(url) as s:
        cutoff = db_now(s) - timedelta(seconds=older_than_s)
        where = _prunable(cutoff)
        n = s.scalar(select(func.count()).select_from(JobEvent).where(*where)) or 0
        if not dry_run and n:
            s.execute(delete(JobEvent).where(*where).execution_options(synchronize_session=False))
    return {"events": n, "older_than_s": older_than_s, "cutoff": cutoff.isoformat(), "dry_run": dry_run}
