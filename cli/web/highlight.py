"""A completion as its tokens, each with the concept activation scoring stored for it (``concept_tokens``):
what the grid and a generation's page colour. Token text comes from the sweep's own tokenizer, decoded
incrementally so that a character split over several byte tokens lands whole on the token that ends it."""

from __future__ import annotations

from functools import lru_cache

LEVELS = 9  # colour steps (CSS classes a1..a9); a0: the feature does not fire
TOKENIZERS = 8  # kept loaded (and loaded before serving: the latest sweeps' models)


def preload() -> None:
    """Load the latest sweeps' tokenizers now, so that no page waits on one (seconds for a large vocabulary)."""
    from saejobs.db import results

    for source in results.model_sources(TOKENIZERS):
        tokenizer(source)


@lru_cache(maxsize=TOKENIZERS)
def tokenizer(source: str):
    """The model's tokenizer (cached for the server's life), or None when it cannot be loaded here: pages then
    show plain text and say so."""
    from saejobs.engine.errors import SaejobsError
    from saejobs.engine.models import load_tokenizer

    try:
        return load_tokenizer(source, local_only=True)
    except (SaejobsError, OSError, ValueError):
        return None


def pieces(tok, ids: list[int]) -> list[str]:
    """The text each token adds: ``decode(ids[:i+1])`` minus ``decode(ids[:i])``."""
    out, before = [], ""
    for i in range(len(ids)):
        text = tok.decode(ids[:i + 1], skip_special_tokens=False)
        out.append(text[len(before):] if text.startswith(before) else text)
        before = text
    return out


def level(act: float, top: float) -> int:
    """0 where the feature does not fire; else 1..LEVELS by the activation's share of ``top``."""
    if act <= 0 or top <= 0:
        return 0
    return 1 + min(LEVELS - 1, int((LEVELS - 1) * act / top))


def tokens(tok, row: dict, feature: str | None, top: float | None = None) -> list[dict] | None:
    """The row's completion as ``[{"text", "act", "level"}]`` for ``feature`` (a key of its ``concept_tokens``),
    or None when the row has no per-token activations for it or no tokenizer is at hand. ``top``: the
    activation that gets the strongest colour (default: the row's own maximum)."""
    acts = ((row.get("scores") or {}).get("concept_tokens") or {}).get(feature) if feature is not None else None
    if tok is None or acts is None:
        return None
    ids = list(row["token_ids"])[:len(acts)]  # the completion without the EOS that ended it
    top = max(acts, default=0.0) if top is None else top
    return [{"text": t, "act": a, "level": level(a, top)} for t, a in zip(pieces(tok, ids), acts)]
