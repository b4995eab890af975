"""The fault suite's shared pieces: a ledger of what was survived, written for the README's figures.

Each test adds what it did (``ledger.add("kills", 1)``, rows expected and rows found); at the end of
the session the totals go to ``test-artifacts/faults-summary.json``.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import pytest

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


class Ledger:
    def __init__(self) -> None:
        self.totals: Counter[str] = Counter()
        self.figures: dict[str, float] = {}

    def add(self, what: str, n: int = 1) -> None:
        self.totals[what] += n

    def figure(self, what: str, value: float) -> None:
        """A measured duration (seconds) worth quoting; the worst value seen is kept."""
        self.figures[what] = max(value, self.figures.get(what, value))


@pytest.fixture(scope="session")
def ledger():
    book = Ledger()
    start = time.monotonic()
    yield book
    ARTIFACTS.mkdir(exist_ok=True)
    summary = {"totals": dict(sorted(book.totals.items())),
               "figures_s": {k: round(v, 2) for k, v in sorted(book.figures.items())},
               "suite_s": round(time.monotonic() - start, 1)}
    (ARTIFACTS / "faults-summary.json").write_text(json.dumps(summary, indent=2) + "\n")
