"""The closed sets of a job's life, named once: its kinds and its states (no SQLAlchemy, so the CLI's
choices can read them cheaply).

A ``StrEnum``: a member equals the string stored in the ``jobs`` table. To add a kind: a member here
and its body in ``tasks.runner.kinds`` (which refuses to start without one for every kind).
"""

from __future__ import annotations

from enum import StrEnum


class JobKind(StrEnum):
    DOWNLOAD = "download"
    VERIFY = "verify"
    SWEEP = "sweep"
    SCORE = "score"  # fill in a stored sweep's missing scores (tasks/score.py)
    SEARCH = "search"  # strength search: rounds of sweeps (tasks/search.py)


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINAL_STATES = (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)
