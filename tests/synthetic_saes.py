"""Small synthetic SAEs in the exact Gemma Scope layouts, registered and laid out in a local mirror."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from saejobs.engine.registry import custom
from saejobs.engine.registry.entry import SaeEntry
from saejobs.engine.synthetic import gemma_scope_2_config, random_params, write_sae


@dataclass
class MirroredSae:
    entry: SaeEntry
    mirror: Path

    @property
    def id(self) -> str:
        return self.entry.id

    @property
    def mirror_folder(self) -> Path:
        return self.mirror / self.entry.repo_id / self.entry.folder


def make(home: Path, *, fmt: str = "gemma-scope", d_model: int = 64, d_sae: int = 2048, layer: int = 1,
         model: str = "tiny-gemma-2", seed: int = 0, sae_id: str | None = None) -> MirroredSae:
    """Write the SAE into ``home/mirror`` and its entry into ``home/registry.d`` (``sae_id``: an id of
    Neuronpedia's form ``model/source`` instead of the test prefix)."""
    files = ("params.npz",) if fmt == "gemma-scope" else ("params.safetensors", "config.json")
    entry = SaeEntry(
        id=sae_id or f"test-{model}/{layer}-synthetic-res-{d_sae}", model=model, model_hf=f"saejobs-test/{model}",
        repo_id="saejobs-test/synthetic-saes", folder=f"layer_{layer}/width_{d_sae}/seed_{seed}", files=files,
        format=fmt, site="res", hook_name=f"blocks.{layer}.hook_resid_post", layer=layer, d_model=d_model,
        d_sae=d_sae, l0=None, architecture="jumprelu", width=str(d_sae), neuronpedia_id=None)
    mirror = home / "mirror"
    write_sae(mirror / entry.repo_id / entry.folder, fmt, random_params(d_model, d_sae, seed),
              gemma_scope_2_config(entry) if fmt == "gemma-scope-2" else None)
    custom.write([entry], f"test-{layer}-{d_sae}-{seed}")
    return MirroredSae(entry, mirror)


@pytest.fixture
def tiny_sae(home) -> MirroredSae:
    return make(home)
