"""The Celery task: a job id in, ``runner.execute`` does the rest."""

from __future__ import annotations

from saejobs.tasks import runner
from saejobs.tasks.app import app

MAX_RETRIES = 3


@app.task(bind=True, name="saejobs.run_job", max_retries=MAX_RETRIES)
def run_job(self, job_id: str) -> str:
    from saejobs.db.session import SchemaMismatch
    from saejobs.tasks.runner import current_executor

    try:
        outcome = runner.execute(job_id, current_executor())
    except SchemaMismatch as e:  # back on the queue for a worker whose code matches; this one stops (its beat)
        from celery.exceptions import Reject

        raise Reject(str(e), requeue=True) from None
    if outcome == "transient":
        raise self.retry(countdown=min(60, 2 ** (self.request.retries + 1)))
    if outcome == "handed_back":
        from saejobs.tasks.submit import send

        send(job_id)
    return outcome
