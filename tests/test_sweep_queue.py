"""Sweeps through the queue give the rows ``--local`` gives (the faults — kills, cancels, SIGTERM — are
in ``tests/faults``).

The model is a tiny random Gemma 2 directory and the SAE a synthetic one at its width, so a sweep
takes seconds; the code paths are the ones a Gemma Scope sweep takes.
"""

from __future__ import annotations

import pytest

from saejobs.db import results
from tests.dbfixtures import home, sqlite_url  # noqa: F401
from tests.queue_harness import broker, start_worker  # noqa: F401
from tests.synthetic_saes import make
from tests.test_queue import saejobs, submitted

pytestmark = pytest.mark.model
N_CONFIGS = 2 + 4 * 4 * 2  # DEFAULT per prompt, then features × strengths × prompts


@pytest.fixture
def sweep_args(home, sqlite_url, tiny_gemma2_dir):
    sae = make(home, d_model=64, d_sae=256, layer=1)
    submitted(saejobs("download", sae.id, "--source", str(sae.mirror), "--local", "--json"))
    return ["sweep", "--sae", sae.id, "--feature", "1,2,3,4", "--strength", "0,4,8,16", "--prompt", "Once upon a time",
            "--prompt", "The capital of France is", "--n-tokens", "40", "--model", str(tiny_gemma2_dir),
            "--batch-size", "1", "--json"]


def generations(job_id: str) -> list[dict]:
    return sorted(({k: r[k] for k in ("config_key", "type", "features", "prompt", "seed", "output", "token_ids")}
                   for r in results.generation_rows(job_id)), key=lambda r: r["config_key"])


def test_local_gives_the_same_rows_as_the_queue(sweep_args, start_worker):
    local = submitted(saejobs(*sweep_args, "--local"))
    start_worker()
    queued = submitted(saejobs(*sweep_args, "--wait"))
    assert local["state"] == queued["state"] == "succeeded"
    assert local["result"]["generations"] == queued["result"]["generations"] == N_CONFIGS
    a, b = generations(local["id"]), generations(queued["id"])
    assert len(a) == N_CONFIGS and a == b
    sa, sb = results.sweep_for_job(local["id"]), results.sweep_for_job(queued["id"])
    assert sa.settings == sb.settings and sa.sae_id == sb.sae_id and sa.model == sb.model
    assert {k: v for k, v in sa.provenance.items() if k != "device"} == {k: v for k, v in sb.provenance.items() if k != "device"}
