"""The closed sets of a job's life, named once: its kinds and its states (no SQLAlchemy, so the CLI's
choices can read them cheaply).

A ``StrEnum``: a member equals the string stored in the ``jobs`` table, and prints and serialises as
it, so code names ``JobState.SUCCEEDED`` where the database and the JSON output say ``"succeeded"``.
"""

from __future__ import annotations

from enum import StrEnum


class JobKind(StrEnum):
    """What a job does; each kind has one typed request (``request_type``) and one body.

    To add a kind: a member here; its request in ``request_type`` (a frozen dataclass, torch-free,
    validated at construction, with ``to_params()``/``from_params()``: ``engine/job_requests.py``);
    and its body's module in ``tasks.runner.BODIES`` (``tasks.runner`` refuses to import without one for every
    kind; only the module of the kind a job runs is imported).
    ``tests/test_job_requests.py`` checks that every member has a request type.
    """

    DOWNLOAD = "download"
    VERIFY = "verify"
    SWEEP = "sweep"
    SCORE = "score"  # fill in a stored sweep's missing scores (tasks/score.py)
    SEARCH = "search"  # strength search: rounds of sweeps (tasks/search.py)
    FEATURES = "features"  # top features of texts (tasks/features.py)

    @property
    def request_type(self) -> type:
        """The typed request this kind's job row stores and its task reads (imported on first use:
        listing jobs needs none of them)."""
        from saejobs.engine.job_requests import (DownloadRequest, FeaturesRequest, ScoreRequest, SearchRequest,
                                                 VerifyRequest)
        from saejobs.engine.request import SweepRequest

        return {JobKind.DOWNLOAD: DownloadRequest, JobKind.VERIFY: VerifyRequest, JobKind.SWEEP: SweepRequest,
                JobKind.SCORE: ScoreRequest, JobKind.SEARCH: SearchRequest, JobKind.FEATURES: FeaturesRequest}[self]

    @classmethod
    def of(cls, request) -> JobKind:
        """The kind whose request ``request`` is."""
        for kind in cls:
            if type(request) is kind.request_type:
                return kind
        raise TypeError(f"{type(request).__name__} is not a job request")


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINAL_STATES = (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)
