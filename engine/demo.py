"""The demonstration SAE: synthetic, in Gemma Scope 2's exact layout, for Gemma 3 270M at layer 6.

It is not a trained SAE and is labelled so everywhere (its id, repo and config say "synthetic").
Its first features' decoder rows are the directions of chosen tokens' embeddings, so steering
along feature i visibly pulls the text toward word i, and their encoder columns detect word i in the
model's own layer-6 activations, so the concept score (``engine.score``) means something; the rest
are built from the model's own activations so that it reconstructs layer 6 well. It lets the whole
path (mirror download, verify with its functional checks, sweep, results) run offline on a real model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from saejobs.engine.registry.entry import SaeEntry, SaeFormat, SaeSite
from saejobs.engine.synthetic import from_activations, gemma_scope_2_config, with_steering_rows, word_readers, write_sae

WORDS = (" dog", " ocean", " music", " space")
LAYER = 6
D_SAE = 1024
L0 = 64
CONTEXTS = ("I saw a{w} today.", "The{w} was here.", "There is nothing like the{w}.",
            "We talked about the{w} for hours.", "A{w} and another{w}.", "My favourite word is{w}.")
ENTRY = SaeEntry(
    id="saejobs-demo/gemma-3-270m/6-synthetic-res-1k", model="gemma-3-270m", model_hf="google/gemma-3-270m",
    repo_id="saejobs-demo/synthetic-gemma-scope-2-270m", folder=f"resid_post/layer_{LAYER}_width_1k_synthetic",
    files=SaeFormat.GEMMA_SCOPE_2.files, format=SaeFormat.GEMMA_SCOPE_2, site="res",
    hook_name=SaeSite.RES.hook_name(LAYER), layer=LAYER, d_model=640, d_sae=D_SAE, l0=L0,
    architecture="jumprelu", width="1k", neuronpedia_id=None)


def build(lm, mirror: Path) -> Path:
    """Write the SAE into ``mirror`` (laid out like the Hub); returns its folder.

    Features 0..3 steer toward their words (decoder rows along the words' embeddings) and fire where
    their word is in the text (encoder columns from ``engine.synthetic.word_readers`` on the word in
    ``CONTEXTS``; the decoder direction itself does not read the word at layer 6); the rest
    are ± the top principal axes of the model's own layer-6 activations on the bundled calibration
    text (``engine.synthetic.from_activations``), with the threshold set for an L0 of ``L0``, so the
    functional verification has something real to measure and passes.
    """
    from saejobs.engine.evaluate import CALIBRATION_TEXT, windows
    from saejobs.engine.hooks import capture

    ids = windows(lm.tokenizer, CALIBRATION_TEXT.read_text())
    acts = capture(lm, ENTRY.hook_name, ids.to(lm.device))[:, 1:].flatten(0, 1)
    params = from_activations(acts, L0, (ENTRY.d_sae - len(WORDS)) // 2)
    embeddings = lm.model.get_input_embeddings().weight.detach().float().cpu().numpy()
    words = np.stack([embeddings[lm.tokenizer(w, add_special_tokens=False).input_ids[0]] for w in WORDS])
    readers = word_readers(acts, [_word_acts(lm, w) for w in WORDS])
    params = with_steering_rows(params, words, readers=readers)
    config = {**gemma_scope_2_config(ENTRY), "synthetic": True,
              "note": f"saejobs demonstration SAE; features 0..{len(WORDS) - 1} point at tokens {list(WORDS)}"}
    return write_sae(mirror / ENTRY.repo_id / ENTRY.folder, ENTRY.format, params, config)


def _word_acts(lm, word: str):
    """The layer-6 activations at ``word``'s token in each of ``CONTEXTS`` (k, d_model)."""
    import torch

    from saejobs.engine.hooks import capture

    tok = lm.tokenizer
    target = tok(word, add_special_tokens=False).input_ids[0]
    out = []
    for text in CONTEXTS:
        ids = [tok.bos_token_id] + tok(text.format(w=word), add_special_tokens=False).input_ids
        act = capture(lm, ENTRY.hook_name, torch.tensor([ids], device=lm.device))[0]
        out += [act[i] for i, t in enumerate(ids) if t == target]
    return torch.stack(out)
