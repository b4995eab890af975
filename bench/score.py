"""What scoring adds to a sweep: the same chunk generated (an unscored sweep's work) and generated then
scored (a scored sweep's work, as ``tasks/sweep.py`` runs it), side by side in one run.

    python bench/score.py [--device cpu|cuda] [--n-tokens 32] [--repeats 2]

Gemma 3 270M fp32 with the demo SAE; 4 features × 4 strengths × 2 prompts + 2 DEFAULT rows (34
configurations, one chunk) × 32 greedy tokens. Correctness, checked before a figure is printed (exit
1 otherwise): the batched scores equal each row scored alone, and a row's NLL equals a plain unpadded
forward pass's ``log_softmax`` of its completion.
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
    a = ap.parse_args()

    import torch

    from saejobs.engine import demo, score
    from saejobs.engine.models import load_model
    from saejobs.engine.request import Settings, plan_configs
    from saejobs.engine.sae import load_sae
    from saejobs.engine.sweep import SweepGenerator

    lm = load_model("gemma-3-270m-gguf", torch.float32, a.device)
    sae = load_sae(demo.ENTRY, demo.build(lm, Path(tempfile.mkdtemp())), device=a.device)
    settings = Settings(n_tokens=a.n_tokens)
    features = [0, 1, 2, 3]
    configs = plan_configs(features, [], [50, 100, 200, 300], ["Once upon a time", "The weather today is"], [42], False,
                   settings, "bench")
    runner = SweepGenerator(lm, sae, demo.ENTRY.hook_name, settings)
    score.score_outputs(runner, runner.run(configs[:2]), features)  # warm-up (allocator, kernels)

    gen_s, score_s = [], []
    for _ in range(a.repeats):  # alternate the sides so a noisy neighbour hits both
        t0 = time.perf_counter()
        outs = runner.run(configs)
        gen_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        scores = score.score_outputs(runner, outs, features)
        score_s.append(time.perf_counter() - t0)

    ok = True
    picks = [0, 1, len(outs) // 2, len(outs) - 1]
    for i in picks:
        alone = score.score_outputs(runner, [outs[i]], features)[0]
        c, g, _ = outs[i]
        ref = reference_nll(lm, runner.ids(c), g.token_ids)
        same = (math.isclose(alone["nll"], scores[i]["nll"], abs_tol=1e-4)
                and math.isclose(ref, scores[i]["nll"], abs_tol=1e-3)
                and all(math.isclose(alone["concept"][k]["mean"], v["mean"], abs_tol=1e-2)
                        for k, v in scores[i]["concept"].items()))
        ok &= same
        if not same:
            print(f"row {i}: batched {scores[i]['nll']:.5f}, alone {alone['nll']:.5f}, reference {ref:.5f}")
    g, s = min(gen_s), min(score_s)
    print(f"{len(configs)} configs × {a.n_tokens} tokens on {a.device} (best of {a.repeats}): unscored sweep "
          f"{g:.2f} s, scored {g + s:.2f} s (scoring {s:.2f} s) -> scoring adds {100 * s / g:.0f}% "
          f"(goal <= 30% on a CPU); scores batched = alone = reference NLL: {ok}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
