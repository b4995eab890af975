"""The demonstration SAE: synthetic, in Gemma Scope 2's exact layout, for Gemma 3 270M at layer 6.

It is not a trained SAE and is labelled so everywhere (its id, repo and config say "synthetic").
Its first features' decoder rows are the unit directions of chosen tokens' embeddings, so steering
along feature i visibly pulls the text toward word i; the rest are built from the model's own
activations so that it reconstructs layer 6 well. It lets the whole path (mirror download, verify
with its functional checks, sweep, results) run offline on a real model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from engine.registry.entry import SaeEntry, SaeFormat, SaeSite
from engine.synthetic import from_activations, gemma_scope_2_config, with_steering_rows, write_sae

WORDS = (" dog", " ocean", " music", " space")
LAYER = 6
D_SAE = 1024
L0 = 64
ENTRY = SaeEntry(
    id="saejobs-demo/gemma-3-270m/6-synthetic-res-1k", model="gemma-3-270m", model_hf="google/gemma-3-270m",
    repo_id="saejobs-demo/synthetic-gemma-scope-2-270m", folder=f"resid_post/layer_{LAYER}_width_1k_synthetic",
    files=SaeFormat.GEMMA_SCOPE_2.files, format=SaeFormat.GEMMA_SCOPE_2, site="res",
    hook_name=SaeSite.RES.hook_name(LAYER), layer=LAYER, d_model=640, d_sae=D_SAE, l0=L0,
    architecture="jumprelu", width="1k", neuronpedia_id=None)


def build(lm, mirror: Path) -> Path:
    """Write the SAE into ``mirror`` (laid out like the Hub); returns its folder.

    Features 0..3 are steering-only (they never fire: zero encoder column, negative bias); the rest
    are ± the top principal axes of the model's own layer-6 activations on the bundled calibration
    text (``engine.synthetic.from_activations``), with the threshold set for an L0 of ``L0``, so the
    functional verification has something real to measure and passes.
    """
    from engine.evaluate import CALIBRATION_TEXT, windows
    from engine.hooks import capture

    ids = windows(lm.tokenizer, CALIBRATION_TEXT.read_text())
    acts = capture(lm, ENTRY.hook_name, ids.to(lm.device))[:, 1:].flatten(0, 1)
    params = from_activations(acts, L0, (ENTRY.d_sae - len(WORDS)) // 2)
    embeddings = lm.model.get_input_embeddings().weight.detach().float().cpu().numpy()
    words = np.stack([embeddings[lm.tokenizer(w, add_special_tokens=False).input_ids[0]] for w in WORDS])
    params = with_steering_rows(params, words)
    config = {**gemma_scope_2_config(ENTRY), "synthetic": True,
              "note": f"saejobs demonstration SAE; features 0..{len(WORDS) - 1} point at tokens {list(WORDS)}"}
    return write_sae(mirror / ENTRY.repo_id / ENTRY.folder, ENTRY.format, params, config)
