"""Exploratory GPU probes for issue 27 (not a bench): the batched Philox draw against per-row generators, a
plain Hugging Face decode loop (dynamic vs static KV cache vs a CUDA-graph-replayed step) on Gemma 2 2B,
sampling's reductions batched and row by row, and top-p's cumsum and the row loops on several streams (scans).

    python bench/gpu_probe.py --config-dir DIR --out DIR [--device cuda] [--small]
"""
from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import torch  # noqa: E402

from bench.gpu import PROMPTS, SMALL, random_model, random_sae, sync  # noqa: E402

R: dict = {}


def rec(k, v):
    R[k] = v
    print(f"{k}: {v}", flush=True)


def philox_part(dev: str) -> None:
    from saejobs.engine import philox

    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for V in (262144, 256000, 4099, 600000):
            t = time.perf_counter()
            rec(f"philox.matches.{str(dtype)[6:]}.{V}", f"{philox.matching_transform(dev, dtype, V)} ({time.perf_counter() - t:.2f} s)")
    seeds = [0, 42, 7 + (1 << 40)]
    for V in (262144, 600000):
        S = philox.grid_stride(V, dev)
        raw = torch.empty((3, V), dtype=torch.int64, device=dev)
        philox.launch(raw, philox.seed_words(seeds, dev), torch.zeros(1, dtype=torch.int64, device=dev), S, raw=True)
        u = raw.to(torch.float32) * 2.3283064365386963e-10 + 1.1641532182693481e-10
        for b, s in enumerate(seeds):
            g = torch.Generator(device=dev).manual_seed(s)
            ref = torch.empty(V, device=dev).uniform_(generator=g)
            mine = torch.where(u[b] == 1.0, torch.zeros_like(u[b]), u[b])
            rec(f"philox.uniform_mismatches.V{V}.seed{s}", int((mine != ref).sum()))
            for dtype in (torch.float32, torch.bfloat16):
                g = torch.Generator(device=dev).manual_seed(s)
                ref = torch.empty(V, device=dev, dtype=dtype).exponential_(generator=g)
                for name, he in (("own-eps", torch.finfo(dtype).eps / 2), ("float-eps", torch.finfo(torch.float32).eps / 2)):
                    e = torch.where(u[b] >= 1.0 - he, torch.full_like(u[b], -he), torch.log(u[b]))
                    rec(f"philox.exp_torchlog_mismatches.V{V}.{str(dtype)[6:]}.{name}.seed{s}", int(((-e).to(dtype) != ref).sum()))
                out = torch.empty((3, V), device=dev, dtype=dtype)
                philox.launch(out, philox.seed_words(seeds, dev), torch.zeros(1, dtype=torch.int64, device=dev), S)
                rec(f"philox.exp_kernel_mismatches.V{V}.{str(dtype)[6:]}.seed{s}", int((out[b] != ref).sum()))
    for dtype in (torch.float32, torch.bfloat16):
        B, V = 1024, 256000
        probs = torch.empty((B, V), device=dev, dtype=dtype)
        noise = philox.RowNoise(list(range(B)), dev)
        gens = [torch.Generator(device=dev).manual_seed(s) for s in range(B)]
        for _ in range(2):
            noise.exponential(probs)
            for b, g in enumerate(gens):
                probs[b].exponential_(1, generator=g)
        sync(dev)
        t = time.perf_counter()
        for _ in range(10):
            noise.exponential(probs)
        sync(dev)
        t1 = (time.perf_counter() - t) / 10
        t = time.perf_counter()
        for _ in range(3):
            for b, g in enumerate(gens):
                probs[b].exponential_(1, generator=g)
        sync(dev)
        t2 = (time.perf_counter() - t) / 3
        rec(f"philox.time_ms.{str(dtype)[6:]}.1024x256000", {"one_kernel": round(1000 * t1, 2), "per_row": round(1000 * t2, 2)})


def decode_loops(config_dir: Path, dev: str, small: bool, out: Path) -> None:
    from transformers import DynamicCache, StaticCache

    B, P, n = (8, 5, 8) if small else (1024, 5, 32)
    dtype = torch.float32 if small else torch.bfloat16
    lm = random_model(config_dir, SMALL if small else {}, dtype, dev, arch="gemma2")
    model = lm.model
    cfg = model.config
    g = torch.Generator().manual_seed(0)
    ids0 = torch.randint(3, 1000, (B, P), generator=g).to(dev)
    neg = torch.finfo(dtype).min
    L = P + n

    def dynamic():
        mask = torch.ones((B, P), dtype=torch.long, device=dev)
        cache = DynamicCache(config=cfg)
        res = model(input_ids=ids0, attention_mask=mask, past_key_values=cache, use_cache=True, logits_to_keep=1)
        toks = []
        for step in range(n):
            nxt = res.logits[:, -1].argmax(-1)
            toks.append(nxt)
            if step == n - 1:
                break
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            pos = torch.full((B, 1), P + step, device=dev)
            res = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=pos, past_key_values=cache,
                        use_cache=True, logits_to_keep=1)
        return torch.stack(toks, 1)

    def masks(q: int, upto: int):
        m = torch.full((B, 1, q, L), neg, dtype=dtype, device=dev)
        for i in range(q):
            m[:, :, i, :upto - q + i + 1] = 0
        return {"full_attention": m, "sliding_attention": m}

    def static(graph: bool):
        cache = StaticCache(config=cfg, max_cache_len=L)
        pos0 = torch.arange(P, device=dev)[None].expand(B, P)
        res = model(input_ids=ids0, attention_mask=masks(P, P), position_ids=pos0, past_key_values=cache, use_cache=True,
                    logits_to_keep=1)
        ids = torch.zeros((B, 1), dtype=torch.long, device=dev)
        pos = torch.zeros((B, 1), dtype=torch.long, device=dev)
        m = masks(1, P + 1)
        step_fn = lambda: model(input_ids=ids, attention_mask=m, position_ids=pos, past_key_values=cache, use_cache=True,
                                logits_to_keep=1).logits
        toks = []
        logits = res.logits
        graph_obj = None
        for step in range(n):
            nxt = logits[:, -1].argmax(-1)
            toks.append(nxt)
            if step == n - 1:
                break
            ids.copy_(nxt[:, None])
            pos.fill_(P + step)
            m["full_attention"][..., P + step] = 0
            if not graph:
                logits = step_fn()
            else:
                if graph_obj is None:
                    # capture replays this very step: the cache's writes happen inside the captured region
                    s = torch.cuda.Stream()
                    s.wait_stream(torch.cuda.current_stream())
                    graph_obj = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph_obj):
                        static_logits = step_fn()
                    torch.cuda.current_stream().wait_stream(s)
                graph_obj.replay()
                logits = static_logits
        return torch.stack(toks, 1)

    variants = {"dynamic": dynamic, "static": lambda: static(False)}
    if dev.startswith("cuda"):
        variants["static+graph"] = lambda: static(True)
    toks = {}
    for name, fn in variants.items():
        try:
            with torch.no_grad():
                fn()  # warm-up
                sync(dev)
                t = time.perf_counter()
                toks[name] = fn()
                sync(dev)
                dt = time.perf_counter() - t
            rec(f"hf_loop.{name}.{B}x{n}", {"ms_per_step": round(1000 * dt / n, 2), "tok_s": round(B * n / dt)})
        except Exception:  # noqa: BLE001
            rec(f"hf_loop.{name}.error", traceback.format_exc()[-1500:])
    for name in toks:
        rec(f"hf_loop.{name}.rows_equal_to_dynamic", f"{int((toks[name] == toks['dynamic']).all(1).sum())}/{B}")
    try:
        from saejobs.engine.request import Settings, plan_configs
        from saejobs.engine.sweep import SweepGenerator
        from torch.profiler import ProfilerActivity, profile

        layer = 1 if small else 20
        _, sae = random_sae(lm, layer, 256 if small else 16384, dev)
        settings = Settings(n_tokens=4)
        configs = [c for c in plan_configs(list(range(B // 4)), [], [10.0, 50.0, 100.0, 200.0], [PROMPTS[0]], [42], False,
                                           settings, "bench") if c.type == "STEERED"][:B]
        runner = SweepGenerator(lm, sae, f"blocks.{layer}.hook_resid_post", settings)
        runner.run(configs)
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.startswith("cuda") else [])
        with profile(activities=acts, record_shapes=True, with_stack=True) as prof:
            runner.run(configs)
            sync(dev)
        trace = out / "trace.json"
        prof.export_chrome_trace(str(trace))
        with open(trace, "rb") as f, gzip.open(out / "trace.json.gz", "wb") as z:
            z.write(f.read())
        trace.unlink()
        rec("trace", "trace.json.gz written (saejobs greedy, 4 tokens)")
    except Exception:  # noqa: BLE001
        rec("trace.error", traceback.format_exc()[-1500:])


def reductions(dev: str, small: bool) -> None:
    """Which of sampling's reductions round batched as one row alone does at (1,024, 262,144) (engine.generate's
    own once-per-shape check), each row-by-row loop eager against one graph replay, and a whole sampling step
    per mode on bf16 logits (steady state: the loops replayed)."""
    from saejobs.engine import generate as gen
    from saejobs.engine.row_graph import RowGraph, outputs_equal
    from saejobs.engine.sampling import Sampling

    B, V = (64, 4099) if small else (1024, 262144)
    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        tag = str(dtype)[6:]
        x = ((torch.randn((B, V), generator=g) * 4).round(decimals=1)).to(dev)
        probs = torch.softmax(x.to(dtype), dim=-1)
        inputs = {gen.Reduction.LOGSUMEXP: (x / 0.7).float(), gen.Reduction.SORT: probs,
                  gen.Reduction.CUMSUM: probs.sort(-1, descending=True).values, gen.Reduction.SUM: probs}
        for op, arg in inputs.items():
            rec(f"reduce.{tag}.{op.value}.batched_equals_rows", gen._batch_rounds_as_rows(op, arg))
            loop = RowGraph(f"probe {op.value} {tag}", lambda t, _op=op: gen.row_by_row(_op, t))
            sync(dev)
            t = time.perf_counter()
            eager = loop(arg)
            sync(dev)
            t_first = time.perf_counter() - t
            eager = tuple(e.clone() for e in eager) if isinstance(eager, tuple) else eager.clone()
            t = time.perf_counter()
            for _ in range(3):
                out = loop(arg)
            sync(dev)
            same = outputs_equal(out, eager)
            rec(f"reduce.{tag}.{op.value}.rows_ms", f"eager+capture {t_first * 1e3:.1f}, replay "
                f"{(time.perf_counter() - t) / 3 * 1e3:.1f}, graph {loop._graph is not None}, replay equals eager {same}")
    logits = (torch.randn((B, V), generator=g) * 3).to(device=dev, dtype=torch.bfloat16)
    ones = torch.ones((B, 1), dtype=torch.long, device=dev)
    modes = {"greedy": Sampling(temperature=0), "interp-engine T0.7": Sampling(temperature=0.7, sampling_semantics="interp-engine"),
             "interp-engine T0.7 top-p 0.9": Sampling(temperature=0.7, sampling_semantics="interp-engine", top_p=0.9),
             "transformerlens T0.7": Sampling(temperature=0.7)}
    for name, s in modes.items():
        sampler = gen.TokenSampler([gen.Row([1], i) for i in range(B)], s, V, torch.device(dev), ones, ones)
        for _ in range(2):
            sampler(logits)
        sync(dev)
        t = time.perf_counter()
        for _ in range(5):
            sampler(logits)
        sync(dev)
        rec(f"sampler.{name}.ms_per_step", round((time.perf_counter() - t) / 5 * 1e3, 2))


def scans(dev: str, small: bool) -> None:
    """Two questions left by session 15's reductions probe (top-p's cumsum loop could not be replayed; the
    replayed loops run one row after another). 1. Is one row's eager ``torch.cumsum`` the same from run to run
    on this device (if not, interp-engine's own top-p is not reproducible where a running total meets
    ``top_p``, and a batched cumsum is as faithful as the row loop), and how many rows' nucleus masks (top-p 0.9)
    does the batched cumsum change? 2. Does a row loop captured across several streams (rows round-robin, joined
    at the end) replay bit for bit, and how much faster than on one stream? Not yet run on a GPU; from session
    15's loop timings, a few seconds of device work at full size (bench/gpu_host.sh allows it 30 s)."""
    from saejobs.engine import generate as gen
    from saejobs.engine.row_graph import outputs_equal

    B, V = (64, 4099) if small else (1024, 262144)
    g = torch.Generator().manual_seed(1)
    logits = (torch.randn((B, V), generator=g) * 3).to(dev)
    probs = torch.softmax(logits / 0.7, dim=-1).sort(-1, descending=True).values
    first = torch.cumsum(probs[0], dim=-1)
    same = sum(bool(torch.equal(torch.cumsum(probs[0], dim=-1), first)) for _ in range(50))
    rec("scans.cumsum.one_row_run_to_run_equal", f"{same}/50")
    rows = gen.row_by_row(gen.Reduction.CUMSUM, probs)
    rec("scans.cumsum.row_loop_twice_equal", outputs_equal(rows, gen.row_by_row(gen.Reduction.CUMSUM, probs)))
    both = gen.batched(gen.Reduction.CUMSUM, probs)
    differ = (both != rows).any(-1)
    masks = ((both - probs) > 0.9) != ((rows - probs) > 0.9)
    rec("scans.cumsum.batched_vs_rows", f"rows with any value differing {int(differ.sum())}/{B}, max |diff| "
        f"{float((both - rows).abs().max()):.3g}, rows whose top-p 0.9 nucleus differs {int(masks.any(-1).sum())}")
    if not dev.startswith("cuda"):
        rec("scans.streams", "cuda only")
        return
    for op, arg in ((gen.Reduction.LOGSUMEXP, logits / 0.7), (gen.Reduction.SUM, probs)):
        eager = gen.row_by_row(op, arg)
        for n in (1, 4, 16):
            try:
                graph, out = _capture_on_streams(lambda b, _op=op, _x=arg: gen._FORMS[_op][1](_x, b), B, n)
                graph.replay()
                sync(dev)
                ok = outputs_equal(out, eager)
                t = time.perf_counter()
                for _ in range(5):
                    graph.replay()
                sync(dev)
                rec(f"scans.streams.{op.value}.{n}", f"replay {(time.perf_counter() - t) / 5 * 1e3:.2f} ms, equals eager {ok}")
            except Exception as e:  # noqa: BLE001
                rec(f"scans.streams.{op.value}.{n}", f"capture failed: {type(e).__name__}: {str(e)[:300]}")


def _capture_on_streams(row_fn, B: int, n: int):
    """A CUDA graph of ``row_fn(b)`` for every row, rows spread round-robin over ``n`` side streams forked from
    the capturing stream and joined back to it; (graph, the stacked rows its replays write)."""
    graph = torch.cuda.CUDAGraph()
    side = [torch.cuda.Stream() for _ in range(n)]
    with torch.cuda.graph(graph):
        main = torch.cuda.current_stream()
        for s in side:
            s.wait_stream(main)
        parts = [None] * B
        for b in range(B):
            with torch.cuda.stream(side[b % n]):
                parts[b] = row_fn(b)
        for s in side:
            main.wait_stream(s)
        out = torch.cat(parts) if parts[0].dim() == 2 else torch.stack(parts)
    return graph, out


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cuda")
    p.add_argument("--small", action="store_true")
    p.add_argument("--config-dir", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--parts", default="philox,loops,reductions,scans")
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    for part, fn in (("philox", lambda: philox_part(a.device)), ("loops", lambda: decode_loops(a.config_dir, a.device, a.small, a.out)),
                     ("reductions", lambda: reductions(a.device, a.small)), ("scans", lambda: scans(a.device, a.small))):
        if part in a.parts:
            try:
                fn()
            except Exception:  # noqa: BLE001
                rec(f"{part}.error", traceback.format_exc()[-2000:])
            (a.out / "probe.json").write_text(json.dumps(R, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
