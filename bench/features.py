"""What ``saejobs features top`` costs beside the model's own forward pass over the same text.

    python bench/features.py [--tokens 2048] [--d-sae 16384] [--rounds 2] [--fast]

Gemma 3 270M fp32 on this CPU, a 16k-wide JumpReLU SAE at layer 6 (random weights, thresholds set so a
token fires about 70 features, as Gemma Scope's do), 2,048 tokens of the bundled Alice text. Side by side
in one process, interleaved, best of ``--rounds`` after a warm-up: the plain forward pass (transformers,
``logits_to_keep=1``: the cheapest complete pass) and ``engine.features.top_by_token`` with k 10 (the
pass up to the hook, the encode, top-k per token and the text's union). Goal (issue 29): at most 2×
the forward pass. Correctness, checked before a figure is printed (exit 1 otherwise): every token's
features and activations equal a plain reference's (a forward hook on the transformers layer,
``relu(pre) * (pre > threshold)`` with ``pre = x @ W_enc + b_enc``, ``torch.topk``).
``--fast``: the tiny random Gemma 2, 96 tokens, a 512-wide SAE, one round (tests/test_benches.py).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("SAEJOBS_MODEL_CACHE", str(Path.home() / ".cache" / "saejobs" / "models"))

LAYER = 6
K = 10
GOAL = 2.0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--d-sae", type=int, default=16384)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--fast", action="store_true", help="tiny Gemma 2, 96 tokens, 512 features, one round")
    a = ap.parse_args()

    import torch

    from saejobs.engine import features
    from saejobs.engine.sae import JumpReLUSAE

    if a.fast:
        from saejobs.engine.models import tiny_gemma2

        lm, layer, a.tokens, a.d_sae, a.rounds = tiny_gemma2(seed=0), 2, 96, 512, 1
    else:
        from saejobs.engine.models import load_model

        lm, layer = load_model("gemma-3-270m-gguf", torch.float32, "cpu"), LAYER
    text = (ROOT / "engine" / "data" / "alice-chapter-1.txt").read_text(encoding="utf-8")
    ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"][:a.tokens - 1]
    ids = [lm.tokenizer.bos_token_id] + ids
    hook_name = f"blocks.{layer}.hook_resid_post"

    seen = []
    handle = lm.model.model.layers[layer].register_forward_hook(
        lambda m, args, out: seen.append(out[0] if isinstance(out, tuple) else out))
    with torch.no_grad():
        lm.model(input_ids=torch.tensor([ids]), logits_to_keep=1)
    handle.remove()
    x = seen[0][0]
    d = x.shape[-1]
    g = torch.Generator().manual_seed(0)
    params = {"W_enc": torch.randn(d, a.d_sae, generator=g) / d ** 0.5, "W_dec": torch.randn(a.d_sae, d, generator=g),
              "b_enc": torch.randn(a.d_sae, generator=g) * 0.01, "b_dec": torch.zeros(d)}
    params["W_enc"] /= x.norm(dim=-1).median()
    pre = x[1:] @ params["W_enc"] + params["b_enc"]  # thresholds: about 70 of the features fire at a token
    params["threshold"] = torch.quantile(pre.flatten()[::97], 1 - 70 / a.d_sae).expand(a.d_sae).contiguous()
    sae = JumpReLUSAE(params, None)

    def forward():
        with torch.no_grad():
            lm.model(input_ids=torch.tensor([ids]), logits_to_keep=1, use_cache=False)

    def top():
        return features.top_by_token(lm, sae, hook_name, ids, K)

    print(f"features top: {lm.model_id}, {len(ids)} tokens, SAE {d}×{a.d_sae} at layer {layer}, k {K}, "
          f"CPU threads {torch.get_num_threads()}, best of {a.rounds}")
    fwd_s, top_s = [], []
    got = None
    for _ in range(a.rounds + 1):  # the first round warms both up and is dropped
        t0 = time.perf_counter()
        forward()
        fwd_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        got = top()
        top_s.append(time.perf_counter() - t0)

    with torch.no_grad():  # the plain reference
        ref_pre = x @ params["W_enc"] + params["b_enc"]
        acts = torch.relu(ref_pre) * (ref_pre > params["threshold"])
        vals, idx = torch.topk(acts, K, dim=-1)
    bad = 0
    for t in got["per_token"]:
        p = t["position"]
        want = [(int(i), float(v)) for i, v in zip(idx[p], vals[p]) if v > 0]
        if [(f["index"], f["activation"]) for f in t["features"]] != want:
            bad += 1
    l0 = float((acts[1:] > 0).sum(-1).float().mean())
    ok = bad == 0 and len(got["per_token"]) == len(ids) - 1
    print(f"  check: {len(got['per_token'])} tokens' top-{K} equal the plain reference's: "
          f"{'yes' if ok else f'NO ({bad} differ)'} (mean L0 {l0:.0f})")
    if not ok:
        return 1
    f, t = min(fwd_s[1:]), min(top_s[1:])
    print(f"  forward pass {f:.2f} s   features top {t:.2f} s   ratio {t / f:.2f}× "
          f"(goal ≤ {GOAL:g}×: {'met' if t / f <= GOAL else 'MISSED'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
