"""JumpReLU encode + decode throughput at Gemma 2 2B's 16k shape: saejobs vs SAELens' plain formula.

    python bench/encode.py [--tokens 2048] [--l0 70] [--rounds 5] [--fast]

Random weights at 2304 × 16384 (float32, CPU), thresholds set so a token fires about ``--l0``
features as the canonical Gemma Scope SAEs do. The reference is the formula SAELens'
``JumpReLUSAE`` computes (``pre = x @ W_enc + b_enc; acts = relu(pre) * (pre > threshold);
recon = acts @ W_dec + b_dec``); saejobs' ``engine.sae.JumpReLUSAE`` adds the bias and masks in
place, and decodes a sparse batch by summing only its active decoder rows. Both run in the same
process, interleaved, best of ``--rounds``; the activations must agree exactly, the reconstructions
of every token to float rounding (the sparse decode sums in another order: within ``RECON_TOL`` of
the reconstruction's scale). Exits 1 otherwise. ``--fast``: 256 × 4096, 128 tokens, one round (both
decodes still run: L0 70 is under ``SPARSE_BELOW``, 1000 over), so that a test (tests/test_benches.py)
runs the whole script in a second or two; its figures say nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from saejobs.engine.sae import JumpReLUSAE  # noqa: E402

RECON_TOL = 1e-5  # max |difference| / max |reconstruction|: float32 summation order, nothing more


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--d-model", type=int, default=2304)
    p.add_argument("--d-sae", type=int, default=16384)
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--l0", type=float, nargs="+", default=[70.0, 1000.0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--fast", action="store_true", help="256 × 4096, 128 tokens, one round: the script and its checks")
    a = p.parse_args()
    if a.fast:
        a.d_model, a.d_sae, a.tokens, a.rounds = 256, 4096, 128, 1
    g = torch.Generator().manual_seed(0)
    d, m = a.d_model, a.d_sae
    params = {"W_enc": torch.randn(d, m, generator=g) / d ** 0.5, "W_dec": torch.randn(m, d, generator=g) / m ** 0.5,
              "b_enc": torch.randn(m, generator=g) * 0.01, "b_dec": torch.randn(d, generator=g) * 0.01}
    x = torch.randn(a.tokens, d, generator=g)
    pre = x[:256] @ params["W_enc"] + params["b_enc"]
    print(f"JumpReLU encode+decode, {d}×{m} float32, {a.tokens} tokens, CPU threads {torch.get_num_threads()}, "
          f"best of {a.rounds}")
    failed = False
    for l0 in a.l0:
        params["threshold"] = torch.quantile(pre.flatten()[::7], 1 - l0 / m).expand(m).contiguous()
        sae = JumpReLUSAE(params, None)

        @torch.no_grad()
        def reference():
            pre = x @ params["W_enc"] + params["b_enc"]
            acts = torch.relu(pre) * (pre > params["threshold"])
            return acts @ params["W_dec"] + params["b_dec"]

        @torch.no_grad()
        def ours():
            return sae.decode(sae.encode(x))

        ref_s, our_s = [], []
        for _ in range(a.rounds + 1):  # the first round warms both up and is dropped
            for fn, times in ((reference, ref_s), (ours, our_s)):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
        ref_s, our_s = ref_s[1:], our_s[1:]
        with torch.no_grad():
            ref_pre = x @ params["W_enc"] + params["b_enc"]
            ref_acts = torch.relu(ref_pre) * (ref_pre > params["threshold"])
            acts = sae.encode(x)
            flipped = (ref_acts > 0) != (acts > 0)
            ref_recon, recon = reference(), ours()
            err = float((ref_recon - recon).abs().max())  # over every token
            rel = err / float(ref_recon.abs().max())
        measured = float((acts > 0).sum(1).float().mean())
        print(f"L0 {measured:7.1f}: SAELens formula {min(ref_s) * 1e3:7.1f} ms ({a.tokens / min(ref_s):8.0f} tok/s)  "
              f"saejobs {min(our_s) * 1e3:7.1f} ms ({a.tokens / min(our_s):8.0f} tok/s)  "
              f"ratio {min(ref_s) / min(our_s):.2f}×")
        equal = torch.equal(acts, ref_acts)
        print(f"  activations equal: {equal} ({int(flipped.sum())} on the other side of the threshold); "
              f"max |reconstruction difference| over all {a.tokens} tokens {err:.1e} ({rel:.1e} of its scale, "
              f"tolerance {RECON_TOL:.0e})")
        failed |= not equal or rel > RECON_TOL
    if failed:
        print("an identity check failed", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
