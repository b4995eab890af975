"""What the bench scripts share: following a job row until it is done."""

from __future__ import annotations

import time


def wait_job(job_id: str, timeout: float = 600, poll: float = 0.005):
    """The job's row once it succeeded; exits the bench with its error otherwise."""
    from saejobs.db import jobs

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = jobs.get(job_id)
        if row.state in ("succeeded", "failed", "cancelled"):
            if row.state != "succeeded":
                raise SystemExit(f"bench job {job_id} {row.state}: {row.error}")
            return row
        time.sleep(poll)
    raise SystemExit(f"bench job {job_id} did not finish in {timeout}s")
