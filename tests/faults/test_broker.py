"""Redis dies and comes back empty (no persistence: every message in it is gone), with jobs queued
and with one running; and what travels on the queue is JSON, never pickle.

A private ``redis-server`` with a password (``tests/faults/servers.py``) so it can be killed at will
and so the tests can check that the password is never printed.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from saejobs.db import jobs
from tests.dbfixtures import home  # noqa: F401
from tests.faults.servers import RedisServer
from tests.faults.sweeps import N_CONFIGS, Hold, sqlite_db, stored, sweep_args  # noqa: F401
from tests.queue_harness import FAST, start_worker, wait_for  # noqa: F401
from tests.test_queue import one_clean_line, saejobs, submitted
from tests.up_harness import running_up

pytestmark = pytest.mark.model
PASSWORD = "redisPassw0rdNeverPrinted"
ORPHAN_AFTER = "2"


@pytest.fixture
def redis_server(tmp_path, monkeypatch):
    try:
        server = RedisServer(tmp_path, PASSWORD).start()
    except (RuntimeError, AssertionError) as e:
        pytest.fail(f"the broker fault tests need redis-server: {e}")
    monkeypatch.setenv("SAEJOBS_BROKER", server.url)
    monkeypatch.setenv("SAEJOBS_ORPHAN_AFTER", ORPHAN_AFTER)
    for k, v in FAST.items():
        monkeypatch.setenv(k, v)
    yield server
    server.kill()


@pytest.fixture
def broker(redis_server):  # what queue_harness.start_worker asks for: here, the private server
    return redis_server.url


def queued_messages(server: RedisServer) -> list[dict]:
    return [json.loads(m) for m in server.client().lrange("saejobs", 0, -1)]


def test_redis_restart_loses_no_queued_or_running_job(home, sqlite_db, redis_server, start_worker, tiny_gemma2_dir,
                                                      ledger, tmp_path):
    quick = sweep_args(home, tiny_gemma2_dir, n_tokens=8, batch_size=8)
    queued = [submitted(saejobs(*quick, "--seed", str(s))) for s in (1, 2)]
    assert len(queued_messages(redis_server)) == 2
    redis_server.kill()
    redis_server.start()  # empty: both messages are gone, both rows still say queued
    assert queued_messages(redis_server) == [] and all(jobs.get(j["id"]).state == "queued" for j in queued)
    ledger.add("redis_restarts")

    t0 = time.monotonic()
    # Redis is killed under this worker below, on purpose: its beat's orphan check asks the broker every
    # second (SAEJOBS_ORPHAN_AFTER=2), so "beat failed" is expected then; a Traceback still is not
    worker = start_worker(tolerate=("beat failed",))
    for j in queued:
        done = wait_for(lambda: (r := jobs.get(j["id"])).state in ("succeeded", "failed") and r, 120, "a lost job")
        assert done.state == "succeeded" and done.attempts == 1, done.error
        assert stored(j["id"]) == N_CONFIGS
    ledger.figure("redis_restart_to_queued_jobs_done", time.monotonic() - t0)
    assert worker.text().count("message is not in the broker; sent again") == 2

    # The sweep runs through the outage: a worker held mid-sweep (two chunks stored) until Redis is back, so the
    # outage never outlasts the sweep however fast the machine (the end of a job during an outage is the
    # next test's).
    worker.terminate(clean=True)
    hold = Hold(tmp_path, "sweep.chunk_stored:2")
    worker = start_worker(env=hold.env, tolerate=("beat failed",))
    slow = sweep_args(home, tiny_gemma2_dir, n_tokens=24, batch_size=1)
    running = submitted(saejobs(*slow))
    hold.wait()
    redis_server.kill()
    ledger.add("redis_restarts")

    during = saejobs(*quick)  # the CLI during the outage: one line, exit 6, no password
    line = one_clean_line(during, 6)
    assert "broker unreachable at redis://:***@127.0.0.1" in line, line
    assert "jobs retry" in line and PASSWORD not in line
    refused = jobs.get(line.split("job ")[1].split()[0]).id
    assert jobs.get(refused).state == "failed"  # said so, not left queued with no message
    shown = submitted(saejobs("jobs", "show", running["id"], "--json"))  # the database still answers
    assert shown["state"] == "running"

    redis_server.start()
    hold.release()
    done = wait_for(lambda: (r := jobs.get(running["id"])).state in ("succeeded", "failed") and r, 180,
                    "the sweep that ran through the outage")
    assert done.state == "succeeded" and done.attempts == 1 and stored(running["id"]) == N_CONFIGS

    t0 = time.monotonic()
    again = submitted(saejobs("jobs", "retry", refused, "--wait", "--json"))  # the worker reconnected by itself
    assert again["state"] == "succeeded" and stored(refused) == N_CONFIGS
    ledger.figure("redis_back_to_next_job_done", time.monotonic() - t0)
    assert PASSWORD not in worker.text()
    ledger.add("rows_expected", 4 * N_CONFIGS)
    ledger.add("rows_lost", sum(N_CONFIGS - stored(j) for j in [*(q["id"] for q in queued), running["id"], refused]))


def test_a_job_that_ends_while_redis_is_down_leaves_no_worker_that_takes_nothing(home, sqlite_db, redis_server,
                                                                                 tiny_gemma2_dir, tmp_path, ledger):
    """The job ends during the outage, so its ack fails; after that Celery's consumer may poll a socket closed
    under it and take nothing, forever (celery #9054: seen in this suite). Under ``saejobs up`` the next job
    must still run: the worker's beat sees itself idle while a job waits untaken in its queues, exits 75, and
    up starts a fresh one (or the consumer recovered by itself)."""
    quick = sweep_args(home, tiny_gemma2_dir, n_tokens=8, batch_size=8)
    hold = Hold(tmp_path, "runner.before_finish:1")  # every row stored, the job not yet marked succeeded
    env = {**os.environ, **FAST, **hold.env, "SAEJOBS_RESTART_BACKOFF": "0.5"}
    with running_up(Path(__file__).resolve().parents[2], env, tmp_path / "up.log") as up:
        first = submitted(saejobs(*quick, "--seed", "1"))
        hold.wait()
        redis_server.kill()
        ledger.add("redis_restarts")
        hold.release()  # the job ends now, its ack with nowhere to go
        wait_for(lambda: jobs.get(first["id"]).state == "succeeded", 120, "the job to end during the outage")
        redis_server.start()
        t0 = time.monotonic()
        second = submitted(saejobs(*quick, "--seed", "2", "--wait", "--json"))
        assert second["state"] == "succeeded" and stored(second["id"]) == N_CONFIGS
        ledger.figure("redis_back_after_a_failed_ack_to_next_job_done", time.monotonic() - t0)
        assert up.proc.poll() is None, up.text()[-3000:]  # the stack lives on
        up.proc.send_signal(signal.SIGINT)
        assert up.proc.wait(timeout=120) == 0, up.text()[-3000:]
    ledger.add("rows_expected", 2 * N_CONFIGS)
    ledger.add("rows_lost", 2 * N_CONFIGS - stored(first["id"]) - stored(second["id"]))


def test_only_json_travels_and_a_pickled_message_is_never_unpickled(home, sqlite_db, redis_server, start_worker,
                                                                    tmp_path, ledger):
    from saejobs.tasks.app import app

    assert app.conf.accept_content == ["json"] and app.conf.task_serializer == "json"
    job = jobs.create("download", {"sae": "nothing/at-all"})  # no queue: the orphan resender leaves it be
    from saejobs.tasks.submit import send

    send(job.id)
    (msg,) = queued_messages(redis_server)
    assert msg["content-type"] == "application/json" and msg["content-encoding"] == "utf-8"
    assert json.loads(__import__("base64").b64decode(msg["body"]))[0] == [job.id]
    redis_server.client().delete("saejobs")

    marker = tmp_path / "unpickled"

    class Payload:  # unpickling this runs a command that leaves a file behind
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    with app.connection_for_write(redis_server.url) as conn:
        app.send_task("saejobs.run_job", args=[Payload()], serializer="pickle", connection=conn)
    (msg,) = queued_messages(redis_server)
    assert msg["content-type"] == "application/x-python-serialize"
    worker = start_worker(tolerate=("ContentDisallowed",))  # kombu logs its refusal with a traceback: the point
    wait_for(lambda: "Refusing to deserialize untrusted content of type pickle" in worker.text(), 30,
             "the worker to refuse the pickled message")
    time.sleep(1)
    assert not marker.exists() and jobs.get(job.id).state == "queued"
    assert queued_messages(redis_server) == []  # dropped, not redelivered forever
    ledger.add("pickled_messages_refused")
