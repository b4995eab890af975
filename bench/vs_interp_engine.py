"""saejobs' batched sweep vs interp-engine (Neuronpedia's engine) one request at a time, in one run.

    python bench/vs_interp_engine.py [--device cpu|cuda] [--n-tokens 32] [--fast]

The same 16 configurations (the demo SAE's features 0-3 × strengths 25, 50, 100, 200 on "Once upon
a time", greedy, seed 42) on one loaded Gemma 3 270M: saejobs runs them as one batched generation
with a different steering vector per row; interp-engine runs each as Neuronpedia's server does
(``steer`` + ``generate_stream``, batch of one, KV cache). Both are warmed up first. Prints both
times, the ratio (goal ≥ 5× on the 2-core CPU machine) and whether every token id agrees; then, at
``--sampled`` temperature, both timed again (saejobs' rows share seed 42, so they share one draw per step),
and how many configurations each of saejobs' sampling semantics reproduces.
Exits 1 unless greedy and ``--sampling interp-engine`` agree in every configuration.

``--fast``: the same run, checks included, on 4 configurations (features 0-1 × strengths 50, 200) ×
4 tokens of the demo SAE's layout holding random weights (``bench._common.build_demo``), so that a test
(tests/test_benches.py) runs it in seconds beyond the model load.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench._common import build_demo  # noqa: E402
os.environ.setdefault("SAEJOBS_MODEL_CACHE", str(Path.home() / ".cache" / "saejobs" / "models"))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cpu")
    p.add_argument("--n-tokens", type=int, default=32)
    p.add_argument("--sampled", type=float, default=0.7, help="also compare sampling at this temperature (0: skip)")
    p.add_argument("--fast", action="store_true", help="4 configurations × 4 tokens: the script and its checks, fast")
    a = p.parse_args()
    if a.fast:
        a.n_tokens = 4
    features, strengths = ([0, 1], [50, 200]) if a.fast else ([0, 1, 2, 3], [25, 50, 100, 200])
    import torch
    from interp_engine.model import EagerModel
    from interp_engine.steer import SteerSpec, generate_stream, steer
    from interp_engine.steer_specs import SteerMethod

    from saejobs.engine import demo
    from saejobs.engine.models import load_model
    from saejobs.engine.sae import load_sae
    from saejobs.engine.request import Settings, plan_configs
    from saejobs.engine.sweep import SweepGenerator

    lm = load_model("gemma-3-270m-gguf", torch.float32, a.device)
    sae = load_sae(demo.ENTRY, build_demo(lm, Path(tempfile.mkdtemp()), a.fast), device=a.device)
    settings = Settings(n_tokens=a.n_tokens)
    configs = [c for c in plan_configs(features, [], strengths, ["Once upon a time"], [42], False, settings, "bench")
               if c.type == "STEERED"]
    runner = SweepGenerator(lm, sae, demo.ENTRY.hook_name, settings)
    oracle = EagerModel(lm.model.config._name_or_path, hf_model=lm.model, tokenizer=lm.tokenizer)

    def interp_engine(cfg, temperature: float = 0.0) -> list[int]:
        ids = torch.tensor([runner.prompt_ids(cfg.prompt)], device=lm.model.device)
        specs = [SteerSpec(sae.W_dec[f["index"]].clone(), demo.LAYER, f["strength"], SteerMethod.ADDITIVE)
                 for f in cfg.features]
        with steer(oracle, specs, prompt_token_ids=ids[0]):
            return [s.token_id for s in generate_stream(oracle, ids, max_tokens=a.n_tokens, temperature=temperature,
                                                        top_k=0, top_p=1.0, presence_penalty=0.0, seed=cfg.seed)]

    runner.run(configs[:2])  # warm-ups: allocator, kernels
    interp_engine(configs[0])
    t0 = time.perf_counter()
    ours = [g.token_ids for _, g, _ in runner.run(configs)]
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    theirs = [interp_engine(c) for c in configs]
    t_theirs = time.perf_counter() - t0
    agree = sum(o == t for o, t in zip(ours, theirs))
    print(f"{len(configs)} configurations × {a.n_tokens} greedy tokens, Gemma 3 270M fp32 on {a.device}"
          f" ({torch.get_num_threads()} CPU threads)")
    print(f"saejobs batched sweep: {t_ours:6.2f} s")
    print(f"interp-engine, one request at a time: {t_theirs:6.2f} s")
    print(f"ratio: {t_theirs / t_ours:.1f}x (goal >= 5x); token ids identical in {agree}/{len(configs)} configurations")
    failed = agree != len(configs)
    if a.sampled:
        t0 = time.perf_counter()
        theirs = [interp_engine(c, a.sampled) for c in configs]
        t_theirs = time.perf_counter() - t0
        for semantics in ("interp-engine", "transformerlens"):
            r = SweepGenerator(lm, sae, demo.ENTRY.hook_name, Settings(n_tokens=a.n_tokens, temperature=a.sampled,
                                                              sampling_semantics=semantics))
            t0 = time.perf_counter()
            out = r.run(configs)
            t_ours = time.perf_counter() - t0
            same = sum(g.token_ids == t for (_, g, _), t in zip(out, theirs))
            print(f"temperature {a.sampled}, seed 42, saejobs --sampling {semantics}: {t_ours:6.2f} s, "
                  f"{t_theirs / t_ours:.1f}x interp-engine's {t_theirs:.2f} s; "
                  f"identical to interp-engine in {same}/{len(configs)} configurations")
            failed |= semantics == "interp-engine" and same != len(configs)  # the other semantics is another reference
    if failed:
        print("an identity check failed", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
