"""What the bench scripts share: following a job row until it is done; the demo SAE they steer with; counting
a call's arithmetic."""

from __future__ import annotations

import os
import time
from typing import Callable
from unittest.mock import patch


def wait_job(job_id: str, timeout: float = 600, poll: float = 0.005):
    """The job's row once it succeeded; exits the bench with its error otherwise."""
    from saejobs.db import jobs

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = jobs.get(job_id)
        if row.state in ("succeeded", "failed", "cancelled"):
            if row.state != "succeeded":
                raise SystemExit(f"bench job {job_id} {row.state}: {row.error}")
            return row
        time.sleep(poll)
    raise SystemExit(f"bench job {job_id} did not finish in {timeout}s")


def build_demo(lm, mirror, fast: bool = False):
    """``engine.demo.build(lm, mirror)``: the demo SAE written into the Hub-like ``mirror``; returns its folder.
    ``fast`` (a bench's ``--fast``): random weights (unit decoder rows) in the demo's exact layout, shape and
    config instead, without reading the calibration text through the model (10-30 s on a 2-core CPU). What a
    bench measures and checks (steering, batching, loading, the worker) runs on either the same way."""
    from saejobs.engine import demo

    if not fast:
        return demo.build(lm, mirror)
    from saejobs.engine.synthetic import gemma_scope_2_config, random_params, write_sae

    e = demo.ENTRY
    return write_sae(mirror / e.repo_id / e.folder, e.format, random_params(e.d_model, e.d_sae),
                     {**gemma_scope_2_config(e), "synthetic": True, "note": "bench --fast: random weights"})


def matrix_flops(fn: Callable[[], object]) -> int:
    """Floating-point operations of ``fn``'s matrix products, as torch's ``FlopCounterMode`` counts each operator
    dispatched. CUDA graphs are off for the call (``SAEJOBS_CUDA_GRAPHS=0``): a graph's replay dispatches nothing,
    so its steps would go uncounted; eagerly the same products run once per step."""
    from torch.utils.flop_counter import FlopCounterMode

    with patch.dict(os.environ, {"SAEJOBS_CUDA_GRAPHS": "0"}), FlopCounterMode(display=False) as counted:
        fn()
    return counted.get_total_flops()
