"""Download jobs against a loopback Hub (real huggingface_hub, stand-in server) and a mirror directory."""

from __future__ import annotations

import hashlib
import json

import pytest

from saejobs.db import jobs
from saejobs.db.models import Sae
from saejobs.db.session import session
from saejobs.engine import registry
from tests.dbfixtures import home  # noqa: F401
from tests.hub_server import HubServer
from tests.queue_harness import broker, start_worker  # noqa: F401
from tests.synthetic_saes import make
from tests.test_queue import saejobs, submitted

TOKEN = "hf_secretDoNotLeak0123456789"
GS_REPO = "google/gemma-scope-2b-pt-res"


@pytest.fixture
def db(home, monkeypatch):
    url = f"sqlite:///{home / 'saejobs.db'}"
    monkeypatch.setenv("SAEJOBS_DB", url)
    return url


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """The loopback Hub, and the environment huggingface_hub (here and in workers) reads at import."""
    with HubServer() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
        monkeypatch.delenv("HF_TOKEN", raising=False)
        yield server


@pytest.fixture
def served(home, hub):
    """A 34 MB synthetic SAE in Gemma Scope's layout, registered and on the loopback Hub."""
    sae = make(home, d_model=256, d_sae=16384)
    hub.add_folder(sae.entry.repo_id, sae.entry.folder, sae.mirror_folder)
    return sae


def file_gets(hub):
    return hub.requests("GET", "/lfs-cdn/")


def test_download_through_the_queue_records_the_lfs_sha256_and_a_second_transfers_nothing(db, hub, served,
                                                                                           start_worker):
    start_worker()
    job = submitted(saejobs("download", served.id, "--wait", "--json"))
    assert job["state"] == "succeeded", job
    assert any(0 < e.progress < 1 for e in jobs.events(job["id"]))
    hub_file = hub.repos[served.entry.repo_id][f"{served.entry.folder}/params.npz"]
    with session() as s:
        row = s.get(Sae, served.id)
        assert row.files["params.npz"]["sha256"] == hub_file.sha256  # the LFS etag
        assert row.revision == hub.commit(served.entry.repo_id)
    assert [r.range for r in file_gets(hub)] == [None]

    again = submitted(saejobs("download", served.id, "--wait", "--json"))
    assert again["result"]["transferred_bytes"] == 0
    assert len(file_gets(hub)) == 1 and len(hub.requests("HEAD")) == 1  # no new request at all


def test_download_from_a_mirror_directory_through_the_queue(db, home, broker, start_worker):
    sae = make(home)
    start_worker()
    job = submitted(saejobs("download", sae.id, "--source", str(sae.mirror), "--wait", "--json"))
    digest = hashlib.sha256((sae.mirror_folder / "params.npz").read_bytes()).hexdigest()
    assert job["result"]["files"]["params.npz"]["sha256"] == digest


def error_line(res) -> str:
    """The one error line; the lines above it are the progress log a non-terminal stderr gets."""
    assert "Traceback" not in res.stderr
    *progress, last = res.stderr.strip().splitlines()
    assert last.startswith("saejobs: error: ") and all(not p.startswith("saejobs: error") for p in progress)
    return last


def home_folder(sae):
    from saejobs.engine.download import local_folder

    return local_folder(sae.entry)


def test_a_missing_folder_lists_the_l0_folders_that_exist(db, hub, tmp_path):
    existing = registry.folders(GS_REPO, layer=20, width="16k")
    missing, others = existing[0], existing[1:]
    stub = tmp_path / "stub.npz"
    stub.write_bytes(b"not read")
    for f in others:
        hub.add_file(GS_REPO, f"{f}/params.npz", stub)
    hub.add_file(GS_REPO, "layer_20/width_65k/average_l0_61/params.npz", stub)  # another width: not listed
    res = saejobs("download", f"{GS_REPO}/{missing}", "--local")
    assert res.returncode == 2, res.stderr
    line = error_line(res)
    assert "does not exist on the Hub" in line
    assert all(f in line for f in others) and "width_65k" not in line, line


def test_a_gated_repo_asks_for_hf_token_and_the_token_never_lands_in_logs_or_the_database(db, home, hub, served,
                                                                                           start_worker):
    hub.gated[served.entry.repo_id] = TOKEN
    res = saejobs("download", served.id, "--local")
    assert res.returncode == 2 and "set HF_TOKEN" in error_line(res)

    assert [bool(r.authorization) for r in hub.requests("HEAD")] == [False]

    w = start_worker(env={"HF_TOKEN": TOKEN})
    job = submitted(saejobs("download", served.id, "--wait", "--json"))
    assert job["state"] == "succeeded"
    assert [bool(r.authorization) for r in hub.requests("HEAD")] == [False, True]
    assert file_gets(hub) and not any(r.authorization for r in file_gets(hub))  # the CDN never sees it
    shown = saejobs("jobs", "show", job["id"], "--events", "--json").stdout
    for text in (w.text(), shown, res.stdout, res.stderr):
        assert TOKEN not in text
    assert TOKEN.encode() not in (home / "saejobs.db").read_bytes()


def test_a_server_error_is_transient_and_the_job_retries(db, hub, served, start_worker):
    hub.fail("500", "params.npz", on=("HEAD",))
    start_worker()
    job = submitted(saejobs("download", served.id, "--wait", "--json"))
    assert job["state"] == "succeeded" and job["attempts"] == 2, job
    assert [r.status for r in hub.requests("HEAD")] == [500, 302]


def test_saes_available_lists_the_hubs_widths_and_l0s(home, hub, tmp_path):
    stub = tmp_path / "stub.npz"
    stub.write_bytes(b"x")
    folders = ["layer_20/width_16k/average_l0_71", "layer_20/width_16k/average_l0_139",
               "layer_20/width_65k/average_l0_61", "layer_3/width_16k/average_l0_10"]
    for f in folders:
        hub.add_file(GS_REPO, f"{f}/params.npz", stub)
    res = saejobs("saes", "available", "gemma-2-2b", "--layer", "20", "--json")
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout)
    assert sorted(g["folder"] for g in got) == sorted(folders[:3])
    assert {(g["width"], g["l0"], g["site"]) for g in got} == {("16k", "71", "res"), ("16k", "139", "res"),
                                                               ("65k", "61", "res")}
    text = saejobs("saes", "available", "gemma-2-2b", "--layer", "20").stdout
    assert "71, 139" in text


def test_a_gemma_scope_2_folder_downloads_its_safetensors_and_config_json(db, home, hub):
    """config.json is a small git file (its ETag is a git sha1, not a sha256): fetched, not 'corrupt'."""
    sae = make(home, fmt="gemma-scope-2", d_model=64, d_sae=512)
    hub.add_folder(sae.entry.repo_id, sae.entry.folder, sae.mirror_folder)
    res = saejobs("download", sae.id, "--local", "--json")
    assert res.returncode == 0, res.stderr
    files = json.loads(res.stdout)["result"]["files"]
    assert set(files) == {"params.safetensors", "config.json"}
    for name, f in files.items():
        assert f["sha256"] == hashlib.sha256((sae.mirror_folder / name).read_bytes()).hexdigest()
    assert {r.path.rsplit("/", 1)[-1] for r in hub.requests("GET")} >= {"config.json"}


def test_this_hosts_disk_errors_are_permanent_the_networks_transient():
    """A read-only or full disk fails the job at once (another attempt here cannot help); a dropped
    connection is retried."""
    import errno

    from saejobs.engine import hub, registry
    from saejobs.engine.errors import DiskFullError, StorageError, TransientError

    entry = registry.get("gemma-2-2b/20-gemmascope-res-16k")
    for code in (errno.EROFS, errno.ENOSPC, errno.EACCES):
        assert isinstance(hub._mapped(entry, "params.npz", OSError(code, "no")), StorageError)
    assert issubclass(DiskFullError, StorageError)
    assert isinstance(hub._mapped(entry, "params.npz", ConnectionResetError(errno.ECONNRESET, "reset")), TransientError)
