"""A strength search through the queue: a real worker runs the search job and each round's sweep job
(scored as it is stored), and the answer equals ``--local``'s. Tiny random Gemma 2 and a synthetic SAE
at its width, so it takes seconds; the code paths are a real search's."""

from __future__ import annotations

import math

import pytest

from saejobs.db import jobs, results
from saejobs.db import workers as worker_rows
from tests.dbfixtures import home  # noqa: F401
from tests.queue_harness import broker, start_worker  # noqa: F401
from tests.synthetic_saes import make
from tests.test_queue import saejobs, submitted

pytestmark = pytest.mark.model


def close(a, b) -> bool:
    """Equal, floats to 1e-5 relative (the same tokens scored in batches of other shapes round differently)."""
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-7)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(close(x, y) for x, y in zip(a, b))
    return a == b


def test_a_queued_search_fans_its_rounds_out_as_shards_and_agrees_with_local(home, tiny_gemma2_dir, start_worker):
    """Two live workers: each round is a sweep split into shards (as a submitted sweep is), sent to the
    queue, each shard run once by one of them (the search's worker runs every shard no one claimed), and the
    answer equals ``--local``'s, whose rounds run whole in its process."""
    sae = make(home, d_model=64, d_sae=256, layer=1)
    submitted(saejobs("download", sae.id, "--source", str(sae.mirror), "--local", "--json"))
    args = ["search", "--sae", sae.id, "--feature", "3", "--prompt", "Once upon a time", "--range", "0:16",
            "--points", "3", "--rounds", "1", "--n-tokens", "8", "--model", str(tiny_gemma2_dir), "--json"]
    local = submitted(saejobs(*args, "--local"))
    assert all(jobs.shards(r) == [] for r in local["result"]["rounds"])
    start_worker(), start_worker()
    queued = submitted(saejobs(*args, "--wait"))
    workers = {w.name for w in worker_rows.listing(None)}
    assert len(workers) == 2 and queued["worker"] in workers
    assert local["state"] == queued["state"] == "succeeded"
    for key in ("chosen", "curves"):  # a shard batches other rows than a whole round: scores equal to rounding
        assert close(queued["result"][key], local["result"][key]), key
    assert len(queued["result"]["rounds"]) == 2
    for round_id in queued["result"]["rounds"]:
        r = jobs.get(round_id)
        shards = jobs.shards(round_id)
        assert r.kind == "sweep" and r.state == "succeeded" and len(shards) > 1
        assert all(s.state == "succeeded" and s.attempts == 1 and s.worker in workers for s in shards)
        rows = results.generation_rows(round_id)
        assert len(rows) == sum(b - a for a, b in (s.params["shard"] for s in shards))
        assert rows and all(g["scores"] and g["scores"]["nll"] > 0 for g in rows)


def test_a_search_generates_its_rounds_as_a_sweep_with_the_same_options(home, tiny_gemma2_dir, tmp_path):
    """``search`` takes the sweep's generation options (one shared set): a chat search, sampled with
    interp-engine's top-p, steered by orthogonal decomposition of normalized vectors, in batches of 2, at
    seed 5. Its round is a sweep job whose params carry every one of them, and whose tokens equal a
    ``sweep --local`` given the same options at the round's strengths."""
    import json

    from click.testing import CliRunner

    from saejobs.cli.main import cli
    from tests.test_chat import TEMPLATE

    def run(*args):  # in this process: three commands' imports and model loads once
        r = CliRunner().invoke(cli, [*args, "--local", "--json"])
        assert r.exit_code == 0, r.output
        return json.loads(r.stdout)

    sae = make(home, d_model=64, d_sae=256, layer=1)
    run("download", sae.id, "--source", str(sae.mirror))
    chats = tmp_path / "chats.json"
    chats.write_text(json.dumps([[{"role": "user", "content": "Write one sentence about the sea."}]]))
    opts = ["--chat", str(chats), "--system", "Be brief.", "--chat-template", str(TEMPLATE), "--temperature", "0.7",
            "--sampling", "interp-engine", "--top-p", "0.9", "--method", "orthogonal", "--normalize",
            "--batch-size", "2", "--seed", "5", "--n-tokens", "6", "--model", str(tiny_gemma2_dir)]
    found = run("search", "--sae", sae.id, "--feature", "3", "--range", "0:16", "--points", "3", "--rounds", "0", *opts)
    assert found["state"] == "succeeded", found
    (round_id,) = found["result"]["rounds"]
    p = jobs.get(round_id).params
    assert (p["temperature"], p["sampling_semantics"], p["top_p"], p["method"], p["normalize"], p["batch_size"],
            p["seeds"], p["n_tokens"], p["chats"][0][0]["content"]) == (
        0.7, "interp-engine", 0.9, "ORTHOGONAL_DECOMP", True, 2, [5], 6, "Be brief.")
    assert p["chat_template"] == TEMPLATE.read_text() and p["prompts"] == []
    swept = run("sweep", "--sae", sae.id, "--feature", "3", "--strength", ",".join(str(s) for s in p["strengths"]), *opts)

    def tokens(job_id):
        return {(r["type"], tuple(r["strengths"]), r["prompt"]): r["token_ids"] for r in results.generation_rows(job_id)}

    assert tokens(round_id) == tokens(swept["id"]) and len(tokens(round_id)) == 4  # DEFAULT and three strengths
