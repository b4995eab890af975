"""The fused JumpReLU encode and the sparse decode equal SAELens' plain formula, on both decode paths."""

from __future__ import annotations

import pytest
import torch

from saejobs.engine import sae as sae_module
from saejobs.engine.sae import JumpReLUSAE


def reference(p: dict, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    pre = x @ p["W_enc"] + p["b_enc"]
    acts = torch.relu(pre) * (pre > p["threshold"])
    return acts, acts @ p["W_dec"] + p["b_dec"]


@pytest.mark.parametrize("active", [0.002, 0.3])  # the sparse (gathered rows) and the dense decode path
def test_fused_encode_and_decode_equal_the_formula(active, monkeypatch):
    g = torch.Generator().manual_seed(0)
    d, m = 48, 1024
    p = {"W_enc": torch.randn(d, m, generator=g), "W_dec": torch.randn(m, d, generator=g),
         "b_enc": torch.randn(m, generator=g), "b_dec": torch.randn(d, generator=g)}
    x = torch.randn(3, 7, d, generator=g)
    pre = x @ p["W_enc"] + p["b_enc"]
    p["threshold"] = torch.quantile(pre.flatten(), 1 - active).expand(m).clone()
    p["threshold"][:10] = -1.0  # negative thresholds: relu still decides
    x[0, 0] = 0.0
    path = []
    real = torch.nn.functional.embedding_bag
    monkeypatch.setattr(torch.nn.functional, "embedding_bag", lambda *a, **k: path.append("sparse") or real(*a, **k))
    sae = JumpReLUSAE(p, None)
    acts, recon = reference(p, x)
    got = sae.encode(x)
    assert got.shape == (3, 7, m) and torch.equal(got, acts)  # bit-exact, not merely close
    torch.testing.assert_close(sae.decode(got), recon, rtol=1e-5, atol=1e-4)
    assert path == (["sparse"] if active * m < sae_module.SPARSE_BELOW * m else [])
    empty = torch.zeros(2, m)
    torch.testing.assert_close(sae.decode(empty), p["b_dec"].expand(2, d))
