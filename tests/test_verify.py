"""Functional verification on the real Gemma 3 270M with SAEs whose behaviour is known by construction.

The SAE is built from the model's own layer-6 activations on the calibration text (chapter II) with
thresholds for an L0 of 64 (``engine.synthetic.from_activations``); verify measures it on another
text (chapter I). Registered at layer 6 it must PASS with L0 near 64; the same files registered at
layer 12 (the seed's kind of mislabelled folder) must FAIL.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from saejobs.db import jobs
from saejobs.engine import evaluate
from saejobs.engine.hooks import capture
from saejobs.engine.registry import custom
from saejobs.engine.registry.entry import SaeEntry
from saejobs.engine.sae import JumpReLUSAE
from saejobs.engine.synthetic import from_activations, gemma_scope_2_config, write_sae
from tests.dbfixtures import home  # noqa: F401
from tests.queue_harness import broker, start_worker  # noqa: F401
from tests.test_queue import saejobs

pytestmark = pytest.mark.model
L0, DIRECTIONS, LAYER = 64, 320, 6
MODEL = "gemma-3-270m-gguf"


@pytest.fixture(scope="module")
def layer6_params(gemma3):
    ids = evaluate.windows(gemma3.tokenizer, evaluate.CALIBRATION_TEXT.read_text())
    acts = capture(gemma3, f"blocks.{LAYER}.hook_resid_post", ids)[:, 1:].flatten(0, 1)
    return from_activations(acts, L0, DIRECTIONS)


def register(home, params, layer: int, fmt: str) -> SaeEntry:
    files = ("params.npz",) if fmt == "gemma-scope" else ("params.safetensors", "config.json")
    entry = SaeEntry(
        id=f"test-gemma-3-270m/{layer}-built-from-layer-{LAYER}-{fmt}", model="gemma-3-270m",
        model_hf="google/gemma-3-270m", repo_id="saejobs-test/activation-saes", folder=f"{fmt}/layer_{layer}",
        files=files, format=fmt, site="res", hook_name=f"blocks.{layer}.hook_resid_post", layer=layer,
        d_model=params["W_enc"].shape[0], d_sae=params["W_enc"].shape[1], l0=L0, architecture="jumprelu",
        width=str(params["W_enc"].shape[1]), neuronpedia_id=None)
    write_sae(home / "mirror" / entry.repo_id / entry.folder, fmt, params,
              gemma_scope_2_config(entry) if fmt == "gemma-scope-2" else None)
    custom.write([entry], f"verify-{fmt}-{layer}")
    return entry


def verified(home, entry, *mode: str) -> tuple[int, dict, str]:
    got = saejobs("download", entry.id, "--source", str(home / "mirror"), "--local", "--json")
    assert got.returncode == 0, got.stderr
    res = saejobs("verify", entry.id, "--model", MODEL, "--max-tokens", "512", *mode, "--json", timeout=600)
    assert "Traceback" not in res.stderr
    return res.returncode, json.loads(res.stdout), res.stderr


@pytest.mark.parametrize("fmt, mode", [("gemma-scope-2", "--local"), ("gemma-scope", "--wait")])
def test_the_right_layer_passes_and_a_wrong_layer_fails(home, layer6_params, fmt, mode, request):
    if mode == "--wait":
        request.getfixturevalue("broker")
        request.getfixturevalue("start_worker")()
    code, job, _ = verified(home, register(home, layer6_params, LAYER, fmt), mode)
    assert code == 0 and job["result"]["verdict"] == "PASS", job["result"]
    m = job["result"]["functional"]
    assert abs(m["l0"] - L0) / L0 < 0.25, m  # the construction's L0, measured on other text
    assert m["fvu"] < 0.15 and m["cosine"] > 0.98 and m["loss_recovered"] > 0.9 and m["tokens"] == 512

    code, job, err = verified(home, register(home, layer6_params, 12, fmt), mode)
    assert code == 3 and job["result"]["verdict"] == "FAIL", job["result"]
    fails = [r for r in job["result"]["reasons"] if r.startswith("FAIL: ")]
    assert any("L0" in r for r in fails) and any("delta loss" in r for r in fails), fails
    assert err.strip().splitlines()[-1].startswith("saejobs: error: ") and "failed verification" in err
    shown = json.loads(saejobs("results", job["id"], "--json").stdout)[0]
    assert shown["verdict"] == "FAIL" and shown["l0"] == job["result"]["functional"]["l0"]


def test_an_sae_for_another_model_is_refused_before_any_compute(home, layer6_params):
    small = {k: v[: 64] if k in ("W_enc", "b_dec") else v for k, v in layer6_params.items()}
    small["W_dec"] = small["W_dec"][:, :64].copy()
    code, job, err = verified(home, register(home, small, LAYER, "gemma-scope"), "--local")
    assert code == 2 and "d_in 64" in err and "wrong model" in err
    assert job["state"] == "failed" and job["result"].get("functional") is None
    # refused from the model's config on disk: its weights were never loaded (minutes for a 9B on a GPU host)
    messages = [e.message or "" for e in jobs.events(job["id"])]
    assert not any(m.startswith("loading model") for m in messages) and any("d_in 64" in m for m in messages), messages


def test_metrics_of_a_perfect_and_of_an_empty_dictionary(gemma3):
    """A full ± basis with threshold 0 reconstructs exactly; an all-zero SAE is zero ablation."""
    ids = evaluate.windows(gemma3.tokenizer)[:2]
    hook = f"blocks.{LAYER}.hook_resid_post"
    calibration = evaluate.windows(gemma3.tokenizer, evaluate.CALIBRATION_TEXT.read_text())
    acts = capture(gemma3, hook, calibration)[:, 1:].flatten(0, 1)
    d = acts.shape[1]
    assert acts.shape[0] > d  # enough tokens for a full basis
    p = from_activations(acts, l0=d, directions=d)
    perfect = evaluate.evaluate(gemma3, JumpReLUSAE({k: torch.from_numpy(v) for k, v in p.items()}, None), hook, ids)
    assert perfect.tokens == 2 * 128
    assert perfect.fvu < 1e-4 and perfect.cosine > 0.9999 and abs(perfect.delta_loss) < 0.05
    assert perfect.l0 == pytest.approx(d, rel=0.01)  # one of each ± pair fires (ties at 0 aside)

    zero = {k: torch.zeros_like(torch.from_numpy(v)) for k, v in p.items()}
    empty = evaluate.evaluate(gemma3, JumpReLUSAE(zero, None), hook, ids)
    assert empty.l0 == 0 and empty.dead_fraction == 1.0 and empty.cosine == 0.0
    assert empty.fvu > 1 and empty.spliced_loss == pytest.approx(empty.zero_ablation_loss, abs=1e-4)
    assert math.isclose(empty.loss_recovered, 0.0, abs_tol=1e-4)
