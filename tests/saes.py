"""SaeEntry values for tests that must not depend on the registry's data."""

from saejobs.engine.registry.entry import SaeEntry


def entry(fmt: str = "gemma-scope", d_model: int = 32, d_sae: int = 64, layer: int = 3, site: str = "res") -> SaeEntry:
    hook = {"res": f"blocks.{layer}.hook_resid_post", "mlp": f"blocks.{layer}.hook_mlp_out", "att": f"blocks.{layer}.attn.hook_z"}
    return SaeEntry(
        id=f"test/{layer}-{fmt}-{site}", model="gemma-3-270m", model_hf="google/gemma-3-270m",
        repo_id="test/repo", folder=f"layer_{layer}", files=("params.npz",) if fmt == "gemma-scope" else ("params.safetensors", "config.json"),
        format=fmt, site=site, hook_name=hook[site], layer=layer, d_model=d_model, d_sae=d_sae, l0=None,
        architecture="jumprelu", width="64", neuronpedia_id=None,
    )
