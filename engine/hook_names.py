"""Hook names (TransformerLens' ``blocks.L.<point>``) parsed without torch, so a request naming a hook
is validated where torch is not loaded; ``engine.hooks`` maps each to its module."""

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
