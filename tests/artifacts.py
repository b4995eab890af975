"""Where tests leave what people read afterwards (``test-artifacts/``: the fault suite's summary, report
screenshots), and the one rule for merging a measured figure."""

from __future__ import annotations

from pathlib import Path

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


def keep_worst(figures: dict[str, float], what: str, value: float) -> None:
    """A measured duration (seconds) worth quoting: the worst value seen is the one kept."""
    figures[what] = max(value, figures.get(what, value))
