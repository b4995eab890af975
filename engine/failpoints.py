"""Named points where the fault tests kill a worker, so "SIGKILL between commit and progress report"
is a test that hits that instant every time instead of a race.

``SAEJOBS_KILL_AT="sweep.chunk_stored:2"`` makes the process SIGKILL itself the 2nd time it passes
``hit("sweep.chunk_stored")``. Unset (always, outside the fault suite) a hit is one dict lookup.
The kill is a real SIGKILL: no ``finally``, no rollback, no goodbye to the broker.
"""

from __future__ import annotations

import os
import signal

POINTS = (
    "sweep.loaded",  # model and SAE loaded, no sweep row yet
    "sweep.chunk_generated",  # a chunk generated, not yet stored
    "results.before_commit",  # a chunk's rows inserted, its transaction not committed
    "sweep.chunk_stored",  # a chunk committed, its progress not yet reported
    "runner.before_finish",  # every row stored, the job not yet marked succeeded
    "download.file_written",  # a file complete in its .part, not yet renamed
)


def _parse(spec: str) -> tuple[str, int] | None:
    if not spec:
        return None
    name, _, nth = spec.partition(":")
    if name not in POINTS:
        raise ValueError(f"SAEJOBS_KILL_AT: unknown point '{name}' (known: {', '.join(POINTS)})")
    return name, int(nth or 1)


_target = _parse(os.environ.get("SAEJOBS_KILL_AT", ""))
_seen: dict[str, int] = {}


def hit(name: str) -> None:
    if _target is None or _target[0] != name:
        return
    _seen[name] = _seen.get(name, 0) + 1
    if _seen[name] == _target[1]:
        os.kill(os.getpid(), signal.SIGKILL)
