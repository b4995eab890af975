"""What scoring adds to a sweep: the same chunk generated (an unscored sweep's work) and generated then
scored (a scored sweep's work, as ``tasks/sweep.py`` runs it: generation records the unsteered stream below
its lowest hook and scoring runs only the layers from there up), side by side in one run, with scoring by one
whole unsteered pass (the backfill's) beside them.

    python bench/score.py [--device cpu|cuda] [--n-tokens 32] [--repeats 2] [--fast]

Gemma 3 270M fp32 with the demo SAE, 32 greedy tokens, each grid one chunk: 1. 4 features × strengths 50, 100,
200, 300 × 2 prompts + 2 DEFAULT rows (34 configurations, every completion distinct); 2. the README's strengths
0:200:50 (42 configurations): a zero-strength row writes its DEFAULT's completion, and rows with one prompt and
completion share one scoring pass; 3. chat-length prompts (~320 tokens: a template's turns), 2 features × strengths
100, 300 × 2 prompts + 2 DEFAULT rows (10 configurations): scoring runs each prompt's columns once and every row's
completion on them. Correctness, for each, checked before a figure is printed (exit
1 otherwise): recording changes no token, the batched scores equal each row scored alone and the whole
pass's, and a row's NLL equals a plain unpadded forward pass's ``log_softmax`` of its completion.

Each grid also prints its arithmetic: the matrix products' floating-point operations of one generation and of
its scoring, counted by torch's ``FlopCounterMode`` (a run apart from the timed ones), and the rate each side ran
at. Scoring's share of the time is its share of the arithmetic times how much faster a machine runs scoring's
products (hundreds of positions at once) than generation's (a row per step each): a figure to compare across
machines, where the percentage alone moves with the machine.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("SAEJOBS_MODEL_CACHE", str(Path.home() / ".cache" / "saejobs" / "models"))
from bench._common import build_demo, matrix_flops  # noqa: E402


CHAT_PREFIX = "Here is a long story about the sea and the ships that sail on it. "  # 15 tokens
CHAT_REPEATS = 20  # ~300 prompt tokens: a chat template's turns and system prompt


def reference_nll(lm, prompt_ids: list[int], token_ids: list[int]) -> float:
    import torch

    ids = torch.tensor([prompt_ids + token_ids], device=lm.device)
    with torch.no_grad():
        logp = torch.log_softmax(lm.model(input_ids=ids).logits[0].float(), dim=-1)
    n = len(prompt_ids)
    return -sum(float(logp[n - 1 + i, t]) for i, t in enumerate(token_ids)) / len(token_ids)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--n-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--fast", action="store_true", help="2 features × 2 strengths × 1 prompt (part 3's ~20 tokens), 4 tokens, "
                    "once, the demo SAE's layout with random weights (a test)")
    a = ap.parse_args()
    if a.fast:
        a.n_tokens, a.repeats = 4, 1

    import torch

    from saejobs.engine import demo, score
    from saejobs.engine.models import load_model
    from saejobs.engine.request import Settings, plan_configs
    from saejobs.engine.sae import load_sae
    from saejobs.engine.sweep import SweepGenerator

    lm = load_model("gemma-3-270m-gguf", torch.float32, a.device)
    sae = load_sae(demo.ENTRY, build_demo(lm, Path(tempfile.mkdtemp()), a.fast), device=a.device)
    settings = Settings(n_tokens=a.n_tokens)
    features = [0, 1] if a.fast else [0, 1, 2, 3]
    prompts = ["Once upon a time", "The weather today is"][:1 if a.fast else 2]
    runner = SweepGenerator(lm, sae, demo.ENTRY.hook_name, settings)
    chat = [CHAT_PREFIX * (1 if a.fast else CHAT_REPEATS) + p for p in prompts]
    grids = {  # the bench's grid (every completion distinct), then the README's 0:200:50 (zero-strength rows repeat DEFAULT)
        "1.": (features, [100, 300] if a.fast else [50, 100, 200, 300], prompts),
        "2. with strength 0 (0:200:50):": (features, [0, 100] if a.fast else [0, 50, 100, 150, 200], prompts),
        "3. chat-length prompts:": (features[:2], [100, 300], chat),  # the prompts' columns are most of each row's
    }
    warm = plan_configs(features, [], grids["1."][1], prompts, [42], False, settings, "bench")[:2]
    score.score_outputs(runner, runner.run(warm, for_scoring=True), features)  # warm-up (allocator, kernels)
    ok = True
    for label, (feats, strengths, texts) in grids.items():
        configs = plan_configs(feats, [], strengths, texts, [42], False, settings, "bench")
        ok &= measure(label, runner, lm, configs, feats, a)
    return 0 if ok else 1


def measure(label: str, runner, lm, configs: list, features: list[int], a) -> bool:
    """Unscored, scored from the recording, and the whole pass, alternated ``a.repeats`` times; then the checks."""
    from saejobs.engine import score

    gen_s, scored_s, full_s = [], [], []
    for _ in range(a.repeats):  # alternate the sides so a noisy neighbour hits all three
        t0 = time.perf_counter()
        plain = runner.run(configs)
        gen_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        outs = runner.run(configs, for_scoring=True)  # as tasks/sweep.py runs a chunk: recording the stream
        scores = score.score_outputs(runner, outs, features)
        scored_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        full = score.score_outputs(runner, plain, features)  # one whole unsteered pass per group (the backfill's)
        full_s.append(time.perf_counter() - t0)
    gen_flops = matrix_flops(lambda: runner.run(configs))
    score_flops = matrix_flops(lambda: score.score_outputs(runner, outs, features))  # the last timed recording
    ok = [g.token_ids for _, g, _ in plain] == [g.token_ids for _, g, _ in outs]
    picks = sorted({0, 1, len(outs) // 2, len(outs) - 1})
    for i in picks:
        alone = score.score_outputs(runner, [outs[i]], features)[0]
        c, g, _ = outs[i]
        ref = reference_nll(lm, runner.ids(c), g.token_ids)
        same = (math.isclose(alone["nll"], scores[i]["nll"], abs_tol=1e-4)
                and math.isclose(ref, scores[i]["nll"], abs_tol=1e-3)
                and math.isclose(full[i]["nll"], scores[i]["nll"], abs_tol=1e-4)
                and alone["concept"].keys() == scores[i]["concept"].keys()
                and all(math.isclose(alone["concept"][k]["mean"], v["mean"], abs_tol=1e-2)
                        and math.isclose(full[i]["concept"][k]["mean"], v["mean"], rel_tol=1e-3, abs_tol=1e-3)
                        for k, v in scores[i]["concept"].items()))
        ok &= same
        if not same:
            print(f"row {i}: batched {scores[i]['nll']:.5f}, alone {alone['nll']:.5f}, whole pass {full[i]['nll']:.5f}, "
                  f"reference {ref:.5f}")
    distinct = len({(tuple(runner.ids(c)), tuple(g.token_ids)) for c, g, _ in outs})
    width = max(len(runner.ids(c)) for c, _, _ in outs)
    g, s, f = min(gen_s), min(scored_s) - min(gen_s), min(full_s)
    print(f"{label} {len(configs)} configs ({distinct} distinct completions, prompts up to {width} tokens) × "
          f"{a.n_tokens} tokens on {a.device} "
          f"(best of {a.repeats}): unscored sweep {g:.2f} s, scored {g + s:.2f} s -> scoring adds {100 * s / g:.0f}% "
          f"(goal <= 30% on a CPU); a whole unsteered pass instead would add {100 * f / g:.0f}% "
          f"({f / max(s, 1e-9):.2f}x the time); scores batched = alone = whole pass = reference NLL: {ok}")
    print(f"   arithmetic (matrix products): generation {gen_flops / 1e9:.1f} GFLOP at {gen_flops / g / 1e9:.0f} GFLOP/s, "
          f"scoring {score_flops / 1e9:.1f} GFLOP, {100 * score_flops / gen_flops:.0f}% of generation's, at "
          f"{score_flops / max(s, 1e-9) / 1e9:.0f} GFLOP/s")
    return ok


if __name__ == "__main__":
    sys.exit(main())
