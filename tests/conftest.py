"""Session-wide: one converted Gemma 3 270M shared by every test (and every worker subprocess)."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import pytest

from saejobs.engine import paths
from tests.artifacts import ARTIFACTS, keep_worst

def pytest_configure(config):
    """Redis and PostgreSQL: the ones the tests are pointed at, or private real ones started now. Under xdist,
    one compute thread per process (the worker, and the CLI and worker processes its tests start): two xdist
    workers each running torch on every core oversubscribe a small machine, and OpenMP's spinning threads then
    run many times slower than one thread each (a tiny sweep took minutes)."""
    from tests import services

    if os.environ.get("PYTEST_XDIST_WORKER"):
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(var, "1")
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(1)

    services.ensure_redis()
    services.ensure_postgres()
    if os.environ.get("SAEJOBS_EXPECT_CUDA") == "1":
        import torch

        if not torch.cuda.is_available():  # the cuda cases would quietly not exist: a GPU run that tested no GPU
            raise pytest.UsageError("SAEJOBS_EXPECT_CUDA=1 but torch sees no CUDA device "
                                    f"(torch {torch.__version__}, CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r})")


class OurDeprecations(logging.Handler):
    """transformers says some deprecations as log lines (``logger.warning_once``), not warnings: keep those
    emitted while a saejobs module is on the stack (our calls; a reference's own calls are not ours)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.said: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "deprecat" not in record.getMessage().lower():
            return
        f = sys._getframe()
        while f is not None:
            if f.f_globals.get("__name__", "").startswith("saejobs."):
                self.said.append(f"{record.name}: {record.getMessage()} (called from {f.f_globals['__name__']})")
                return
            f = f.f_back


DEPRECATIONS = OurDeprecations()
logging.getLogger("transformers").addHandler(DEPRECATIONS)


@pytest.fixture(autouse=True)
def no_deprecation_lines_for_our_calls():
    """Fail the test during which saejobs code made transformers log a deprecation (issue 25.5); our own
    deprecation warnings are errors by pyproject's ``filterwarnings``."""
    DEPRECATIONS.said.clear()
    yield
    said, DEPRECATIONS.said[:] = list(DEPRECATIONS.said), []
    if said:
        pytest.fail(f"transformers logged a deprecation for a saejobs call: {said[0]}", pytrace=False)


def pytest_report_header(config):
    from tests import services

    return [f"started for this session: {s}" for s in services.started] or None


# Tests give each case an empty $SAEJOBS_HOME, but the converted model (a minute to make) is shared:
# pin the model cache to where it is before any test moves home (subprocesses inherit it).
os.environ.setdefault("SAEJOBS_MODEL_CACHE", str(paths.model_cache()))


@pytest.fixture
def saejobs_home(tmp_path, monkeypatch) -> Path:
    """An empty ``$SAEJOBS_HOME`` for one test; the model cache stays the shared one."""
    h = tmp_path / "saejobs-home"
    h.mkdir()
    monkeypatch.setenv("SAEJOBS_HOME", str(h))
    return h


@pytest.fixture(scope="session")
def gemma3():
    """The real Gemma 3 270M from the PyPI package, loaded once (first run converts the GGUF: ~25 s)."""
    from saejobs.engine.models import load_model

    return load_model("gemma-3-270m-gguf")


@pytest.fixture(scope="session")
def demo_mirror(gemma3, tmp_path_factory) -> Path:
    """The demo SAE (``engine/demo.py``) written once per pytest process into a Hub-like mirror; tests download
    from it (``--source``) and never write into it."""
    from saejobs.engine import demo

    mirror = tmp_path_factory.mktemp("demo-mirror")
    demo.build(gemma3, mirror)
    return mirror


@pytest.fixture(scope="session")
def tiny_gemma2():
    """A tiny random Gemma 2 with a byte-level tokenizer, built in memory: no real model needed."""
    from saejobs.engine.models import tiny_gemma2 as make

    return make(seed=0)


@pytest.fixture(scope="session")
def tiny_gemma2_dir(gemma3) -> Path:
    """A small random Gemma 2 with Gemma 3's tokenizer saved as a transformers directory (queue tests)."""
    from tests.models import tiny_gemma2_dir as make

    return make(gemma3)


# The fault suite's summary (tests/faults/conftest.py writes one ledger per pytest process): the process that
# runs the session — xdist's controller, which sees every test's report, or the only process — sums them.
_faults_spent = {"s": 0.0, "tests": 0, "counting": False}  # counted where the session is run (all reports arrive)


def _runs_the_session(config) -> bool:
    return not hasattr(config, "workerinput")


def pytest_sessionstart(session):
    _faults_spent["counting"] = _runs_the_session(session.config)
    if _runs_the_session(session.config):
        for old in ARTIFACTS.glob("faults-ledger-*.json"):
            old.unlink()


def pytest_runtest_logreport(report) -> None:
    if _faults_spent["counting"] and "tests/faults/" in report.nodeid.replace("\\", "/"):
        _faults_spent["s"] += report.duration
        _faults_spent["tests"] += report.when == "call"


def pytest_sessionfinish(session):
    import json
    from collections import Counter

    parts = sorted(ARTIFACTS.glob("faults-ledger-*.json"))
    if not _runs_the_session(session.config) or not parts:
        return
    totals: Counter[str] = Counter()
    figures: dict[str, float] = {}
    for p in parts:
        part = json.loads(p.read_text())
        totals.update(part["totals"])
        for k, v in part["figures_s"].items():
            keep_worst(figures, k, v)
        p.unlink()
    summary = {"totals": dict(sorted(totals.items())), "figures_s": {k: round(v, 2) for k, v in sorted(figures.items())},
               "tests": _faults_spent["tests"], "suite_s": round(_faults_spent["s"], 1)}
    (ARTIFACTS / "faults-summary.json").write_text(json.dumps(summary, indent=2) + "\n")
