"""Secrets stay secret: ``HF_TOKEN`` and ``NEURONPEDIA_API_KEY`` are in every process's environment
through a failed (wrong token) and a good gated download and a sweep; neither may appear in any
worker log, CLI output, job row, event or the database's bytes (WAL included)."""

from __future__ import annotations

import json

import pytest

from tests.dbfixtures import home  # noqa: F401
from tests.queue_harness import broker, start_worker  # noqa: F401
from tests.test_download_hub import db, error_line, hub, served  # noqa: F401
from tests.test_queue import saejobs, submitted

pytestmark = pytest.mark.model
HF = "hf_faultSuiteSecret0123456789abcdef"
NP = "sk-np-faultSuiteSecret0123456789"


def test_tokens_never_reach_logs_rows_or_errors(db, home, hub, served, start_worker, tiny_gemma2_dir, monkeypatch,
                                                 ledger):
    hub.gated[served.entry.repo_id] = HF
    monkeypatch.setenv("NEURONPEDIA_API_KEY", NP)
    monkeypatch.setenv("HF_TOKEN", HF[:-4] + "0000")  # a token without access to the gated repo
    refused = saejobs("download", served.id, "--local")
    assert refused.returncode == 2 and "has no access" in error_line(refused)

    monkeypatch.setenv("HF_TOKEN", HF)
    w = start_worker()
    outputs = [refused]
    job = submitted(saejobs("download", served.id, "--wait", "--json"))
    assert job["state"] == "succeeded"
    failing = saejobs("sweep", "--sae", served.id, "--feature", "1", "--strength", "4", "--prompt", "Hi",
                      "--n-tokens", "4", "--model", str(tiny_gemma2_dir), "--wait", "--json")
    outputs.append(failing)
    sweep = json.loads(failing.stdout)
    assert sweep["state"] == "failed"  # the served SAE's d_model (256) is not the tiny model's: an error text too
    for args in (["jobs", "list", "--json"], ["jobs", "show", job["id"], "--events", "--json"],
                 ["jobs", "show", sweep["id"], "--events", "--json"], ["results", "--json"], ["workers", "--json"]):
        outputs.append(saejobs(*args))
    texts = [w.text(), *(o.stdout + o.stderr for o in outputs)]
    stored = b"".join(p.read_bytes() for p in home.glob("saejobs.db*") if p.is_file())
    for secret in (HF, HF[:-4] + "0000", NP):
        assert not any(secret in t for t in texts), secret
        assert secret.encode() not in stored, secret
    ledger.add("secret_greps", 2 * (len(texts) + 1))
