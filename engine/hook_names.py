"""Hook names (TransformerLens' ``blocks.L.<point>``) parsed without torch, so a request naming a hook
is validated where torch is not loaded; ``engine.hooks`` maps each to its module. The activation's width at
each point comes from the model's config alone (``site_width``), so an SAE can be checked against a model
before its weights load."""

from __future__ import annotations

import re
from dataclasses import dataclass

from saejobs.engine.errors import UsageError
from saejobs.engine.registry.entry import SaeSite

RESID_PRE = "hook_resid_pre"  # a steering point no Gemma Scope SAE reads: decoder layer L's input
SUFFIXES: dict[str, SaeSite | str] = {**{site.hook_suffix: site for site in SaeSite}, RESID_PRE: RESID_PRE}
PATTERN = re.compile(r"^blocks\.(\d+)\.(" + "|".join(re.escape(s) for s in SUFFIXES) + ")$")


@dataclass(frozen=True)
class HookPoint:
    layer: int
    site: SaeSite | str  # an SAE site, or RESID_PRE

    @property
    def name(self) -> str:
        return f"blocks.{self.layer}.{self.site}" if self.site == RESID_PRE else self.site.hook_name(self.layer)


def parse_hook(name: str) -> HookPoint:
    m = PATTERN.match(name.strip())
    if not m:
        raise UsageError(f"unknown hook '{name}'; expected one of "
                         + ", ".join(f"blocks.L.{suffix}" for suffix in SUFFIXES))
    return HookPoint(int(m[1]), SUFFIXES[m[2]])


def site_width(config, site: SaeSite | str) -> int:
    """The activation width at a hook point of a model with this (text) config: heads × head_dim at
    ``attn.hook_z`` (o_proj's input), else d_model."""
    if site == SaeSite.ATT:
        heads = config.num_attention_heads
        return int(heads * (getattr(config, "head_dim", None) or config.hidden_size // heads))
    return int(config.hidden_size)
