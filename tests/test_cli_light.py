"""The CLI answers at once: which heavy modules each command loads, tables that never clip ids, and
shell completion of commands, SAE ids and job ids."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.dbfixtures import home  # noqa: F401
from tests.test_queue import saejobs

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "celery.worker", "celery.apps.worker", "sqlalchemy", "huggingface_hub", "numpy")
PROBE = """
import json, sys
args, out = json.loads(sys.argv[1]), sys.argv[2]
sys.argv = ["saejobs", *args]
from saejobs.cli.main import main
code = "returned without exiting"
try:
    main()
except SystemExit as e:
    code = e.code if e.code is None or isinstance(e.code, int) else str(e.code)
heavy = %r
json.dump({"modules": sorted(m for m in heavy if m in sys.modules), "code": code}, open(out, "w"))
""" % (HEAVY,)
DEAD_BROKER = {"SAEJOBS_BROKER": "redis://127.0.0.1:1/0"}


def loaded(tmp_path, *args: str, env: dict | None = None) -> tuple[set[str], int | str | None, str]:
    """(heavy modules loaded, the exit code ``main`` ended with, stderr) of one command in a fresh process."""
    out = tmp_path / "modules.json"
    res = subprocess.run([sys.executable, "-c", PROBE, json.dumps(args), str(out)], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, env={**os.environ, **(env or {})})
    assert out.is_file(), res.stderr[-2000:]  # the probe itself must finish: a crash is not "loaded nothing"
    got = json.loads(out.read_text())
    return set(got["modules"]), got["code"], res.stderr


COMMANDS = [  # (arguments, the heavy modules it may load, its exit code)
    (("--help",), set(), 0),
    (("saes", "list"), set(), 0),
    (("saes", "show", "gemma-2-2b/20-gemmascope-res-16k"), set(), 0),
    (("jobs", "list"), {"sqlalchemy"}, 0),
    (("results",), {"sqlalchemy"}, 0),
    (("workers",), {"sqlalchemy"}, 0),
    (("verify", "gemma-2-2b/20-gemmascope-res-16k", "--structural-only"), {"sqlalchemy"}, 6),
    (("sweep", "--sae", "gemma-2-2b/20-gemmascope-res-16k", "--feature", "1", "--strength", "5", "--prompt", "p"),
     {"sqlalchemy"}, 6),
    (("search", "--sae", "gemma-2-2b/20-gemmascope-res-16k", "--feature", "1", "--prompt", "p"), {"sqlalchemy"}, 6),
]


@pytest.mark.parametrize("args, may_load, code", COMMANDS, ids=[" ".join(a[:2]) for a, _, _ in COMMANDS])
def test_each_command_loads_only_what_it_needs(home, tmp_path, args, may_load, code):  # noqa: F811
    """Submitting a job (here to a dead broker: the same imports, then exit 6) loads neither torch nor
    transformers; listing and help load no database either; nothing loads Celery's worker machinery.
    Each command must end as it should (0, or 6 for the dead broker), so a command refused early (a bad
    argument, exit 2) cannot pass for one that loaded nothing."""
    got, exit_code, stderr = loaded(tmp_path, *args, env=DEAD_BROKER)
    assert exit_code == code or (code == 0 and exit_code is None), (args, exit_code, stderr[-2000:])
    assert got <= may_load, f"saejobs {' '.join(args)} loaded {sorted(got - may_load)}"
    if code == 6:  # one line naming the broker, with no traceback
        assert len(stderr.strip().splitlines()) == 1 and "broker" in stderr.lower(), stderr


@pytest.mark.parametrize("fmt", ["gemma-scope", "gemma-scope-2"])
def test_a_local_download_runs_without_torch(home, tmp_path, fmt, monkeypatch):  # noqa: F811
    """A download, its checks included, is file work: neither torch nor transformers is imported (each costs a CLI
    run about a second), in either file format; the device is asked only where a job loads a model."""
    from tests.synthetic_saes import make

    monkeypatch.delenv("SAEJOBS_DEVICE", raising=False)
    sae = make(home, fmt=fmt, d_model=64, d_sae=256)
    got, exit_code, stderr = loaded(tmp_path, "download", sae.id, "--source", str(sae.mirror), "--local", "--json")
    assert exit_code in (0, None), stderr[-2000:]
    assert not {"torch", "transformers"} & got, got
    from saejobs.db import saes

    row = saes.get(sae.id)  # it did run, checks and all
    assert row is not None and row.downloaded_at and set(row.files) == set(sae.entry.files)


def test_saes_list_in_80_columns_prints_every_id_whole():
    res = subprocess.run([sys.executable, "-m", "saejobs.cli.main", "saes", "list"], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "COLUMNS": "80"}, timeout=60)
    assert res.returncode == 0, res.stderr
    ids = [e["id"] for e in json.loads(saejobs("saes", "list", "--json").stdout)]
    lines = res.stdout.splitlines()
    assert len(ids) > 500 and max(len(line) for line in lines) <= 80
    cells = {cell.strip() for line in lines for cell in line.split("│")}
    assert not [i for i in ids if i not in cells], "ids clipped or folded"
    wide = subprocess.run([sys.executable, "-m", "saejobs.cli.main", "saes", "list", "--wide"], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, "COLUMNS": "80"}, timeout=60)
    assert "folder" in wide.stdout and "…" not in wide.stdout  # every column: long cells fold, none is clipped


def complete(*words: str, env: dict | None = None) -> list[str]:
    """What bash would offer after ``words`` (the last one being typed), through click's protocol."""
    res = subprocess.run([sys.executable, "-m", "saejobs.cli.main"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         env={**os.environ, **(env or {}), "_SAEJOBS_COMPLETE": "bash_complete",
                              "COMP_WORDS": " ".join(("saejobs", *words)), "COMP_CWORD": str(len(words))})
    return [line.split(",", 1)[1] for line in res.stdout.splitlines()]


def test_shell_completion_of_commands_sae_ids_and_job_ids(home):  # noqa: F811
    from saejobs.db import jobs

    assert "completion" in complete("compl") and "jobs" in complete("jo")
    from saejobs.engine import registry

    want = {e.id for e in registry.entries() if e.id.startswith("gemma-3-270m/5-gemmascope-2-res")}
    assert len(want) > 1 and set(complete("sweep", "--sae", "gemma-3-270m/5-gemmascope-2-res")) == want
    job = jobs.create("verify", {"sae": "x"})
    assert complete("jobs", "show", job.id[:6]) == [job.id]
    script = saejobs("completion", "bash")
    assert script.returncode == 0 and "_SAEJOBS_COMPLETE=bash_complete" in script.stdout
