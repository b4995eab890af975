"""What the README promises and no other test checked: the folder lock, the disk-space check, the
``FILE.sha256`` sidecar of ``--source``, ``saejobs db upgrade``, ``worker --gpu 0,1``, ``--combine``,
exit code 5, and ``saejobs demo`` itself."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.dbfixtures import db_url, home, sqlite_url  # noqa: F401
from tests.faults.sweeps import Hold
from tests.queue_harness import broker, wait_for  # noqa: F401
from tests.synthetic_saes import make
from tests.test_download_hub import home_folder, hub  # noqa: F401
from tests.test_queue import one_clean_line, saejobs, submitted

ROOT = Path(__file__).resolve().parents[1]


def blocked_on_a_lock(pid: int) -> bool:
    """The kernel's list of file locks shows ``pid`` waiting for one (``->`` lines are blocked requests)."""
    for line in Path("/proc/locks").read_text().splitlines():
        parts = line.split()
        if len(parts) > 5 and parts[1] == "->" and parts[5] == str(pid):
            return True
    return False


def test_two_downloads_of_one_sae_make_one_copy(home, tmp_path):
    """The second job waits on the folder lock while the first holds a complete .part, then finds the
    file present and transfers nothing."""
    sae = make(home)
    hold = Hold(tmp_path, "download.file_written:1")
    cmd = [sys.executable, "-m", "saejobs.cli.main", "download", sae.id, "--source", str(sae.mirror), "--local", "--json"]
    first = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, **hold.env})
    hold.wait(60)
    second = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: blocked_on_a_lock(second.pid), 120, "the second download to wait on the folder lock")
    hold.release()
    a, b = (json.loads(p.communicate(timeout=120)[0]) for p in (first, second))
    assert a["state"] == b["state"] == "succeeded"
    assert a["result"]["transferred_bytes"] > 0 and b["result"]["transferred_bytes"] == 0
    files = sorted(p.name for p in home_folder(sae).iterdir() if p.name != ".saejobs.lock")
    assert files == ["params.npz"] or files == ["params.npz", "saejobs.safetensors"], files


def test_disk_space_is_checked_before_a_transfer(home, monkeypatch):
    import shutil
    from collections import namedtuple

    from click.testing import CliRunner

    from saejobs.cli.main import cli

    sae = make(home)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 1000, 1000))
    r = CliRunner().invoke(cli, ["download", sae.id, "--source", str(sae.mirror), "--local", "--json"])
    assert r.exit_code == 7, r.output
    assert "not enough disk space" in r.output and "MB needed" in r.output
    assert not any(p.suffix == ".part" for p in home_folder(sae).glob("*"))


@pytest.mark.parametrize("sidecar, code", [("good", 0), ("bad", 3), ("garbage", 3)])
def test_a_mirror_file_is_checked_against_its_sha256_sidecar(home, sidecar, code):
    import hashlib

    sae = make(home)
    params = sae.mirror_folder / "params.npz"
    digest = hashlib.sha256(params.read_bytes()).hexdigest()
    text = {"good": f"{digest}  params.npz\n", "bad": f"{'0' * 64}  params.npz\n", "garbage": "not-a-digest\n"}[sidecar]
    (sae.mirror_folder / "params.npz.sha256").write_text(text)
    res = saejobs("download", sae.id, "--source", str(sae.mirror), "--local", "--json")
    assert res.returncode == code, res.stderr
    if code:
        assert ("differs from the expected" if sidecar == "bad" else "not a sha256 digest") in res.stderr
        assert not (home_folder(sae) / "params.npz").exists()
    else:
        assert json.loads(res.stdout)["result"]["files"]["params.npz"]["sha256"] == digest


def test_db_upgrade_creates_and_reports_the_schema(db_url):
    from saejobs.db import migrate

    first = submitted(saejobs("db", "upgrade", "--json"))
    assert first["revision"] == first["head"] == migrate.head() and first["from"] is None  # created
    again = submitted(saejobs("db", "upgrade", "--json"))
    assert again == {**first, "from": migrate.head()}  # idempotent


def test_worker_on_two_gpus_runs_one_pinned_process_each(sqlite_url, broker, tmp_path):
    """No GPU needed: each child sets CUDA_VISIBLE_DEVICES before torch loads and registers its GPU."""
    log_path = tmp_path / "workers.log"
    log = open(log_path, "w")
    parent = subprocess.Popen([sys.executable, "-m", "saejobs.cli.main", "worker", "--gpu", "0,1", "--loglevel", "info"],
                              cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        def registered():
            rows = json.loads(saejobs("workers", "--json").stdout)
            return rows if len(rows) == 2 else None
        rows = wait_for(registered, 120, "two workers in `saejobs workers`")
        by_gpu = {r["gpu"]: r for r in rows}
        assert set(by_gpu) == {"0", "1"}
        for gpu, r in by_gpu.items():
            assert r["device"] == f"cuda:0 (CUDA_VISIBLE_DEVICES={gpu})"  # its one GPU, seen as cuda:0
            assert r["queues"][0] == f"saejobs.gpu{gpu}"
        assert len({r["pid"] for r in rows}) == 2 and parent.pid not in {r["pid"] for r in rows}
        # registered comes before Celery's signal handlers: a SIGTERM then would kill a child outright
        wait_for(lambda: log_path.read_text(errors="replace").count(" ready.") == 2, 120, "both children ready")
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(timeout=120) == 0  # passed on to both children, which stopped cleanly
    finally:
        if parent.poll() is None:
            parent.kill()
        log.close()


@pytest.mark.model
def test_combine_steers_all_features_at_once(home, sqlite_url, tiny_gemma2_dir):
    sae = make(home, d_model=64, d_sae=256, layer=1)
    submitted(saejobs("download", sae.id, "--source", str(sae.mirror), "--local", "--json"))
    job = submitted(saejobs("sweep", "--sae", sae.id, "--feature", "1,2,3", "--strength", "0,8", "--prompt", "Hi",
                            "--combine", "--n-tokens", "4", "--model", str(tiny_gemma2_dir), "--local", "--json"))
    rows = submitted(saejobs("results", job["id"], "--json"))
    steered = [r for r in rows if r["type"] == "STEERED"]
    assert len(rows) == 1 + 2 and len(steered) == 2  # one DEFAULT, one configuration per strength
    for r in steered:
        assert [f["index"] for f in r["features"]] == [1, 2, 3] and len(set(r["strengths"])) == 1


def test_a_transient_error_exits_5(home, db_url, hub):
    """A Hub that answers 500 to everything: the --local job fails as transient (exit 5), naming the retry,
    instead of waiting for a worker that --local does not have."""
    sae = make(home)
    hub.add_folder(sae.entry.repo_id, sae.entry.folder, sae.mirror_folder)
    hub.fail("500", times=1000)
    res = saejobs("download", sae.id, "--local", "--json", timeout=120)
    line = one_clean_line(res, 5)
    assert "saejobs jobs retry" in line and "transient" in line, line
    assert json.loads(res.stdout)["state"] == "failed"


