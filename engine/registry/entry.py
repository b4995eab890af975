"""One SAE as the rest of saejobs sees it, whatever listing it came from."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import StrEnum


class SaeFormat(StrEnum):
    """The SAE file layouts saejobs reads, and the files each has (torch-free: the registry, the Hub
    code and the CLI read these names without loading a reader).

    To add one: a member and its ``params_file`` here, a reader module in ``engine/formats`` and its
    line in ``engine.formats.FORMATS``.
    """

    GEMMA_SCOPE = "gemma-scope"  # Gemma Scope (Gemma 2): params.npz
    GEMMA_SCOPE_2 = "gemma-scope-2"  # Gemma Scope 2 (Gemma 3): params.safetensors + config.json

    @property
    def params_file(self) -> str:
        return {SaeFormat.GEMMA_SCOPE: "params.npz", SaeFormat.GEMMA_SCOPE_2: "params.safetensors"}[self]

    @property
    def config_file(self) -> str | None:
        return CONFIG_FILE if self is SaeFormat.GEMMA_SCOPE_2 else None

    @property
    def files(self) -> tuple[str, ...]:
        return (self.params_file,) + ((self.config_file,) if self.config_file else ())


CONFIG_FILE = "config.json"
PARAMS_FILES = tuple(f.params_file for f in SaeFormat)


class SaeSite(StrEnum):
    """Where an SAE reads the model, as the registry names it, with the names others give that point.

    To add one: a member, its TransformerLens hook suffix, Hugging Face point and Gemma Scope 2
    folder prefix here, and the module it hooks in ``engine.hooks._module``.
    """

    RES = "res"
    MLP = "mlp"
    ATT = "att"

    @property
    def hook_suffix(self) -> str:
        """TransformerLens' name (``blocks.L.<suffix>``), which SAELens and Neuronpedia use."""
        return {SaeSite.RES: "hook_resid_post", SaeSite.MLP: "hook_mlp_out", SaeSite.ATT: "attn.hook_z"}[self]

    def hook_name(self, layer: int) -> str:
        return f"blocks.{layer}.{self.hook_suffix}"

    def hf_point(self, layer: int) -> str:
        """Gemma Scope 2's ``config.json`` name for the point (``hf_hook_point_in``; SAELens 6.54)."""
        return f"model.layers.{layer}." + {SaeSite.RES: "output", SaeSite.MLP: "post_feedforward_layernorm.output",
                                           SaeSite.ATT: "self_attn.o_proj.input"}[self]

    @property
    def gemma_scope_2_prefix(self) -> str:
        """The first part of a Gemma Scope 2 folder name (``resid_post/layer_12_width_16k_l0_small``)."""
        return {SaeSite.RES: "resid_post", SaeSite.MLP: "mlp_out", SaeSite.ATT: "attn_out"}[self]

    @classmethod
    def of_gemma_scope_2(cls, prefix: str) -> SaeSite:
        return next(s for s in cls if s.gemma_scope_2_prefix == prefix)


GEMMA_SCOPE_2_PREFIXES = "|".join(s.gemma_scope_2_prefix for s in SaeSite)  # a regex alternation, for folder names


@dataclass(frozen=True)
class SaeEntry:
    id: str  # Neuronpedia id ("gemma-2-2b/20-gemmascope-res-16k") or explicit "repo/folder" path
    model: str  # Neuronpedia model id: "gemma-2-2b", "gemma-3-270m"
    model_hf: str  # Hugging Face model id: "google/gemma-2-2b"
    repo_id: str  # "google/gemma-scope-2b-pt-res"
    folder: str  # "layer_20/width_16k/average_l0_71"
    files: tuple[str, ...]  # the format's files (SaeFormat.files)
    format: str  # a SaeFormat value
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
        d = {k: str(v) if isinstance(v, StrEnum) else v for k, v in asdict(self).items()}
        d["files"] = list(self.files)
        return d
