"""A command run in its own process group, killed whole afterwards: what it started and left behind (a
worker, a Hub, a broker) goes with it, and one that hangs fails its test instead of the suite."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest


def run_group(args: list[str], *, cwd: Path, env: dict[str, str], timeout: float, what: str
              ) -> subprocess.CompletedProcess:
    p = subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        pytest.fail(f"{what} ran past {timeout} s\n{out[-3000:]}\n{err[-3000:]}")
    finally:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return subprocess.CompletedProcess(args, p.returncode, out, err)
