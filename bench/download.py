"""Download throughput against plain curl, and the worker's memory while it streams a big file.

    python bench/download.py [--d-sae 16384] [--rounds 2] [--broker URL] [--fast]

A loopback Hub (``tests/hub_server.py``, the stand-in the tests use) serves a Gemma Scope layout
SAE of Gemma 2 2B's shape (2304 × 16384, float32: ~302 MB ``params.npz``). Each round, in the same
run, ``curl -L`` fetches the same resolve URL into a file on the same disk, then a real worker
process (``python -m worker.main --cpu``) runs a ``saejobs download`` job for it from the queue
(the copy from the round before is deleted first). saejobs does more than curl: it asks for the
metadata (HEAD), hashes every byte (sha256 against the LFS etag), fsyncs and records the files.

Memory: the worker's peak resident set during the job, minus its resident set just before it
(``/proc/PID/clear_refs`` resets the peak, ``VmHWM`` reads it). A warm-up download of a small SAE
runs first, so imports (huggingface_hub) are not counted as growth. Goal: < 100 MB.

Exits non-zero when a copy differs from the served file. ``--fast``: one round of a 64 × 1024 SAE
(0.5 MB), so that a test (tests/test_benches.py) runs the whole script in seconds; its figures say nothing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import wait_job  # noqa: E402


def kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise SystemExit(f"no {field} for pid {pid}")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--d-model", type=int, default=2304)
    p.add_argument("--d-sae", type=int, default=16384)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--broker", default="redis://127.0.0.1:6379/13")
    p.add_argument("--fast", action="store_true", help="one round, a 64 × 1024 SAE: the script and its checks, fast")
    a = p.parse_args()
    if a.fast:
        a.d_model, a.d_sae, a.rounds = 64, 1024, 1
    if not shutil.which("curl"):
        raise SystemExit("bench/download.py needs curl on PATH")

    home = Path(tempfile.mkdtemp(prefix="saejobs-bench-"))
    os.environ.update(SAEJOBS_HOME=str(home), SAEJOBS_BROKER=a.broker, HF_HUB_DISABLE_XET="1",
                      HF_HOME=str(home / "hf-home"), HF_HUB_DISABLE_TELEMETRY="1")
    os.environ.pop("HF_TOKEN", None)
    import redis

    redis.Redis.from_url(a.broker).flushdb()
    from saejobs.engine.download import local_folder
    from saejobs.tasks.submit import submit
    from tests.hub_server import HubServer, resolve_url
    from tests.synthetic_saes import make

    small = make(home, d_model=64, d_sae=256, layer=1)
    big = make(home, d_model=a.d_model, d_sae=a.d_sae, layer=2)
    with HubServer() as hub:
        os.environ["HF_ENDPOINT"] = hub.url
        for sae in (small, big):
            hub.add_folder(sae.entry.repo_id, sae.entry.folder, sae.mirror_folder)
        size = (big.mirror_folder / "params.npz").stat().st_size
        from saejobs.engine.download import sha256_file

        want = sha256_file(big.mirror_folder / "params.npz")
        url = resolve_url(hub, big.entry.repo_id, f"{big.entry.folder}/params.npz")
        log = open(home / "worker.log", "w")
        worker = subprocess.Popen([sys.executable, "-m", "saejobs.worker.main", "--cpu", "--loglevel", "warning"],
                                  cwd=ROOT, env=os.environ.copy(), stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_job(submit("download", {"sae": small.id}, sae_id=small.id).id, 120)
            curl_s, job_s, e2e_s, growth_mb = [], [], [], []
            for _ in range(a.rounds):
                out = home / "curl.npz"
                t0 = time.perf_counter()
                subprocess.run(["curl", "-sSfL", "-o", str(out), url], check=True)
                curl_s.append(time.perf_counter() - t0)
                if sha256_file(out) != want:
                    raise SystemExit("curl's copy differs from the served file")
                out.unlink()

                shutil.rmtree(local_folder(big.entry), ignore_errors=True)
                Path(f"/proc/{worker.pid}/clear_refs").write_text("5")
                before = kb(worker.pid, "VmRSS")
                t0 = time.perf_counter()
                row = wait_job(submit("download", {"sae": big.id}, sae_id=big.id).id, 600)
                e2e_s.append(time.perf_counter() - t0)
                job_s.append((row.finished_at - row.started_at).total_seconds())
                growth_mb.append((kb(worker.pid, "VmHWM") - before) / 1024)
                if row.result["transferred_bytes"] != size:
                    raise SystemExit(f"the job transferred {row.result['transferred_bytes']} bytes, not {size}")
                if sha256_file(local_folder(big.entry) / "params.npz") != want:
                    raise SystemExit("the job's copy differs from the served file")
        finally:
            worker.terminate()
            worker.wait(timeout=60)

    mb = size / 1e6
    best = lambda xs: min(xs)  # noqa: E731 — the least disturbed round on a noisy machine
    print(f"file: {mb:.0f} MB params.npz ({a.d_model}×{a.d_sae} float32), {a.rounds} rounds, loopback Hub")
    print(f"curl -L:          best {best(curl_s):6.2f} s  {mb / best(curl_s):7.0f} MB/s   rounds {fmt(curl_s)}")
    print(f"saejobs job:      best {best(job_s):6.2f} s  {mb / best(job_s):7.0f} MB/s   rounds {fmt(job_s)}")
    print(f"submit→succeeded: best {best(e2e_s):6.2f} s  {mb / best(e2e_s):7.0f} MB/s   rounds {fmt(e2e_s)}")
    print(f"throughput ratio saejobs/curl: {best(curl_s) / best(job_s):.2f} (job), "
          f"{best(curl_s) / best(e2e_s):.2f} (submit→succeeded)")
    print(f"worker peak RSS growth during the job: max {max(growth_mb):.1f} MB (goal < 100 MB)  rounds {fmt(growth_mb)}")
    shutil.rmtree(home, ignore_errors=True)


def fmt(xs: list[float]) -> str:
    return ", ".join(f"{x:.2f}" for x in xs)


if __name__ == "__main__":
    main()
