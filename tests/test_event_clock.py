"""Issue 26, item 17: job events are stamped by the database's clock, the clock ``waiting_since`` judges
them by. A host whose clock runs behind must not make a job it just queued look like an orphan whose
message the broker lost (it would be sent again), nor one ahead hide a real orphan."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from sqlalchemy import select

from saejobs.db import jobs, models
from saejobs.db.models import JobEvent
from saejobs.db.session import db_now, session
from tests.dbfixtures import db_url, home  # noqa: F401


def skewed(by: timedelta) -> type[datetime]:
    class Skewed(datetime):  # this host's clock, off by ``by``; the database's is untouched
        @classmethod
        def now(cls, tz=None):
            return datetime.now(tz) + by

    return Skewed


@pytest.mark.parametrize("skew_s", [-600, 600])
def test_events_follow_the_database_clock_not_the_hosts(db_url, monkeypatch, skew_s):
    monkeypatch.setattr(models, "datetime", skewed(timedelta(seconds=skew_s)))  # what stamps rows on this host
    assert abs((models.utcnow() - datetime.now(models.timezone.utc)).total_seconds() - skew_s) < 5
    job = jobs.create("download", {"sae": "nothing/at-all"}, queue="saejobs")
    jobs.cancel(job.id)  # a second event, written by an update path
    with session() as s:
        now = db_now(s)
        ats = list(s.scalars(select(JobEvent.at).where(JobEvent.job_id == job.id)))
    assert len(ats) == 2
    assert all(abs((at - now).total_seconds()) < 5 for at in ats), (ats, now)

    fresh = jobs.create("download", {"sae": "nothing/at-all"}, queue="saejobs")
    assert fresh.id not in [j for j, _ in jobs.waiting_since(120)]  # queued a moment ago: not an orphan
