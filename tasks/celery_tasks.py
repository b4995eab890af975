"""The Celery task: a job id in, ``runner.execute`` does the rest.

What sends a job's message again, and what bounds it. Every path puts the row back to ``queued`` in the
database first (``db.jobs.requeue``, which fails the row instead once it has used its attempts), then
sends the id:

* a transient error (network, Hub 5xx, busy database): ``self.retry`` below re-publishes this message
  to the same queue after a backoff — the only use of Celery's retry machinery;
* a hand-back (the worker got SIGTERM): ``send`` below;
* a dead worker (no heartbeat): another worker's reaper, ``worker.main.reap``; a hung one: its own
  watchdog, ``tasks.runner._Heartbeat``;
* a message the broker lost: the orphan check, ``worker.main.resend_orphans``;
* a worker whose code does not match the database's schema: ``Reject(requeue=True)`` below hands the
  message back for another worker.

So the one attempts limit is the row's: ``db.jobs.max_attempts()`` (``SAEJOBS_MAX_ATTEMPTS``), counted
at every claim, whichever path delivered it. Celery's own counter (``request.retries``) sees only the
first path and restarts at 0 after every other one, so it is switched off (``max_retries=None``): with
Celery's default of 3 a job allowed more attempts stopped being retried after its fourth transient
error and sat queued until the orphan check found it.
"""

from __future__ import annotations

from saejobs.tasks import runner
from saejobs.tasks.app import app


@app.task(bind=True, name="saejobs.run_job", max_retries=None)  # the row's attempts bound it: see above
def run_job(self, job_id: str) -> str:
    from saejobs.db.session import SchemaMismatch
    from saejobs.tasks.runner import current_executor

    try:
        outcome = runner.execute(job_id, current_executor())
    except SchemaMismatch as e:  # back on the queue for a worker whose code matches; this one stops (its beat)
        from celery.exceptions import Reject

        raise Reject(str(e), requeue=True) from None
    if outcome == runner.Outcome.TRANSIENT:  # requeued with attempts left (at the limit the row failed: "failed")
        raise self.retry(countdown=min(60, 2 ** (self.request.retries + 1)))
    if outcome == runner.Outcome.HANDED_BACK:
        from saejobs.tasks.submit import send

        send(job_id)
    return outcome
