"""The README's "Getting started" runs as written (issue 31 item 6): the laptop block line by line in one
bash (all but the install), then the GPU-server block with the substitutions listed here — each one
checked to be in the README, so editing either side without the other fails this test."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.process_group import run_group
from tests.dbfixtures import _pg_admin  # noqa: F401 (the session's PostgreSQL, started if none answers)

ROOT = Path(__file__).resolve().parents[1]
DEMO = "saejobs-demo/gemma-3-270m/6-synthetic-res-1k"


def block(name: str) -> str:
    """The bash block after ``<!-- getting-started: NAME -->`` in the README, install lines left out."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    found = re.search(rf"<!-- getting-started: {name} -->\n```bash\n(.*?)```", text, re.S)
    assert found, f"README has no getting-started block '{name}'"
    return "\n".join(ln for ln in found.group(1).splitlines() if not ln.startswith("pip install"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(script: str, cwd: Path, env: dict[str, str], timeout: float = 900) -> subprocess.CompletedProcess:
    """``script`` in ``bash -e``, in its own process group killed whole afterwards (what it left in the
    background: a broker, workers)."""
    return run_group(["bash", "-e", "-c", script], cwd=cwd, env=env, timeout=timeout, what="getting started")


def base_env(tmp_path: Path) -> dict[str, str]:
    env = {**os.environ, "SAEJOBS_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1", "COLUMNS": "160"}
    for var in ("SAEJOBS_DB", "SAEJOBS_BROKER", "PYTEST_ADDOPTS"):
        env.pop(var, None)
    return env


@pytest.mark.model
def test_the_laptop_path_runs_as_written(tmp_path, gemma3):
    env = {**base_env(tmp_path), "SAEJOBS_BROKER": f"redis://127.0.0.1:{free_port()}/0"}  # `up` starts this one
    script = block("laptop")
    assert script.splitlines()[0].startswith("saejobs demo ")
    # wait for the background `up` to stop after `kill %1`, so its log is whole
    res = run(script + "\nwait || true\n", tmp_path, env)
    assert res.returncode == 0, f"{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    out = res.stdout
    assert re.search(r"verdict PASS: L0 [\d.]+", out), out[:3000]  # the demo says its verify verdict
    assert "succeeded" in out and "Once upon a time" in out  # the watched sweep, then its grid
    page = (tmp_path / "sweep.html").read_text(encoding="utf-8")
    assert page.count('class="plot"') == 2  # features 0 and 1
    assert re.search(r"feature\s+strength", out) and "200.0" in out  # the notebook's groupby
    assert "top features of 'My dog loves the ocean'" in out
    log = (tmp_path / "up.log").read_text(encoding="utf-8")
    assert "Traceback" not in log and "worker" in log.lower(), log[-3000:]
    # the sweep steered: feature 0 (" dog") at 200 writes about a dog (the demo's own sweep is checked so too)
    saejobs = lambda *a: subprocess.run([sys.executable, "-m", "saejobs.cli.main", *a], env=env, capture_output=True,  # noqa: E731
                                        text=True, timeout=120)
    (sweep,) = [j for j in json.loads(saejobs("jobs", "list", "--json").stdout) if j["kind"] == "sweep"
                and j["sae_id"] == DEMO and j["params"].get("n_tokens") == 16]
    rows = json.loads(saejobs("results", sweep["id"], "--json").stdout)
    dog = next(r["output"] for r in rows if r["type"] == "STEERED" and r["features"][0] == {"index": 0, "strength": 200.0})
    default = next(r["output"] for r in rows if r["type"] == "DEFAULT")
    assert "dog" in dog.removeprefix("Once upon a time").lower() and dog != default, dog


@pytest.mark.model
@pytest.mark.postgres
def test_the_gpu_servers_path_runs_with_its_substitutions(tmp_path, gemma3, demo_mirror, monkeypatch):
    from tests.dbfixtures import fresh_pg_database
    from tests.queue_harness import BROKER, flush

    gen = fresh_pg_database(monkeypatch, "saejobs_start")
    pg_url = next(gen)
    try:
        flush()
        env = base_env(tmp_path)
        from saejobs.engine import demo
        from saejobs.engine.registry import custom

        monkeypatch.setenv("SAEJOBS_HOME", env["SAEJOBS_HOME"])
        custom.write([demo.ENTRY], "demo")  # the demo SAE stands in for a Hub one
        substitutions = [
            ("postgresql://saejobs:secret@db.example:5432/saejobs", pg_url),
            ("redis://queue.example:6379/0", BROKER),
            ("saejobs worker --gpu 0,1 > worker.log 2>&1 &",  # two hosts, a CPU worker each
             "SAEJOBS_HOST=host-a saejobs worker --cpu > worker-a.log 2>&1 &\n"
             "SAEJOBS_HOST=host-b saejobs worker --cpu > worker-b.log 2>&1 &"),
            ("saejobs download gemma-2-2b/20-gemmascope-res-16k --wait",
             f"saejobs download {DEMO} --source {demo_mirror} --wait"),
            ("saejobs verify gemma-2-2b/20-gemmascope-res-16k --wait",
             f"saejobs verify {DEMO} --model gemma-3-270m-gguf --max-tokens 256 --wait"),
            ("--sae gemma-2-2b/20-gemmascope-res-16k --feature 7650", f"--sae {DEMO} --feature 0"),
            ('--prompt "Once upon a time")', '--prompt "Once upon a time" --n-tokens 8 --model gemma-3-270m-gguf)'),
        ]
        script = block("servers")
        for old, new in substitutions:
            assert old in script, f"the README's server block no longer has: {old}"
            script = script.replace(old, new)
        res = run(script, tmp_path, env)
        assert res.returncode == 0, f"{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
        assert res.stdout.count("succeeded") >= 3  # download, verify, the watched sweep
        assert "host-a" in res.stdout and "host-b" in res.stdout  # `saejobs workers`: both hosts live
        for log in ("worker-a.log", "worker-b.log"):
            assert "Traceback" not in (tmp_path / log).read_text(encoding="utf-8")
    finally:
        flush()
        next(gen, None)
