"""What the fidelity tests share: the SAE files' words and layers, the oracle's decoder rows and its unsteered requests."""

from __future__ import annotations

import pytest
import torch

from saejobs.engine.registry.entry import SaeEntry

# Every fidelity test runs in one xdist process: the package's fixtures (the SAEs, built from the model's own
# activations) are made once, and the oracle's memoised requests serve every case.
MARKS = [pytest.mark.model, pytest.mark.xdist_group("fidelity")]
# Every case runs on the CPU, and on the GPU as well where one is present: sampling draws from per-row
# generators on the model's device, so a GPU run is compared with interp-engine on that same GPU.
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
N_TOKENS = 20
WORDS = (" dog", " ocean", "<eos>")  # features 0, 1, 2 of every test SAE; then the ± principal axes
DOG, OCEAN, EOS, AXIS = 0, 1, 2, 3
OTHER_PROMPT = "My favourite thing about long summer evenings by the sea is"  # a longer row: padding


def _entry(layer: int, d_model: int, d_sae: int) -> SaeEntry:
    return SaeEntry(id=f"fidelity/{layer}-res", model="gemma-3-270m", model_hf="google/gemma-3-270m",
                    repo_id="saejobs-test/fidelity", folder=f"resid_post/layer_{layer}", files=("params.safetensors",
                    "config.json"), format="gemma-scope-2", site="res", hook_name=f"blocks.{layer}.hook_resid_post",
                    layer=layer, d_model=d_model, d_sae=d_sae, l0=32, architecture="jumprelu", width=str(d_sae),
                    neuronpedia_id=None)


ROWS: dict = {}  # (device type, layer) -> the SAE file's decoder matrix, as safetensors reads it


UNSTEERED: dict = {}  # an unsteered request's steps, by everything that decides them: computed once per run


def unsteered_steps(oracle, prompt_ids: list[int], settings, seed: int) -> list:
    """interp-engine's steps (token id and ``token_str``) for an unsteered request: they depend only on the prompt's
    ids, the sampling and the seed, so every case of both fidelity files shares them."""
    from interp_engine.steer import generate_stream

    s = settings
    key = (torch.device(oracle.device).type, tuple(prompt_ids), s.temperature, s.top_k, s.top_p, s.presence_penalty,
           seed)
    if key not in UNSTEERED:
        ids = torch.tensor([prompt_ids], device=oracle.device)
        UNSTEERED[key] = list(generate_stream(oracle, ids, max_tokens=N_TOKENS, temperature=s.temperature, top_k=s.top_k,
                                              top_p=s.top_p, presence_penalty=s.presence_penalty, seed=seed))
    return UNSTEERED[key]
