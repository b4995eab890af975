"""CI's own checks (.ci/skips.py, .ci/run): a run that lost tests, by selection or otherwise, fails."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def junit(tmp_path: Path, cases: list[tuple[str, str | None]]) -> Path:
    """A junit report as pytest writes one: (test id, skip message or None) per case."""
    rows = []
    for test_id, skip in cases:
        path, name = test_id.split("::")
        cls = path.removesuffix(".py").replace("/", ".")
        body = f'<skipped type="pytest.skip" message="{skip}"/>' if skip else ""
        rows.append(f'<testcase classname="{cls}" name="{name}" time="1.5">{body}</testcase>')
    p = tmp_path / "junit.xml"
    p.write_text(f'<?xml version="1.0"?><testsuites><testsuite name="pytest">{"".join(rows)}</testsuite></testsuites>')
    return p


def skips(report: Path, allow: str, *args: str) -> subprocess.CompletedProcess:
    allow_file = report.parent / "allow"
    allow_file.write_text(allow)
    return subprocess.run([sys.executable, str(ROOT / ".ci/skips.py"), str(report), str(allow_file), *args],
                          capture_output=True, text=True, timeout=60)


def test_a_report_with_fewer_tests_than_collected_fails(tmp_path):
    report = junit(tmp_path, [("tests/test_a.py::test_one", None), ("tests/test_a.py::test_two", None)])
    assert skips(report, "", "--collected", "2 tests collected in 0.5s").returncode == 0
    short = skips(report, "", "--collected", "3 tests collected in 0.5s")  # -k, -m or --deselect left one out
    assert short.returncode == 1 and "2 tests but 3 were collected" in short.stderr
    assert skips(report, "", "--collected", "1 test collected in 0.5s").returncode == 1
    assert skips(report, "", "--collected", "no tests ran").returncode == 1  # an unreadable count is no pass


def test_an_unlisted_skip_or_an_empty_run_fails(tmp_path):
    report = junit(tmp_path, [("tests/test_a.py::test_one", None), ("tests/test_b.py::test_gpu", "no CUDA")])
    res = skips(report, "")
    assert res.returncode == 1 and "UNEXPECTED tests/test_b.py::test_gpu: no CUDA" in res.stdout
    assert skips(report, "tests/test_b.py::*  # why\n").returncode == 0
    assert skips(junit(tmp_path, [("tests/test_b.py::test_gpu", "no CUDA")]), "tests/test_b.py::*\n").returncode == 1


def test_ci_counts_with_no_inherited_selection_and_prints_the_slowest():
    """.ci/run collects with PYTEST_ADDOPTS unset (a selection there would shrink both counts alike) and asks
    pytest for the 20 slowest tests."""
    run = (ROOT / ".ci/run").read_text()
    assert "env -u PYTEST_ADDOPTS python -m pytest --collect-only -q" in run
    assert "--durations=20" in run and '--collected "$collected"' in run


def test_expecting_cuda_on_a_machine_without_it_fails_the_run(tmp_path):
    """SAEJOBS_EXPECT_CUDA=1 (set on a GPU host) turns "no CUDA, so no cuda cases" into a failed run."""
    import os

    import torch

    env = {**os.environ, "SAEJOBS_EXPECT_CUDA": "1", "PYTEST_ADDOPTS": ""}
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider",
                          str(ROOT / "tests/test_ci.py::test_a_report_with_fewer_tests_than_collected_fails")],
                         env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    if torch.cuda.is_available():
        assert res.returncode == 0, res.stdout + res.stderr
    else:
        assert res.returncode != 0 and "SAEJOBS_EXPECT_CUDA=1 but torch sees no CUDA device" in res.stdout + res.stderr
