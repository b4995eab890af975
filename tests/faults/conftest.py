"""The fault suite's shared pieces: a ledger of what was survived, written for the README's figures.

Each test adds what it did (``ledger.add("kills", 1)``, rows expected and rows found); at the end of
the session each pytest process writes its ledger beside the summary, and the process that ran the session
(xdist's controller, or the only one) sums them into ``test-artifacts/faults-summary.json`` with the suite's
own time (its tests' setup, call and teardown): ``tests/conftest.py``.
"""

from __future__ import annotations

import json
import os
from collections import Counter
import pytest

from tests.artifacts import ARTIFACTS, keep_worst


class Ledger:
    def __init__(self) -> None:
        self.totals: Counter[str] = Counter()
        self.figures: dict[str, float] = {}

    def add(self, what: str, n: int = 1) -> None:
        self.totals[what] += n

    def figure(self, what: str, value: float) -> None:
        keep_worst(self.figures, what, value)


@pytest.fixture(scope="session")
def ledger():
    book = Ledger()
    yield book
    ARTIFACTS.mkdir(exist_ok=True)
    part = {"totals": dict(book.totals), "figures_s": book.figures}
    (ARTIFACTS / f"faults-ledger-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}.json").write_text(json.dumps(part))
