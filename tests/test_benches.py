"""Every bench script runs to its end in its ``--fast`` mode, correctness checks included (issue 27 item 5).

Each runs as a user runs it, ``python bench/NAME.py --fast``, in its own process: the same code path as
its default mode at tiny sizes, so a bench broken by a change elsewhere (as bench/sweep.py's second part
was when sweeps became shards) fails here instead of on the next measuring day. The figures they print
say nothing at these sizes; what is asserted is the exit status and the line each check prints.
bench/gpu.py's own test is tests/test_generate.py's.

The benches that need Redis get the session's (``$SAEJOBS_TEST_BROKER``: this xdist worker's own database,
or the private server tests/services.py started); each makes its own ``$SAEJOBS_HOME`` and SQLite
database, under this test's ``tmp_path`` (``$TMPDIR``). The model benches share the converted Gemma 3
270M (``$SAEJOBS_MODEL_CACHE``, pinned by tests/conftest.py); a machine without a copy yet converts it in
the first bench that loads it (~25 s; the conversion lock makes a second process wait for it), so this
process loads no model of its own. The whole file: 49 s with the suite's ``-n 2``, 82 s with ``-n 0``
(2-core machine, quiet, model already converted).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

from tests.process_group import run_group

ROOT = Path(__file__).resolve().parents[1]


def bench(name: str, tmp_path: Path, *args: str, env: dict[str, str] | None = None, expect: int = 0,
          timeout: float = 300) -> str:
    """Run ``bench/NAME --fast ARGS``; assert its exit status; return its stdout."""
    # One compute thread, as tests/conftest.py gives xdist's processes: torch's two threads on a 2-core machine
    # shared with other test processes spin and run several times slower (these figures say nothing anyway).
    full_env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **os.environ, "TMPDIR": str(tmp_path), **(env or {})}
    for var in ("SAEJOBS_DB", "SAEJOBS_HOME", "SAEJOBS_BROKER"):  # each bench picks its own
        full_env.pop(var, None)
    # Its own process group: a bench that hangs is killed with the worker (and Hub, broker) it started.
    p = run_group([sys.executable, str(ROOT / "bench" / name), "--fast", *args], cwd=ROOT, env=full_env,
                  timeout=timeout, what=f"bench/{name} --fast")
    out, err = p.stdout, p.stderr
    assert p.returncode == expect, f"exit {p.returncode}\n{out[-3000:]}\n{err[-3000:]}"
    return out


@pytest.fixture
def broker():
    """The session's Redis (its database is this xdist worker's own); flushed afterwards, as the benches flush
    it first."""
    import redis

    url = os.environ["SAEJOBS_TEST_BROKER"]
    yield url
    redis.Redis.from_url(url, socket_connect_timeout=3).flushdb()


def lines(out: str, pattern: str) -> list[str]:
    return [ln for ln in out.splitlines() if re.search(pattern, ln)]


def test_encode_fast(tmp_path):
    out = bench("encode.py", tmp_path)
    assert len(lines(out, r"^L0 ")) == 2  # both decodes: sparse (L0 70) and dense (L0 1000)
    assert len(lines(out, r"activations equal: True")) == 2, out


def wrong_encode(tmp_path: Path, edit: str) -> dict[str, str]:
    """The environment of a bench whose ``JumpReLUSAE.encode`` applies ``edit`` to its output (``out``), via a
    sitecustomize on its PYTHONPATH."""
    (tmp_path / "sitecustomize.py").write_text(
        "from saejobs.engine import sae\n"
        "_encode = sae.JumpReLUSAE.encode\n"
        "def encode(self, x):\n"
        "    out = _encode(self, x)\n"
        f"    {edit}\n"
        "    return out\n"
        "sae.JumpReLUSAE.encode = encode\n")
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))}


def test_encode_exits_1_when_its_identity_check_fails(tmp_path):
    """A wrong encode (one activation off, via a sitecustomize in the bench's process) is reported, exit 1."""
    out = bench("encode.py", tmp_path, env=wrong_encode(tmp_path, "out[0, 0] += 1.0"), expect=1)
    assert lines(out, r"activations equal: False")


def test_features_fast(tmp_path):
    out = bench("features.py", tmp_path)
    assert lines(out, r"check: 95 tokens' top-10 equal the plain reference's: yes"), out
    assert lines(out, r"forward pass [\d.]+ s +features top [\d.]+ s +ratio [\d.]+×"), out


def test_features_exits_1_when_a_tokens_features_are_wrong(tmp_path):
    """A wrong encode (one token's activations doubled) is reported, exit 1, no figure printed."""
    out = bench("features.py", tmp_path, env=wrong_encode(tmp_path, "out[3] *= 2.0"), expect=1)
    assert lines(out, r"equal the plain reference's: NO \(1 differ\)") and not lines(out, "ratio"), out


def test_export_fast(tmp_path):
    out = bench("export.py", tmp_path)
    assert lines(out, r"^stored 1200 generations")
    for fmt in ("JSON", "CSV", "Parquet", "report", "search"):  # a row is printed only once its output checked out
        assert lines(out, rf"^{fmt} +[\d.]+s +\d+ MB"), out


def test_cli_fast(tmp_path, broker):
    out = bench("cli.py", tmp_path, "--broker", broker)
    for label in ("saejobs --help", "saejobs jobs list", "saejobs saes list"):
        assert lines(out, rf"^  {re.escape(label)} +[\d.]+ s"), out
    assert lines(out, r"verify --structural-only --wait: [\d.]+ s over the task's own"), out


def test_queue_latency_fast(tmp_path, broker):
    out = bench("queue_latency.py", tmp_path, "--broker", broker)
    assert lines(out, r"^queue latency, 5 verify jobs")
    assert lines(out, r"enqueue -> start +p50 +[\d.]+ ms"), out
    assert lines(out, r"ratio queued/local start latency: [\d.]+x"), out


def test_download_fast(tmp_path, broker):
    out = bench("download.py", tmp_path, "--broker", broker)  # exits 1 unless both copies equal the served file
    assert lines(out, r"^saejobs job: +best +[\d.]+ s"), out
    assert lines(out, r"^worker peak RSS growth during the job"), out


@pytest.mark.model
def test_sweep_fast(tmp_path, broker):
    """All three parts; the second reads the load phase from the sweep's shards (it crashed on the parent row)."""
    out = bench("sweep.py", tmp_path, "--broker", broker)
    assert lines(out, r"^1\. 4 configs × 4 tokens on cpu: .*\(outputs identical: True\)"), out
    assert lines(out, r"^1b\. 8 mixed-operation steers at layers 6 and 12 × 4 tokens: .*\(outputs identical: True\)"), out
    assert lines(out, r"^2\. sweep job \(2 generations × 2 tokens\) via Redis"), out
    assert lines(out, r"worker start -> job done [\d.]+ s vs submit -> job done [\d.]+ s"), out
    assert lines(out, r"model \+ SAE acquisition inside the job: cold [\d.]+ s \(load\), warm [\d.]+ ms"), out
    assert lines(out, r"^3\. SAE 64×512, .*\(encodes identical: True\)"), out


@pytest.mark.model
def test_score_fast(tmp_path):
    out = bench("score.py", tmp_path)
    assert lines(out, r"^1\. 5 configs \([1-5] distinct completions, prompts up to 5 tokens\) × 4 tokens on cpu .* "
                      r"scores batched = alone = whole pass = reference NLL: True$"), out
    # the zero-strength rows write their DEFAULT's completion: fewer distinct completions than rows
    assert lines(out, r"^2\. with strength 0 \(0:200:50\): 5 configs \([1-4] distinct completions, prompts up to 5 "
                      r"tokens\) × 4 tokens on cpu .* scores batched = alone = whole pass = reference NLL: True$"), out
    assert lines(out, r"^3\. chat-length prompts: 5 configs \([1-5] distinct completions, prompts up to (1[6-9]|[2-9][0-9]) tokens\) × "
                      r"4 tokens on cpu .* scores batched = alone = whole pass = reference NLL: True$"), out
    # each grid's arithmetic, counted by torch: scoring runs the layers from the recording up over positions
    # generation ran every layer over, and the output layer over at most the positions generation ran it over
    shares = [int(m.group(1)) for ln in lines(out, r"^   arithmetic \(matrix products\): generation [0-9.]+ GFLOP")
              if (m := re.search(r"scoring [0-9.]+ GFLOP, ([0-9]+)% of generation's, at [0-9]+ GFLOP/s$", ln))]
    assert len(shares) == 3 and all(0 < x < 100 for x in shares), out


@pytest.mark.model
def test_vs_interp_engine_fast(tmp_path):
    out = bench("vs_interp_engine.py", tmp_path)
    assert lines(out, r"token ids identical in 4/4 configurations"), out
    assert lines(out, r"saejobs --sampling interp-engine: +[0-9.]+ s, [0-9.]+x interp-engine's [0-9.]+ s; "
                      r"identical to interp-engine in 4/4 configurations"), out
