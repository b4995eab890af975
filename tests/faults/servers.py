"""Private Redis and PostgreSQL servers that a fault test may crash and restart at will.

The machine's own servers serve every other test, so a restart there would be felt everywhere;
these run the same binaries on a free port, in a temporary folder, and nothing persists across a
restart of Redis (``--save "" --appendonly no``: the worst case, every queued message is lost).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.services import come_up, free_port, postgres_bin, postgres_user, redis_server_binary


class RedisServer:
    """``redis-server`` with a password, killed with SIGKILL and started empty again on the same port."""

    def __init__(self, folder: Path, password: str):
        self.folder, self.password, self.port = folder, password, free_port()
        self.url = f"redis://:{password}@127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "RedisServer":
        self.proc = subprocess.Popen(
            [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--requirepass", self.password, "--dir", str(self.folder)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        come_up(self.ping, 10, "redis-server")
        return self

    def ping(self) -> bool:
        import redis

        try:
            return redis.Redis.from_url(self.url, socket_connect_timeout=0.5).ping()
        except Exception:
            return False

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def client(self):
        import redis

        return redis.Redis.from_url(self.url, socket_connect_timeout=2)


class PostgresServer:
    """A throwaway PostgreSQL cluster run as an unprivileged user; ``crash`` is ``pg_ctl -m immediate``
    (the server dies without a checkpoint, as on a crash or a lost host) and a start after a pause."""

    def __init__(self):
        if os.geteuid() != 0 or not shutil.which("runuser"):
            raise RuntimeError("needs root (to run PostgreSQL's binaries as another user)")
        self.bin, self.user = postgres_bin(), postgres_user()
        self.folder = Path(tempfile.mkdtemp(prefix="saejobs-pg-"))
        pg = pwd.getpwnam(self.user)
        os.chown(self.folder, pg.pw_uid, pg.pw_gid)
        self.data, self.port = self.folder / "data", free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        self._as_postgres(str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
                          "--no-sync", "-E", "UTF8")

    def _as_postgres(self, *cmd: str) -> None:
        subprocess.run(["runuser", "-u", self.user, "--", *cmd], check=True, capture_output=True, timeout=120)

    def start(self) -> "PostgresServer":
        opts = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._as_postgres(str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", opts, "-l",
                          str(self.folder / "server.log"), "-w", "start")
        return self

    def crash(self) -> None:
        self._as_postgres(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def close(self) -> None:
        try:
            self.crash()
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.folder, ignore_errors=True)
