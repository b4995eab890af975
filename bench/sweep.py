"""Sweep throughput, warm-worker reuse and SAE loading, each measured side by side in one run.

    python bench/sweep.py [--device cpu|cuda] [--skip-worker] [--broker URL] [--fast]

1. 16 steering configurations × 32 greedy tokens on Gemma 3 270M: one batched generation (a
   different steering vector per row) vs one configuration at a time. Outputs must be identical.
   1b. The same with named steers across two layers (6 and 12), every row mixing two operations
   (additive, orthogonal, projection cap, norm-scaled add, ablate, swap): 4 steers × 4 multipliers.
2. A small sweep job through Redis: on a cold worker (process start, imports, model and SAE load)
   vs the same job again on that worker, now warm (model and SAE in its engine cache).
3. A Gemma Scope SAE at the real 2304 × 16384 shape, from files to its first full encode of 64
   tokens (every weight read): parsing params.npz (with every check) vs memory-mapping the converted
   safetensors copy. Both encodes must be identical.

Exits 1 when an identity check fails (outputs of part 1, encodes of part 3).

``--fast`` runs the same three parts to their end, checks included, at tiny sizes (4 configurations ×
4 tokens; one warm job of 2 tokens; a 64 × 512 SAE in part 3) and with the demo SAE's layout holding
random weights (``bench._common.build_demo``), so that a test (tests/test_benches.py) runs the whole
script in seconds beyond the model loads. Its figures say nothing.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import build_demo, wait_job  # noqa: E402
os.environ.setdefault("SAEJOBS_MODEL_CACHE", str(Path.home() / ".cache" / "saejobs" / "models"))


def batched_vs_one_by_one(device: str, fast: bool = False) -> tuple[bool, Path]:
    """Part 1; returns its identity check and the Hub-like mirror it built the demo SAE into."""
    import torch

    from saejobs.engine import demo
    from saejobs.engine.models import load_model
    from saejobs.engine.sae import load_sae
    from saejobs.engine.request import Settings, plan_configs
    from saejobs.engine.sweep import SweepGenerator

    lm = load_model("gemma-3-270m-gguf", torch.float32, device)
    mirror = Path(tempfile.mkdtemp())
    folder = build_demo(lm, mirror, fast)
    sae = load_sae(demo.ENTRY, folder, device=device)
    settings = Settings(n_tokens=4 if fast else 32)
    features, strengths = ([0, 1], [50, 200]) if fast else ([0, 1, 2, 3], [25, 50, 100, 200])
    configs = [c for c in plan_configs(features, [], strengths, ["Once upon a time"], [42], False, settings, "bench")
               if c.type == "STEERED"]
    assert len(configs) == len(features) * len(strengths)
    t_batch, t_alone, same = batched_and_alone(SweepGenerator(lm, sae, demo.ENTRY.hook_name, settings), configs)
    print(f"1. {len(configs)} configs × {settings.n_tokens} tokens on {device}: batched {t_batch:.2f} s, "
          f"one at a time {t_alone:.2f} s -> {t_alone / t_batch:.1f}x (outputs identical: {same})")
    return same & mixed_operations(lm, sae, settings, strengths, device), mirror


def batched_and_alone(runner, configs) -> tuple[float, float, bool]:
    """(seconds batched, seconds one at a time, whether every row's tokens agree), after a warm-up."""
    runner.run(configs[:2])  # warm-up (allocator, kernels)
    t0 = time.perf_counter()
    batched = runner.run(configs)
    t_batch = time.perf_counter() - t0
    t0 = time.perf_counter()
    alone = [runner.run([c])[0] for c in configs]
    t_alone = time.perf_counter() - t0
    return t_batch, t_alone, [x[1].token_ids for x in batched] == [y[1].token_ids for y in alone]


SECOND_LAYER = 12


def mixed_operations(lm, sae, settings, multipliers, device: str) -> bool:
    """Part 1b: named steers across two layers (the demo SAE at 6, a random SAE of the same shape at 12),
    every row mixing two operations, four steers × the multipliers, batched vs one at a time."""
    from saejobs.engine import demo
    from saejobs.engine.request import plan_configs
    from saejobs.engine.sae import load_sae
    from saejobs.engine.sweep import SweepGenerator
    from saejobs.engine.synthetic import random_params, write_sae

    e = demo.ENTRY
    second = replace(e, id=f"bench/{SECOND_LAYER}-random", layer=SECOND_LAYER,
                     hook_name=f"blocks.{SECOND_LAYER}.hook_resid_post")
    folder = write_sae(Path(tempfile.mkdtemp()) / "second", second.format, random_params(e.d_model, e.d_sae, 1))
    other = load_sae(second, folder, device=device)
    a, b = e.id, second.id
    steers = [("add + orthogonal", ({"sae": a, "index": 0, "strength": 60.0},
                                    {"sae": b, "index": 3, "strength": 3.0, "method": "ORTHOGONAL_DECOMP"})),
              ("cap + add", ({"sae": a, "index": 1, "method": "PROJECTION_CAP", "max": 0.0},
                             {"sae": b, "index": 5, "strength": 40.0})),
              ("norm-scaled + ablate", ({"sae": a, "index": 2, "strength": 0.2, "method": "NORM_SCALED_ADD"},
                                        {"sae": b, "index": 7, "method": "ABLATE"})),
              ("swap + add", ({"sae": b, "index": 9, "method": "SWAP", "target": {"sae": b, "index": 11}},
                              {"sae": a, "index": 4, "strength": 30.0}))]
    configs = [c for c in plan_configs([], [], [m / 100 for m in multipliers], ["Once upon a time"], [42], False,
                                       settings, "bench", steers=steers) if c.type == "STEERED"]
    runner = SweepGenerator(lm, sae, e.hook_name, settings, saes={a: (sae, e.hook_name), b: (other, second.hook_name)})
    t_batch, t_alone, same = batched_and_alone(runner, configs)
    print(f"1b. {len(configs)} mixed-operation steers at layers {e.layer} and {SECOND_LAYER} × {settings.n_tokens} "
          f"tokens: batched {t_batch:.2f} s, one at a time {t_alone:.2f} s -> {t_alone / t_batch:.1f}x "
          f"(outputs identical: {same})")
    return same


def warm_vs_cold_worker(broker: str, mirror: Path | None = None, fast: bool = False) -> None:
    """Part 2. ``mirror``: part 1's, when its model was this one (float32, CPU), so the demo SAE built
    from it is the one this part would build (the download copies only the SAE's own files)."""
    home = Path(tempfile.mkdtemp(prefix="saejobs-bench-"))
    os.environ.update(SAEJOBS_HOME=str(home), SAEJOBS_BROKER=broker)
    import redis

    redis.Redis.from_url(os.environ["SAEJOBS_BROKER"]).flushdb()
    from saejobs.engine import demo
    from saejobs.engine.models import load_model
    from saejobs.engine.registry import custom
    from saejobs.engine.request import Settings, SweepRequest
    from saejobs.tasks.runner import execute
    from saejobs.tasks.submit import submit
    from saejobs.tasks.runner import local_executor

    if mirror is None:
        mirror = home / "mirror"
        build_demo(None if fast else load_model("gemma-3-270m-gguf"), mirror, fast)  # fast: no model needed
    custom.write([demo.ENTRY], "demo")
    execute(submit("download", {"sae": demo.ENTRY.id, "source": str(mirror)}, sae_id=demo.ENTRY.id,
                   local=True).id, local_executor())
    settings = Settings(n_tokens=2 if fast else 8)
    params = SweepRequest(sae=demo.ENTRY.id, model="gemma-3-270m-gguf", features=(0,), strengths=(100.0,),
                          prompts=("Once upon a time",), settings=settings).to_params()
    log = open(home / "worker.log", "w")
    t0 = time.perf_counter()
    worker = subprocess.Popen([sys.executable, "-m", "saejobs.worker.main", "--cpu", "--loglevel", "warning"], cwd=ROOT,
                              env=os.environ.copy(), stdout=log, stderr=subprocess.STDOUT)
    try:
        cold_job = wait_job(submit("sweep", params, sae_id=demo.ENTRY.id).id)
        cold = time.perf_counter() - t0
        warm, warm_load = [], []
        for seed in (43,) if fast else (43, 44, 45):
            t0 = time.perf_counter()
            row = wait_job(submit("sweep", {**params, "seeds": [seed]}, sae_id=demo.ENTRY.id).id)
            warm.append(time.perf_counter() - t0)
            warm_load.append(_load_phase(row))
    finally:
        worker.terminate()
        worker.wait(timeout=60)
    mid = len(warm) // 2
    w, wl, cl = sorted(warm)[mid], sorted(warm_load)[mid], _load_phase(cold_job)
    print(f"2. sweep job (2 generations × {settings.n_tokens} tokens) via Redis, cold worker vs warm worker "
          f"(median of {len(warm)}):")
    print(f"   worker start -> job done {cold:.2f} s vs submit -> job done {w:.2f} s -> {cold / w:.1f}x")
    print(f"   model + SAE acquisition inside the job: cold {cl:.2f} s (load), warm {1000 * wl:.1f} ms (engine cache hit)")


def sae_load(fast: bool = False) -> bool:
    import dataclasses

    import torch

    from saejobs.engine import sae as sae_mod
    from saejobs.engine.formats import read_params
    from saejobs.engine.registry import get
    from saejobs.engine.synthetic import random_params, write_sae

    entry = get("gemma-2-2b/20-gemmascope-res-16k")
    if fast:
        entry = dataclasses.replace(entry, d_model=64, d_sae=512)
    folder = write_sae(Path(tempfile.mkdtemp()) / "sae", "gemma-scope", random_params(entry.d_model, entry.d_sae))
    x = torch.randn(64, entry.d_model, generator=torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    parsed = sae_mod.JumpReLUSAE(read_params(folder, entry), entry)
    from_npz = parsed.encode(x)
    parse = time.perf_counter() - t0
    sae_mod.load_sae(entry, folder)  # writes the converted copy (once per downloaded folder)
    times, encodes = [], []
    for _ in range(5):
        t0 = time.perf_counter()
        encodes.append(sae_mod.load_sae(entry, folder).encode(x))
        times.append(time.perf_counter() - t0)
    cached = sorted(times)[2]
    same = all(torch.equal(e, from_npz) for e in encodes)
    print(f"3. SAE {entry.d_model}×{entry.d_sae}, files -> first full encode of 64 tokens: "
          f"parse params.npz {parse:.2f} s, "
          f"converted memory-mapped copy {1000 * cached:.1f} ms -> {parse / cached:.0f}x (encodes identical: {same})")
    return same


def _load_phase(job) -> float:
    """Model + SAE acquisition inside a sweep job (seconds): from its "loading SAE" event to its first
    "generations" event, summed over the rows that ran it. A queued sweep is a parent row whose shards
    run (``tasks/sweep.py`` reports on the shard's own row; the parent only shows "N/M shards done")."""
    from saejobs.db import jobs

    total = 0.0
    for row in jobs.shards(job.id) or [job]:
        events = jobs.events(row.id, limit=10_000)
        start = next((e.at for e in events if (e.message or "").startswith("loading SAE")), None)
        ready = next((e.at for e in events if start is not None and e.at >= start
                      and "generations" in (e.message or "")), None)
        if start is None or ready is None:
            raise SystemExit(f"job {row.id} has no 'loading SAE' or 'generations' event: "
                             f"{[e.message for e in events]}")
        total += (ready - start).total_seconds()
    return total


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cpu")
    p.add_argument("--skip-worker", action="store_true", help="Skip part 2 (needs Redis).")
    p.add_argument("--broker", default="redis://127.0.0.1:6379/13", help="Redis for part 2 (its database is flushed)")
    p.add_argument("--fast", action="store_true", help="tiny sizes: every part to its end with its checks, in seconds")
    a = p.parse_args()
    ok, mirror = batched_vs_one_by_one(a.device, a.fast)
    if not a.skip_worker:
        warm_vs_cold_worker(a.broker, mirror if a.device == "cpu" else None, a.fast)
    ok &= sae_load(a.fast)
    if not ok:
        print("an identity check failed", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
