"""Downloads that go wrong: a cut connection, corrupted bytes, a worker killed with the file complete
but not yet renamed, the disk filling up mid-file, a cancel mid-transfer, a hostile Hub listing.

In every case the cache never holds a wrong file under a real name; a ``.part`` stays only where it
is worth resuming (a cut, a cancel) and is deleted where it is not (bad bytes, a full disk).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from pathlib import Path

import pytest

from saejobs.db import jobs, saes
from tests.dbfixtures import home  # noqa: F401
from tests.faults.sweeps import Hold
from tests.queue_harness import broker, start_worker, wait_for  # noqa: F401
from tests.test_download_hub import db, error_line, file_gets, home_folder, hub, served  # noqa: F401
from tests.test_queue import saejobs, submitted


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cache_files(home: Path) -> list[str]:
    root = home / "saes"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name != ".saejobs.lock")


def test_a_cut_connection_resumes_with_a_range_request_even_across_job_attempts(db, hub, served, start_worker):
    """Cut at half, then five more cuts: http_get resumes with Range in-call, then the job's retry resumes."""
    hub.fail("cut", "params.npz", times=6)
    w = start_worker()
    job = submitted(saejobs("download", served.id, "--wait", "--json"))
    assert job["state"] == "succeeded" and job["attempts"] == 2, job
    size = hub.repos[served.entry.repo_id][f"{served.entry.folder}/params.npz"].size
    gets = file_gets(hub)
    assert len(gets) == 7 and gets[0].range is None
    resumed_at = {r.range for r in gets[1:]}
    assert len(resumed_at) == 1, resumed_at  # every later request resumed at the same offset
    offset = int(resumed_at.pop().removeprefix("bytes=").rstrip("-"))
    assert 0 < offset <= size // 2 and gets[-1].status == 206
    assert gets[-1].body_bytes == size - offset  # the last attempt fetched only the rest
    assert "Traceback" not in w.text()


def test_corrupted_bytes_delete_the_file_and_fail_in_one_line(db, hub, served):
    hub.fail("corrupt", "params.npz")
    res = saejobs("download", served.id, "--local", "--json")
    assert res.returncode == 3, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "sha256" in lines[0] and "deleted" in lines[0], res.stderr
    folder = home_folder(served)
    assert not (folder / "params.npz").exists() and not (folder / "params.npz.part").exists()
    assert json.loads(res.stdout)["state"] == "failed"


def test_sigkill_with_the_file_complete_but_not_renamed(db, hub, served, start_worker, ledger):
    first = start_worker(env={"SAEJOBS_KILL_AT": "download.file_written:1"})
    job = submitted(saejobs("download", served.id, "--json"))
    assert first.proc.wait(timeout=120) == -9
    folder = home_folder(served)
    assert not (folder / "params.npz").exists() and (folder / "params.npz.part").exists()
    start_worker()
    done = wait_for(lambda: (j := jobs.get(job["id"])).state in ("succeeded", "failed") and j, 120, "the download")
    assert done.state == "succeeded" and done.attempts == 2, done.error
    want = hub.repos[served.entry.repo_id][f"{served.entry.folder}/params.npz"]
    assert sha256(folder / "params.npz") == want.sha256 and not (folder / "params.npz.part").exists()
    assert len(file_gets(hub)) == 1  # the complete .part was checked and kept, not fetched again
    ledger.add("sigkills")


@pytest.fixture
def small_disk(home):
    """The SAE cache on a 48 MB tmpfs (needs root, as CI has); removed afterwards."""
    root = home / "saes"
    root.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(root)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield root
    subprocess.run(["umount", "-l", str(root)], check=False)


def test_disk_full_mid_file_deletes_the_partial_file_and_says_so(db, hub, served, small_disk, start_worker, ledger):
    hub.rate = 12e6  # ~3 s for the 34 MB file: time for the disk to fill up under it
    start_worker()
    job = submitted(saejobs("download", served.id, "--json"))
    wait_for(lambda: jobs.get(job["id"]).progress > 0.1, 60, "the transfer to start")
    filler = small_disk / "someone-elses-file"
    with open(filler, "wb") as f:  # another tenant of the disk takes what is left
        while True:
            try:
                f.write(b"\0" * (1 << 20))
                f.flush()
            except OSError:
                break
    done = wait_for(lambda: (j := jobs.get(job["id"])).state in ("succeeded", "failed") and j, 120, "the download")
    assert done.state == "failed" and done.attempts == 1, (done.state, done.attempts, done.error)  # not retried
    assert done.result["exit_code"] == 7, (done.state, done.error)
    assert "disk full while writing params.npz" in done.error and "partial file deleted" in done.error
    assert [f for f in cache_files(small_disk.parent) if f != filler.name] == []  # no params.npz, no .part
    assert saes.get(served.id) is None or saes.get(served.id).local_path is None
    filler.unlink()
    hub.rate = None
    again = submitted(saejobs("jobs", "retry", job["id"], "--wait", "--json"))
    assert again["state"] == "succeeded"
    want = hub.repos[served.entry.repo_id][f"{served.entry.folder}/params.npz"].sha256
    assert sha256(home_folder(served) / "params.npz") == want
    ledger.add("disk_full")


def test_cancel_during_a_download_stops_it_and_keeps_the_part_for_later(db, hub, served, start_worker, ledger,
                                                                         tmp_path):
    hold = Hold(tmp_path, "download.bytes_written:2")  # held mid-transfer: 2 of the 34 MB file's 10 MB pieces
    w = start_worker(env=hold.env)
    job = submitted(saejobs("download", served.id, "--json"))
    hold.wait()
    t0 = time.monotonic()
    assert json.loads(saejobs("jobs", "cancel", job["id"], "--json").stdout)["state"] == "cancelled"
    hold.release()
    part = home_folder(served) / "params.npz.part"
    wait_for(lambda: "succeeded in" in w.text() and "'cancelled'" in w.text(), 60, "the worker to let go of the job")
    stopped = time.monotonic() - t0
    ledger.figure("cancel_to_download_stopped", stopped)
    size = part.stat().st_size  # the task has returned: nothing writes the .part any more (the retry's Range proves it)
    assert 0 < size < hub.repos[served.entry.repo_id][f"{served.entry.folder}/params.npz"].size
    assert not (home_folder(served) / "params.npz").exists() and jobs.get(job["id"]).state == "cancelled"
    hub.rate = None
    again = submitted(saejobs("jobs", "retry", job["id"], "--wait", "--json"))
    assert again["state"] == "succeeded"
    gets = file_gets(hub)
    assert gets[-1].range == f"bytes={size}-"  # the retry resumed exactly where the cancelled job left the file
    ledger.add("cancels")


def test_a_hub_listing_with_path_escapes_is_refused(db, hub, tmp_path):
    evil = tmp_path / "params.npz"
    evil.write_bytes(b"x")
    hub.add_file("google/gemma-scope-2b-pt-res", "layer_1/width_16k/../../../../escape/params.npz", evil)
    res = saejobs("saes", "available", "gemma-2-2b", "--layer", "1")
    line = error_line(res)
    assert res.returncode == 3 and "holds an unsafe path 'layer_1/width_16k/.." in line, line
