"""Named points where the fault tests kill or hold a worker, so "SIGKILL between commit and progress
report" or "cancel while the sweep is half stored" is a test that hits that instant every time instead
of a race.

``SAEJOBS_KILL_AT="sweep.chunk_stored:2"`` makes the process SIGKILL itself the 2nd time it passes
``hit("sweep.chunk_stored")``. The kill is a real SIGKILL: no ``finally``, no rollback, no goodbye to
the broker.

``SAEJOBS_PAUSE_AT="sweep.chunk_stored:2"`` with ``SAEJOBS_PAUSE_DIR=DIR`` holds the process there
instead: it writes ``DIR/<point>.paused`` and waits (signals are still handled) until ``DIR/<point>.go``
exists, so a test can act on a worker known to be at that point (cancel, SIGTERM, an outside kill)
and then let it go on. Unset (always, outside the fault suite) a hit is one comparison.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

POINTS = (
    "sweep.loaded",  # model and SAE loaded, no sweep row yet
    "sweep.chunk_generated",  # a chunk generated, not yet stored
    "results.before_commit",  # a chunk's rows inserted, its transaction not committed
    "sweep.chunk_stored",  # a chunk committed, its progress not yet reported
    "runner.before_finish",  # every row stored, the job not yet marked succeeded
    "download.file_written",  # a file complete in its .part, not yet renamed
    "download.bytes_written",  # a piece of a transfer written to its .part
)


def _parse(spec: str, var: str) -> tuple[str, int] | None:
    if not spec:
        return None
    name, _, nth = spec.partition(":")
    if name not in POINTS:
        raise ValueError(f"{var}: unknown point '{name}' (known: {', '.join(POINTS)})")
    return name, int(nth or 1)


_kill = _parse(os.environ.get("SAEJOBS_KILL_AT", ""), "SAEJOBS_KILL_AT")
_pause = _parse(os.environ.get("SAEJOBS_PAUSE_AT", ""), "SAEJOBS_PAUSE_AT")
_seen: dict[str, int] = {}


def hit(name: str) -> None:
    if _kill is None and _pause is None:
        return
    _seen[name] = n = _seen.get(name, 0) + 1
    if _kill == (name, n):
        os.kill(os.getpid(), signal.SIGKILL)
    if _pause == (name, n):
        folder = Path(os.environ["SAEJOBS_PAUSE_DIR"])
        (folder / f"{name}.paused").touch()
        while not (folder / f"{name}.go").exists():
            time.sleep(0.02)
