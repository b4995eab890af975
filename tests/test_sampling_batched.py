"""Sampling's reductions batched where they round as one row alone does (issue 27 item 1, on the CPU): the tokens
equal a row-by-row reference written here with plain torch (each row alone: TransformerLens' ``logsumexp`` on
``[1, V]``; interp-engine's sort, cumsum and sum on ``[V]``; ``torch.multinomial`` from the row's generator), and
the operators a step runs grow by the draw alone per row where the batched path holds."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from saejobs.engine import generate as gen
from saejobs.engine.generate import Row, TokenSampler
from saejobs.engine.sampling import Sampling

V = 3000


def logits(b: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn((b, V), generator=g) * 3).round(decimals=1)  # ties, as top-p meets them


def reference(x: torch.Tensor, s: Sampling, seeds: list[int], generators: list | None = None) -> list[int]:
    """Each row alone; ``generators``: each row's own, carried across calls (else seeded afresh)."""
    out = []
    for b, seed in enumerate(seeds):
        g = generators[b] if generators else torch.Generator().manual_seed(seed)
        row = x[b:b + 1] / s.temperature
        if s.sampling_semantics == "transformerlens":
            row = row.float()
            probs = torch.softmax(row - row.logsumexp(dim=-1, keepdim=True), dim=-1)
            out.append(int(torch.multinomial(probs, 1, True, generator=g)[0, 0]))
            continue
        if s.top_k:
            kth = torch.topk(row, s.top_k, dim=-1).values[..., -1, None]
            row = torch.where(row < kth, torch.full_like(row, float("-inf")), row)
        p = torch.softmax(row, dim=-1)[0]
        sp, si = torch.sort(p, descending=True)
        cum = torch.cumsum(sp, dim=-1)
        sp[cum - sp > s.top_p] = 0.0
        sp = sp / sp.sum()
        out.append(int(si[torch.multinomial(sp, 1, generator=g)[0]]))
    return out


MODES = {"transformerlens T0.7": Sampling(temperature=0.7),
         "interp-engine T0.7 top-p 0.9": Sampling(temperature=0.7, sampling_semantics="interp-engine", top_p=0.9),
         "interp-engine T1.0 top-k 50 top-p 0.5": Sampling(temperature=1.0, sampling_semantics="interp-engine",
                                                           top_k=50, top_p=0.5)}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("batched", [True, False], ids=["batched where it holds", "row by row"])
def test_tokens_equal_each_row_alone(mode, batched, monkeypatch):
    if not batched:
        monkeypatch.setattr(gen, "_batch_rounds_as_rows", lambda op, like: False)
    s = MODES[mode]
    for b in (1, 5, 33):
        seeds = [7 + 3 * i for i in range(b)]
        x = logits(b, seed=b)
        sampler = TokenSampler([Row([1], sd) for sd in seeds], s, V, torch.device("cpu"),
                               torch.ones((b, 1), dtype=torch.long), torch.ones((b, 1), dtype=torch.long))
        assert sampler(x).tolist() == reference(x, s, seeds), (mode, b)


class Ops(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += 1
        return func(*args, **(kwargs or {}))


def ops_per_step(s: Sampling, b: int) -> int:
    sampler = TokenSampler([Row([1], i) for i in range(b)], s, V, torch.device("cpu"),
                           torch.ones((b, 1), dtype=torch.long), torch.ones((b, 1), dtype=torch.long))
    x = logits(b)
    sampler(x)  # the once-per-shape checks run here, outside the count
    with Ops() as mode:
        sampler(x)
    return mode.n


def test_top_p_adds_only_the_draw_per_row():
    """Row by row, top-p costs 11 operators per row per step on this CPU; batched, 2: the row's view and its
    exponential draw."""
    s = MODES["interp-engine T0.7 top-p 0.9"]
    for op in (gen.Reduction.SORT, gen.Reduction.CUMSUM, gen.Reduction.SUM):  # this CPU rounds the batch as the rows
        assert gen._batch_rounds_as_rows(op, torch.empty((64, V))), op
    extra = (ops_per_step(s, 64) - ops_per_step(s, 1)) / 63
    assert extra <= 2, extra
