"""The fault suite's shared pieces: a ledger of what was survived, written for the README's figures.

Each test adds what it did (``ledger.add("kills", 1)``, rows expected and rows found); at the end of
the session the totals go to ``test-artifacts/faults-summary.json``, with the suite's own time (its
tests' setup, call and teardown, whatever else ran in the same session).
"""

from __future__ import annotations

import json
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


_spent = {"s": 0.0, "tests": 0}


def pytest_runtest_logreport(report) -> None:
    if "tests/faults/" in report.nodeid.replace("\\", "/"):
        _spent["s"] += report.duration
        _spent["tests"] += report.when == "call"


@pytest.fixture(scope="session")
def ledger():
    book = Ledger()
    yield book
    ARTIFACTS.mkdir(exist_ok=True)
    summary = {"totals": dict(sorted(book.totals.items())),
               "figures_s": {k: round(v, 2) for k, v in sorted(book.figures.items())},
               "tests": _spent["tests"], "suite_s": round(_spent["s"], 1)}
    (ARTIFACTS / "faults-summary.json").write_text(json.dumps(summary, indent=2) + "\n")
