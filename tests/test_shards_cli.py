"""A sweep in shards seen through the CLI: ``jobs show`` and ``jobs list --shards`` (JSON), and lookups by a
shard's id (``results``, ``compare``) that find the shard's sweep. One worker, the tiny Gemma 2, SQLite (the
database does not matter here; ``tests/test_db.py`` covers both)."""

from __future__ import annotations

import json

import pytest

from tests.dbfixtures import home  # noqa: F401
from tests.faults.sweeps import N_CONFIGS, sqlite_db, sweep_args  # noqa: F401
from tests.queue_harness import broker, start_worker  # noqa: F401
from tests.test_queue import saejobs, submitted

pytestmark = pytest.mark.model


def test_jobs_show_list_shards_and_lookups_by_a_shards_id(home, sqlite_db, start_worker, tiny_gemma2_dir, tmp_path):
    args = sweep_args(home, tiny_gemma2_dir, n_tokens=6)
    w = start_worker()
    done = submitted(saejobs(*args, "--shard-size", "10", "--wait", timeout=1200))  # a 2-core machine, loaded
    assert done["state"] == "succeeded" and done["result"]["shards"] == 4 and done["result"]["generations"] == N_CONFIGS

    shown = submitted(saejobs("jobs", "show", done["id"][:8], "--json"))
    assert shown["id"] == done["id"] and shown["state"] == "succeeded" and shown["parent_id"] is None
    shards = shown["shards"]
    assert sorted(s["params"]["shard"] for s in shards) == [[0, 10], [10, 20], [20, 30], [30, N_CONFIGS]]
    assert all(set(s) == {"id", "state", "progress", "attempts", "host", "worker", "error", "params"} for s in shards)
    assert all(s["state"] == "succeeded" and s["progress"] == 1.0 and s["attempts"] == 1 and s["error"] is None
               and str(w.proc.pid) in s["worker"] for s in shards), shards
    ids = {s["id"] for s in shards}
    assert len(ids) == 4 and done["id"] not in ids

    top = submitted(saejobs("jobs", "list", "--json"))
    assert [j["id"] for j in top if j["kind"] == "sweep"] == [done["id"]]  # the sweep's row speaks for its shards
    every = submitted(saejobs("jobs", "list", "--shards", "--json"))
    assert {j["id"] for j in every if j["parent_id"] == done["id"]} == ids
    assert {j["id"] for j in every if j["kind"] == "sweep"} == ids | {done["id"]}
    one = next(j for j in every if j["id"] in ids)
    assert one["params"] == {"shard": next(s["params"]["shard"] for s in shards if s["id"] == one["id"])}

    whole = submitted(saejobs("results", done["id"], "--json"))
    assert len(whole) == N_CONFIGS
    for sid in sorted(ids):  # each shard's id finds its sweep: every row, not only the shard's own
        assert submitted(saejobs("results", sid, "--json")) == whole, sid
    csv_whole = saejobs("results", done["id"], "--csv")
    csv_shard = saejobs("results", sorted(ids)[0], "--csv")
    assert csv_whole.returncode == csv_shard.returncode == 0 and csv_shard.stdout == csv_whole.stdout
    assert len(csv_whole.stdout.strip().splitlines()) == N_CONFIGS + 1  # a header, then one line per row

    # a Neuronpedia answer matched to one of its generations: compare by a shard's id finds the sweep's runs
    gen = next(r for r in whole if r["type"] == "STEERED")
    exported = saejobs("neuronpedia", "request", str(gen["id"]), "--json")
    assert exported.returncode == 0, exported.stderr
    body = json.loads(exported.stdout)["inference"]["body"]
    default = next(r for r in whole if r["type"] == "DEFAULT" and r["prompt"] == gen["prompt"])
    saved = tmp_path / "answer.json"
    saved.write_text(json.dumps({"request": body, "response": {"outputs": [
        {"type": "STEERED", "output": gen["output"]}, {"type": "DEFAULT", "output": default["output"]}]}}))
    (run,) = submitted(saejobs("neuronpedia", "import", str(saved), "--json"))
    assert run["matched"] and run["generation"] == gen["id"]
    by_sweep = submitted(saejobs("compare", done["id"], "--json"))
    assert by_sweep["summary"]["configurations"] == 1 and by_sweep["summary"]["exact"] == 1
    for sid in sorted(ids):
        assert submitted(saejobs("compare", sid, "--json")) == by_sweep, sid
