"""One SAE as the rest of saejobs sees it, whatever listing it came from."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class SaeEntry:
    id: str  # Neuronpedia id ("gemma-2-2b/20-gemmascope-res-16k") or explicit "repo/folder" path
    model: str  # Neuronpedia model id: "gemma-2-2b", "gemma-3-270m"
    model_hf: str  # Hugging Face model id: "google/gemma-2-2b"
    repo_id: str  # "google/gemma-scope-2b-pt-res"
    folder: str  # "layer_20/width_16k/average_l0_71"
    files: tuple[str, ...]  # ("params.npz",) or ("params.safetensors", "config.json")
    format: str  # "gemma-scope" (params.npz) | "gemma-scope-2" (params.safetensors + config.json)
    site: str  # "res" | "mlp" | "att"
    hook_name: str  # "blocks.20.hook_resid_post" | "blocks.L.hook_mlp_out" | "blocks.L.attn.hook_z"
    layer: int
    d_model: int  # the SAE's input width (d_in): n_heads * d_head for attention SAEs
    d_sae: int
    l0: float | None  # the listing's L0 (Gemma Scope: the folder's average_l0_N)
    architecture: str  # "jumprelu"
    width: str  # "16k", "65k", "1m"
    neuronpedia_id: str | None  # None for folders Neuronpedia does not serve

    def to_json(self) -> dict:
        d = asdict(self)
        d["files"] = list(self.files)
        return d
