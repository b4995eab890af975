"""A multi-config sweep small enough to run many times, and how to count what it stored."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from saejobs.db import results
from saejobs.db.models import Generation
from saejobs.db.session import session
from tests.synthetic_saes import make
from tests.test_queue import saejobs, submitted

FEATURES, STRENGTHS, PROMPTS = "1,2,3,4", "0,4,8,16", ("Once upon a time", "The capital of France is")
N_CONFIGS = len(PROMPTS) + 4 * 4 * len(PROMPTS)  # one DEFAULT per prompt, then features × strengths × prompts


@pytest.fixture
def sqlite_db(home, monkeypatch) -> str:
    url = f"sqlite:///{home / 'saejobs.db'}"
    monkeypatch.setenv("SAEJOBS_DB", url)
    return url


def sweep_args(home, model_dir, *, n_tokens: int = 40, batch_size: int = 4) -> list[str]:
    """Register and download (locally) a synthetic SAE for the tiny Gemma 2; the sweep's CLI arguments."""
    sae = make(home, d_model=64, d_sae=256, layer=1)
    submitted(saejobs("download", sae.id, "--source", str(sae.mirror), "--local", "--json"))
    args = ["sweep", "--sae", sae.id, "--feature", FEATURES, "--strength", STRENGTHS, "--n-tokens", str(n_tokens),
            "--model", str(model_dir), "--batch-size", str(batch_size), "--json"]
    for p in PROMPTS:
        args += ["--prompt", p]
    return args


def stored(job_id: str) -> int:
    sweep = results.sweep_for_job(job_id)
    if sweep is None:
        return 0
    with session() as s:
        return s.scalar(select(func.count()).select_from(Generation).where(Generation.sweep_id == sweep.id))


class Hold:
    """A worker held at a failpoint (``engine.failpoints``' pause): the test acts on a worker known to be at
    that instant, then lets it go on. No timing window: the worker cannot finish meanwhile."""

    def __init__(self, folder, spec: str):
        self.folder, self.point = folder, spec.partition(":")[0]
        self.env = {"SAEJOBS_PAUSE_AT": spec, "SAEJOBS_PAUSE_DIR": str(folder)}

    def wait(self, timeout: float = 180) -> None:
        from tests.queue_harness import wait_for

        wait_for(lambda: (self.folder / f"{self.point}.paused").exists(), timeout, f"the worker to reach {self.point}")

    def release(self) -> None:
        (self.folder / f"{self.point}.go").touch()


def held(start_worker, args: list[str], folder, spec: str = "sweep.chunk_stored:3"):
    """A worker, and a sweep it has taken, holding at ``spec`` (by default: 3 chunks stored, progress
    not yet reported)."""
    hold = Hold(folder, spec)
    worker = start_worker(env=hold.env)
    job = submitted(saejobs(*args))
    hold.wait()
    return worker, job, hold


def under_way(start_worker, args: list[str], past: float = 0.2):
    """A worker, and a sweep it has taken past ``past`` of its configurations."""
    from saejobs.db import jobs
    from tests.queue_harness import wait_for

    worker = start_worker()
    job = submitted(saejobs(*args))
    wait_for(lambda: jobs.get(job["id"]).progress > past, 120, "the sweep to be under way")
    return worker, job


def account(ledger, job_id: str) -> None:
    """A finished fault sweep's rows into the ledger: expected, and lost (missing configurations)."""
    ledger.add("rows_expected", N_CONFIGS)
    ledger.add("rows_lost", N_CONFIGS - len(outputs(job_id)))
    unscored = [r["config_key"] for r in results.generation_rows(job_id) if not r["scores"]]
    ledger.add("rows_unscored", len(unscored))  # scores are written in their chunk's transaction
    assert not unscored, f"{len(unscored)} rows stored without their scores"


def outputs(job_id: str) -> dict[str, list[int]]:
    """config key → generated token ids: what two runs of one sweep must agree on."""
    return {r["config_key"]: r["token_ids"] for r in results.generation_rows(job_id)}
