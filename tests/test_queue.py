"""The job system end to end: CLI → Redis → real worker processes → database."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from sqlalchemy import select

from saejobs.db import jobs
from saejobs.db.models import Job, JobEvent, Sae
from saejobs.db.session import session
from tests.dbfixtures import db_url, home, sqlite_url  # noqa: F401
from tests.queue_harness import broker, start_worker, wait_for  # noqa: F401
from tests.synthetic_saes import tiny_sae  # noqa: F401


def saejobs(*args: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "saejobs.cli.main", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def submitted(res: subprocess.CompletedProcess) -> dict:
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def one_clean_line(res: subprocess.CompletedProcess, code: int) -> str:
    """A refused command: exit ``code``, no traceback, exactly one line on stderr (returned)."""
    assert res.returncode == code and "Traceback" not in res.stderr, (res.returncode, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    return lines[0]


def test_enqueue_run_succeed_with_progress(db_url, start_worker, tiny_sae):
    start_worker()
    res = saejobs("download", tiny_sae.id, "--source", str(tiny_sae.mirror), "--wait", "--json")
    job = submitted(res)
    assert job["state"] == "succeeded" and job["progress"] == 1.0 and job["attempts"] == 1
    assert job["worker"].startswith("saejobs-cpu-")
    got = jobs.get(job["id"])
    events = jobs.events(got.id)
    states = [e.state for e in events]
    assert states[0] == "queued" and states[1] == "running" and states[-1] == "succeeded"
    assert any(0 < e.progress < 1 for e in events), [(e.state, e.progress) for e in events]
    with session() as s:
        row = s.get(Sae, tiny_sae.id)
        assert row.files["params.npz"]["size"] == (tiny_sae.mirror_folder / "params.npz").stat().st_size

    res = saejobs("verify", tiny_sae.id, "--structural-only", "--wait", "--json")
    assert submitted(res)["result"]["verdict"] == "PASS"


def test_a_failed_job_can_be_retried(db_url, start_worker, tiny_sae):
    start_worker()
    res = saejobs("verify", tiny_sae.id, "--structural-only", "--wait", "--json")
    assert res.returncode == 2  # the error's own code: NotFoundError
    failed = json.loads(res.stdout)
    assert failed["state"] == "failed" and "not downloaded" in failed["error"]
    assert "not downloaded" in res.stderr and "Traceback" not in res.stderr
    submitted(saejobs("download", tiny_sae.id, "--source", str(tiny_sae.mirror), "--wait", "--json"))
    again = submitted(saejobs("jobs", "retry", failed["id"][:8], "--wait", "--json"))
    # the same row, with a fresh budget of attempts (SAEJOBS_MAX_ATTEMPTS counts from the retry)
    assert again["id"] == failed["id"] and again["state"] == "succeeded" and again["attempts"] == 1
    assert saejobs("jobs", "retry", failed["id"]).returncode == 2  # succeeded jobs are not retried


def test_two_workers_share_one_database(db_url, start_worker, tiny_sae):
    submitted(saejobs("download", tiny_sae.id, "--source", str(tiny_sae.mirror), "--local", "--json"))
    a, b = start_worker(), start_worker()
    ids = [submitted(saejobs("verify", tiny_sae.id, "--structural-only", "--json"))["id"] for _ in range(16)]
    wait_for(lambda: all(jobs.get(i).state == "succeeded" for i in ids), 180, "16 verify jobs")
    with session() as s:
        by = set(s.scalars(select(Job.worker).where(Job.id.in_(ids))))
    assert len(by) == 2, by  # both workers took jobs
    for w in (a, b):
        assert "locked" not in w.text() and "Traceback" not in w.text()


def test_broker_unreachable_fails_fast_and_leaves_nothing_queued(db_url, tiny_sae):
    res = saejobs("verify", tiny_sae.id, "--structural-only", env={"SAEJOBS_BROKER": "redis://127.0.0.1:1/0"}, timeout=30)
    assert res.returncode == 6, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "redis://127.0.0.1:1/0" in lines[0] and "Traceback" not in res.stderr
    with session() as s:
        assert s.scalars(select(Job.state)).all() == ["failed"]


def test_gpu_job_reaches_only_that_gpus_worker(sqlite_url, start_worker, tiny_sae):
    """``--gpu 1`` routes to queue saejobs.gpu1; its worker pinned CUDA_VISIBLE_DEVICES=1 before torch."""
    cpu = start_worker("--cpu")
    gpu1 = start_worker("--gpu", "1", env={"SAEJOBS_DEVICE": "cpu"})  # no GPU here: pinning is what is tested
    job = submitted(saejobs("download", tiny_sae.id, "--source", str(tiny_sae.mirror), "--gpu", "1", "--wait", "--json"))
    assert job["gpu"] == "1" and job["queue"] == "saejobs.gpu1" and "gpu1" in job["worker"]
    listed = json.loads(saejobs("workers", "--json").stdout)
    pinned = next(w for w in listed if w["gpu"] == "1")
    # GPU 1 of any host, GPU 1 of this host (--gpu HOST:1), then any job; no downloads unless sent to its GPU
    assert "CUDA_VISIBLE_DEVICES=1" in pinned["device"]
    assert pinned["queues"] == ["saejobs.gpu1", f"saejobs.gpu1@{pinned['host']}", "saejobs"]
    assert {w["state"] for w in listed} <= {"idle", "busy"} and len(listed) == 2
    assert cpu.terminate() == 0 and gpu1.terminate() == 0
    listed = json.loads(saejobs("workers", "--json").stdout)
    assert listed == []


def test_events_are_one_per_state_change_or_report(db_url, start_worker, tiny_sae):
    start_worker()
    job = submitted(saejobs("download", tiny_sae.id, "--source", str(tiny_sae.mirror), "--wait", "--json"))
    with session() as s:
        events = s.scalars(select(JobEvent).where(JobEvent.job_id == job["id"]).order_by(JobEvent.id)).all()
    assert [e.state for e in events].count("succeeded") == 1
    shown = json.loads(saejobs("jobs", "show", job["id"], "--events", "--json").stdout)
    assert len(shown["events"]) == len(events)


def test_a_job_whose_message_the_broker_lost_is_sent_again(db_url, start_worker, tiny_sae):
    """Redis restarted without persistence: the database still says queued, so a worker re-sends it."""
    from tests.queue_harness import flush

    submitted(saejobs("download", tiny_sae.id, "--source", str(tiny_sae.mirror), "--local", "--json"))
    job = submitted(saejobs("verify", tiny_sae.id, "--structural-only", "--json"))
    flush()  # the message is gone; the row is still queued
    start_worker(env={"SAEJOBS_ORPHAN_AFTER": "1"})
    done = wait_for(lambda: (j := jobs.get(job["id"])).state == "succeeded" and j, 60, "the re-sent job")
    assert done.attempts == 1


def test_a_worker_shows_idle_as_soon_as_its_job_ends(db_url, start_worker, tiny_sae):
    """Not at its next beat: with beats 60 s apart, the row must already say idle when --wait returns."""
    slow = {"SAEJOBS_HEARTBEAT": "60", "SAEJOBS_STALE_AFTER": "600"}
    start_worker(env=slow)
    job = submitted(saejobs("verify", tiny_sae.id, "--structural-only", "--path", str(tiny_sae.mirror_folder),
                            "--wait", "--json"))
    assert job["state"] == "succeeded", job
    (worker,) = json.loads(saejobs("workers", "--json", env=slow).stdout)
    assert worker["state"] == "idle" and worker["current_job"] is None, worker
