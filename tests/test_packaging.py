"""One distribution, one import name: the wheel holds ``saejobs/`` alone (with its data), and a user's own
``engine.py``, ``db.py``, ``tasks.py``, ``cli.py`` or ``worker/main.py`` never shadows saejobs' code: not in
``import saejobs``, not in the CLI, not in the worker processes ``saejobs up`` spawns."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.dbfixtures import home  # noqa: F401
from tests.queue_harness import FAST
from tests.services import free_port
from tests.synthetic_saes import make
from tests.up_harness import running_up

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"saejobs": "saejobs", "cli": "saejobs/cli", "db": "saejobs/db", "engine": "saejobs/engine",
           "tasks": "saejobs/tasks", "worker": "saejobs/worker"}  # repository folder -> place in the wheel
USER_MODULES = ("engine.py", "db.py", "tasks.py", "cli.py", "worker/__init__.py", "worker/main.py")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built from the committed files (a copy, so the checkout gets no build/ or egg-info)."""
    src = tmp_path_factory.mktemp("src")
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, tracked.decode().split("\0")):
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            (src / name).write_bytes((ROOT / name).read_bytes())
    out = tmp_path_factory.mktemp("dist")
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                          str(out), str(src)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    (whl,) = out.glob("saejobs-*.whl")
    return whl


def test_the_wheel_holds_saejobs_alone_with_its_data(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"saejobs"}, sorted(tops)
    # every module of every folder is in the wheel, where its import name says
    for folder, place in FOLDERS.items():
        for py in (ROOT / folder).rglob("*.py"):
            rel = py.relative_to(ROOT / folder).as_posix()
            if "migrations" in rel or "__pycache__" in rel:
                continue
            assert f"{place}/{rel}" in names, f"{folder}/{rel} missing from the wheel"
    data = ["saejobs/engine/registry/data/saes.yaml", "saejobs/engine/registry/data/folders.yaml",
            "saejobs/engine/registry/data/models.yaml", "saejobs/engine/data/alice-chapter-1.txt",
            "saejobs/engine/data/SOURCES.md", "saejobs/db/migrations/env.py",
            "saejobs/db/migrations/script.py.mako"]
    data += [f"saejobs/db/migrations/versions/{p.name}" for p in (ROOT / "db/migrations/versions").glob("*.py")]
    missing = [d for d in data if d not in names]
    assert not missing, missing
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "saejobs = saejobs.cli.main:main" in entry_points


def test_the_installed_wheel_runs_from_its_own_files(wheel, tmp_path):
    """Installed (not editable) into a folder of its own: the CLI reads the registry and creates a database
    with the migrations it ships, all from that folder."""
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    env = {**os.environ, "PYTHONPATH": str(target), "SAEJOBS_HOME": str(tmp_path / "home")}
    env.pop("SAEJOBS_DB", None)
    where = subprocess.run([sys.executable, "-c", "import saejobs.cli.main as m, saejobs.db.migrate as g; "
                            "print(m.__file__); print(g.MIGRATIONS)"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, check=True).stdout.split()
    assert all(Path(w).is_relative_to(target) for w in where), where
    run = lambda *a: subprocess.run([sys.executable, "-m", "saejobs.cli.main", *a], cwd=tmp_path, env=env,  # noqa: E731
                                    capture_output=True, text=True, timeout=120)
    listed = run("saes", "list", "--model", "gemma-2-2b", "--json")
    assert listed.returncode == 0 and "gemma-2-2b/20-gemmascope-res-16k" in listed.stdout, listed.stderr
    upgraded = run("db", "upgrade", "--json")
    assert upgraded.returncode == 0, upgraded.stderr
    assert json.loads(upgraded.stdout)["revision"] == json.loads(upgraded.stdout)["head"] is not None


def shadowing_folder(tmp_path: Path) -> tuple[Path, Path]:
    """A user's working folder whose modules carry saejobs' folder names; importing any of them leaves a
    mark in ``marks`` and fails."""
    cwd, marks = tmp_path / "project", tmp_path / "marks"
    marks.mkdir()
    for name in USER_MODULES:
        f = cwd / name
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(f"open({str(marks / name.replace('/', '.'))!r}, 'w').close()\n"
                     f"raise SystemExit('the user\\'s {name} ran instead of saejobs')\n")
    return cwd, marks


def test_a_users_own_modules_never_shadow_saejobs(home, tmp_path, monkeypatch):  # noqa: F811
    """From a folder holding its own engine.py, db.py, tasks.py, cli.py and worker/main.py: ``import
    saejobs`` and its layers, the CLI, and ``saejobs up``'s worker run saejobs' code; a download runs through
    the queue on that worker."""
    cwd, marks = shadowing_folder(tmp_path)
    sae = make(home)
    env = {**os.environ, **FAST, "SAEJOBS_BROKER": f"redis://127.0.0.1:{free_port()}/0"}

    def run(*args: str, **kw) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=300, **kw)

    imported = run("-c", "import saejobs, saejobs.cli.main, saejobs.worker.main, saejobs.tasks.celery_tasks, "
                   "saejobs.db.session, saejobs.engine.request, sys; "
                   "print(sorted(m for m in sys.modules if m.split('.')[0] in ('engine','db','tasks','cli','worker')))")
    assert imported.returncode == 0 and imported.stdout.strip() == "[]", imported.stderr
    assert run("-m", "saejobs.cli.main", "saes", "list", "--json").returncode == 0
    with running_up(cwd, env, tmp_path / "up.log") as up:
        done = run("-m", "saejobs.cli.main", "download", sae.id, "--source", str(sae.mirror), "--wait", "--json")
        assert done.returncode == 0, (done.stderr, up.text()[-3000:])
        job = json.loads(done.stdout)
        assert job["state"] == "succeeded" and job["worker"].startswith("saejobs-cpu-")  # up's spawned worker
        up.proc.send_signal(signal.SIGINT)
        assert up.proc.wait(timeout=120) == 0, up.text()[-3000:]
    assert sorted(p.name for p in marks.iterdir()) == []
