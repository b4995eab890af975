"""A strength search through the queue: a real worker runs the search job and each round's sweep job
(scored as it is stored), and the answer equals ``--local``'s. Tiny random Gemma 2 and a synthetic SAE
at its width, so it takes seconds; the code paths are a real search's."""

from __future__ import annotations

import pytest

from saejobs.db import jobs, results
from tests.dbfixtures import home  # noqa: F401
from tests.queue_harness import broker, start_worker  # noqa: F401
from tests.synthetic_saes import make
from tests.test_queue import saejobs, submitted

pytestmark = pytest.mark.model


def test_a_queued_search_runs_its_rounds_on_the_worker_and_agrees_with_local(home, tiny_gemma2_dir, start_worker):
    sae = make(home, d_model=64, d_sae=256, layer=1)
    submitted(saejobs("download", sae.id, "--source", str(sae.mirror), "--local", "--json"))
    args = ["search", "--sae", sae.id, "--feature", "3", "--prompt", "Once upon a time", "--range", "0:16",
            "--points", "3", "--rounds", "1", "--n-tokens", "8", "--model", str(tiny_gemma2_dir), "--json"]
    local = submitted(saejobs(*args, "--local"))
    worker = start_worker()
    queued = submitted(saejobs(*args, "--wait"))
    assert local["state"] == queued["state"] == "succeeded"
    for key in ("chosen", "curves"):
        assert queued["result"][key] == local["result"][key]
    assert len(queued["result"]["rounds"]) == 2
    for round_id in queued["result"]["rounds"]:
        r = jobs.get(round_id)
        assert r.kind == "sweep" and r.state == "succeeded" and r.worker == queued["worker"]
        rows = results.generation_rows(round_id)
        assert rows and all(g["scores"] and g["scores"]["nll"] > 0 for g in rows)
    assert " ready." in worker.text()
