"""What the fidelity tests share: the SAE files' words and layers, and the oracle's decoder rows."""

from __future__ import annotations

import torch

from saejobs.engine.registry.entry import SaeEntry

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
