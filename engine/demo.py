"""The demonstration SAE: synthetic, in Gemma Scope 2's exact layout, for Gemma 3 270M at layer 6.

It is not a trained SAE and is labelled so everywhere (its id, repo and config say "synthetic").
Its first features' decoder rows are the unit directions of chosen tokens' embeddings, so steering
along feature i visibly pulls the text toward word i; the rest are random unit rows. It lets the
whole path (mirror download, verify, sweep, results) run offline on a real model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from engine.registry.entry import SaeEntry
from engine.synthetic import gemma_scope_2_config, random_params, write_sae

WORDS = (" dog", " ocean", " music", " space")
LAYER = 6
D_SAE = 1024
ENTRY = SaeEntry(
    id="saejobs-demo/gemma-3-270m/6-synthetic-res-1k", model="gemma-3-270m", model_hf="google/gemma-3-270m",
    repo_id="saejobs-demo/synthetic-gemma-scope-2-270m", folder=f"resid_post/layer_{LAYER}_width_1k_synthetic",
    files=("params.safetensors", "config.json"), format="gemma-scope-2", site="res",
    hook_name=f"blocks.{LAYER}.hook_resid_post", layer=LAYER, d_model=640, d_sae=D_SAE, l0=None,
    architecture="jumprelu", width="1k", neuronpedia_id=None)


def build(embeddings: np.ndarray, token_ids: list[int], mirror: Path) -> Path:
    """Write the SAE into ``mirror`` (laid out like the Hub); returns its folder."""
    params = random_params(ENTRY.d_model, ENTRY.d_sae, seed=0)
    for i, t in enumerate(token_ids):
        row = embeddings[t].astype(np.float32)
        params["W_dec"][i] = row / np.linalg.norm(row)
    params["W_enc"] = np.ascontiguousarray(params["W_dec"].T * 0.5)
    config = {**gemma_scope_2_config(ENTRY), "synthetic": True,
              "note": "saejobs demonstration SAE; features 0.." f"{len(token_ids) - 1} point at tokens {list(WORDS)}"}
    return write_sae(mirror / ENTRY.repo_id / ENTRY.folder, ENTRY.format, params, config)
