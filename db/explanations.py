"""Placeholder until the explanation cache lands (issue 29 item 3)."""

from __future__ import annotations

from saejobs.engine.errors import UsageError


def labels(sae_id: str, indices) -> dict[int, str]:
    return {}


def resolve_label(sae_id: str, text: str) -> tuple[int, str]:
    raise UsageError(f"no cached explanation of {sae_id} matches '{text}'")
