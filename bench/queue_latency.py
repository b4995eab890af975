"""Enqueue → start latency through loopback Redis and a real worker process.

    python bench/queue_latency.py [--jobs 40] [--db URL] [--broker URL] [--fast]

A CPU worker (``python -m worker.main --cpu``) runs structural ``verify`` jobs on a small synthetic SAE. Each
job is submitted once the previous one has finished, so the figure is the system's latency, not
time spent waiting behind other jobs. Times come from the job rows (``created_at`` is written before
the message is sent, ``started_at`` when a worker claims it), so they include the database commit,
the publish, Redis, the worker's fetch and the atomic claim. Exits non-zero when a job does not succeed.
``--fast``: 5 queued and 3 local jobs, so that a test (tests/test_benches.py) runs the whole script in
seconds; its figures say nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import wait_job  # noqa: E402


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--jobs", type=int, default=40)
    p.add_argument("--db", help="SQLAlchemy URL (default: a fresh SQLite file)")
    p.add_argument("--broker", default="redis://127.0.0.1:6379/14")
    p.add_argument("--fast", action="store_true", help="5 queued and 3 local jobs: the script and its checks, fast")
    a = p.parse_args()
    if a.fast:
        a.jobs = 5

    home = Path(tempfile.mkdtemp(prefix="saejobs-bench-"))
    os.environ.update(SAEJOBS_HOME=str(home), SAEJOBS_BROKER=a.broker, SAEJOBS_HEARTBEAT="1")
    if a.db:
        os.environ["SAEJOBS_DB"] = a.db
    import redis

    redis.Redis.from_url(a.broker).flushdb()
    from saejobs.db import jobs
    from saejobs.tasks.runner import execute
    from saejobs.tasks.submit import submit
    from tests.synthetic_saes import make
    from saejobs.tasks.runner import local_executor

    sae = make(home, d_model=64, d_sae=256)
    job = submit("download", {"sae": sae.id, "source": str(sae.mirror)}, sae_id=sae.id, local=True)
    execute(job.id, local_executor())

    log = open(home / "worker.log", "w")
    worker = subprocess.Popen([sys.executable, "-m", "saejobs.worker.main", "--cpu", "--loglevel", "warning"], cwd=ROOT,
                              env=os.environ.copy(), stdout=log, stderr=subprocess.STDOUT)
    try:
        warm = submit("verify", {"sae": sae.id, "structural_only": True}, sae_id=sae.id)  # the worker's first job imports the engine
        wait_job(warm.id, 120)
        start, publish, total = [], [], []
        for _ in range(a.jobs):
            t0 = time.perf_counter()
            j = submit("verify", {"sae": sae.id, "structural_only": True}, sae_id=sae.id)
            publish.append(time.perf_counter() - t0)
            done = wait_job(j.id, 60)
            total.append(time.perf_counter() - t0)
            start.append((done.started_at - done.created_at).total_seconds())
        local = []
        for _ in range(3 if a.fast else 10):
            j = submit("verify", {"sae": sae.id, "structural_only": True}, sae_id=sae.id, local=True)
            execute(j.id, local_executor())
            row = jobs.get(j.id)
            if row.state != "succeeded":
                raise SystemExit(f"bench job {j.id} {row.state}: {row.error}")
            local.append((row.started_at - row.created_at).total_seconds())
    finally:
        worker.terminate()
        worker.wait(timeout=60)
    db = os.environ.get("SAEJOBS_DB", "sqlite (default file)")
    print(f"queue latency, {a.jobs} verify jobs, one CPU worker, broker {a.broker}, database {db}")
    print(f"  enqueue -> start   p50 {1000 * statistics.median(start):7.1f} ms   p95 {1000 * pct(start, 0.95):7.1f} ms")
    print(f"  submit call        p50 {1000 * statistics.median(publish):7.1f} ms   p95 {1000 * pct(publish, 0.95):7.1f} ms")
    print(f"  submit -> finished p50 {1000 * statistics.median(total):7.1f} ms   p95 {1000 * pct(total, 0.95):7.1f} ms")
    print(f"  --local create -> start p50 {1000 * statistics.median(local):7.1f} ms (no broker; for comparison)")
    print(f"  ratio queued/local start latency: {statistics.median(start) / statistics.median(local):.1f}x")


if __name__ == "__main__":
    main()
