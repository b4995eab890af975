"""How fast the CLI answers, measured side by side with a bare interpreter in one run.

    python bench/cli.py [--runs 5] [--broker URL] [--fast]

Median of ``--runs`` wall times (process start to exit) of ``python -c pass`` (the floor), ``saejobs
--help``, ``saejobs jobs list`` (a database holding 50 jobs), ``saejobs saes list``; then the overhead
of ``saejobs verify ID --structural-only --wait`` over the job's own time (its row's start to end) for
a job queued to a warm CPU worker through Redis: start-up, imports, the row, the message, the pickup
and noticing the end. Goals (issue 20, 2-core machine): --help < 0.4 s, jobs list < 0.8 s, overhead
< 1 s. Exits 1 if a job does not succeed. ``--fast``: one run each and 5 stored jobs, so that a test
(tests/test_benches.py) runs the whole script in seconds; its figures say nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SAEJOBS = [sys.executable, "-m", "saejobs.cli.main"]  # what the `saejobs` script runs


def wall(cmd: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--broker", default="redis://127.0.0.1:6379/12")
    p.add_argument("--fast", action="store_true", help="one run each, 5 stored jobs: the script and its checks, fast")
    a = p.parse_args()
    if a.fast:
        a.runs = 1
    home = Path(tempfile.mkdtemp(prefix="saejobs-bench-cli-"))
    os.environ.update(SAEJOBS_HOME=str(home), SAEJOBS_BROKER=a.broker)
    os.environ.pop("SAEJOBS_DB", None)
    from saejobs.worker import up

    broker = None if up.broker_answers(a.broker) else up.start_broker(a.broker)
    import redis

    redis.Redis.from_url(a.broker).flushdb()
    from saejobs.db import jobs
    from tests.synthetic_saes import make

    for _ in range(5 if a.fast else 50):
        jobs.create("verify", {"sae": "bench"})
    sae = make(home, d_model=64, d_sae=256)
    subprocess.run([*SAEJOBS, "download", sae.id, "--source", str(sae.mirror), "--local", "--json"], cwd=ROOT,
                   check=True, capture_output=True)

    floor = wall([sys.executable, "-c", "pass"], a.runs)
    rows = [("python -c pass (floor)", floor, None)]
    for label, args, goal in (("saejobs --help", ["--help"], 0.4), ("saejobs jobs list", ["jobs", "list"], 0.8),
                              ("saejobs saes list", ["saes", "list"], None)):
        rows.append((label, wall([*SAEJOBS, *args], a.runs), goal))

    log = open(home / "worker.log", "w")
    worker = subprocess.Popen([*SAEJOBS, "worker", "--cpu", "--loglevel", "warning"], cwd=ROOT, stdout=log,
                              stderr=subprocess.STDOUT)
    failed = False
    try:
        cmd = [*SAEJOBS, "verify", sae.id, "--structural-only", "--wait", "--json"]
        subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, timeout=300)  # warm: the worker's first job
        overhead, task = [], []
        for _ in range(a.runs):
            t0 = time.perf_counter()
            res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
            total = time.perf_counter() - t0
            job = json.loads(res.stdout)
            if res.returncode != 0 or job["state"] != "succeeded":
                failed = True
                print(f"job {job.get('id')} {job.get('state')}: {job.get('error')}", file=sys.stderr)
                continue
            row = jobs.get(job["id"])
            own = (row.finished_at - row.started_at).total_seconds()
            task.append(own)
            overhead.append(total - own)
    finally:
        worker.terminate()
        worker.wait(timeout=60)
        if broker is not None:
            broker.terminate()

    print(f"CLI start-up and submit overhead, median of {a.runs} (CPU threads: {os.cpu_count()})")
    for label, t, goal in rows:
        extra = f"  (goal < {goal} s: {'met' if t < goal else 'NOT met'})" if goal else ""
        print(f"  {label:<26} {t:6.3f} s   {t / floor:5.1f}x the floor{extra}")
    if overhead:
        o = statistics.median(overhead)
        print(f"  verify --structural-only --wait: {o:.3f} s over the task's own {statistics.median(task):.3f} s "
              f"(goal < 1 s: {'met' if o < 1 else 'NOT met'})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
