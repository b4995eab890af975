"""Sampling's reductions batched where they round as one row alone does (issue 27 item 1, on the CPU): the tokens
equal a row-by-row reference written here with plain torch (each row alone: TransformerLens' ``logsumexp`` on
``[1, V]``; interp-engine's sort, cumsum and sum on ``[V]``; ``torch.multinomial`` from the row's generator), and
the operators a step runs grow by the draw alone per row where the batched path holds, in every sampling mode."""

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


def ops_per_step(s: Sampling, b: int, seen: int = 2) -> int:
    """Operators one sampling step dispatches for ``b`` rows, after ``seen`` steps (penalties hold tokens)."""
    sampler = TokenSampler([Row([1], i) for i in range(b)], s, V, torch.device("cpu"),
                           torch.ones((b, 1), dtype=torch.long), torch.ones((b, 1), dtype=torch.long))
    x = logits(b)
    for _ in range(seen):  # the once-per-shape checks run here, outside the count
        sampler.update_penalties(sampler(x))
    with Ops() as mode:
        sampler(x)
    return mode.n


EVERY_MODE = {  # issue 27's list: greedy; interp-engine T, top-k, top-p, presence; TransformerLens T, freq
    "greedy": Sampling(),
    "interp-engine greedy, presence 0.5": Sampling(sampling_semantics="interp-engine", presence_penalty=0.5),
    "interp-engine T0.7": Sampling(temperature=0.7, sampling_semantics="interp-engine"),
    "interp-engine T0.7 top-k 50": Sampling(temperature=0.7, sampling_semantics="interp-engine", top_k=50),
    "interp-engine T0.7 top-p 0.9": Sampling(temperature=0.7, sampling_semantics="interp-engine", top_p=0.9),
    "interp-engine T0.7 presence 0.5": Sampling(temperature=0.7, sampling_semantics="interp-engine",
                                                presence_penalty=0.5),
    "transformerlens T0.7": Sampling(temperature=0.7),
    "transformerlens T0.7 freq 0.5": Sampling(temperature=0.7, freq_penalty=0.5),
}


def draw_ops_per_row() -> int:
    """What one more row adds to the CPU's draw: its row of the noise, each from its own mt19937 generator."""
    def count(b: int) -> int:
        streams = gen.RowStreams(list(range(b)), torch.device("cpu"))
        probs = torch.softmax(logits(b), dim=-1)
        streams.exponential(probs, False)  # the generators are made at the first draw, once per chunk
        with Ops() as mode:
            streams.exponential(probs, False)
        return mode.n
    return count(2) - count(1)


@pytest.mark.parametrize("mode", EVERY_MODE)
def test_a_step_runs_as_many_operators_for_256_rows_as_for_1(mode, monkeypatch):
    """With every row's noise drawn at once (CUDA's ``engine.philox``), a step of any mode runs the same
    operators for 1 row and for 256. On this CPU the draw itself cannot be batched: PyTorch's CPU generator is
    mt19937 and ``exponential_`` takes 2 × V consecutive words of a row's own stream, so the real CPU step adds
    exactly that draw per row (2 operators: the row's view and its ``exponential_``), and nothing else."""
    s = EVERY_MODE[mode]
    for op in gen.Reduction:  # this CPU rounds every reduction batched as it does one row alone
        assert gen._batch_rounds_as_rows(op, torch.empty((256, V))), op
    real = ops_per_step(s, 256) - ops_per_step(s, 1)
    assert real == (255 * draw_ops_per_row() if s.temperature > 0 else 0), (mode, real)
    # every row's noise in one operator, as engine.philox's one kernel draws it on CUDA (once checked, the draw as
    # argmax(p / noise) stays: the real counts above checked it with the real noise)
    assert gen._exponential_trick_holds(torch.device("cpu"), torch.float32)
    monkeypatch.setattr(gen.RowStreams, "exponential", lambda self, probs, as_2d: torch.empty_like(probs).exponential_(1))
    one, many = ops_per_step(s, 1), ops_per_step(s, 256)
    assert one == many, (mode, one, many)


def test_top_p_row_by_row_costs_operators_per_row(monkeypatch):
    """The count can tell: with its reductions forced row by row, top-p costs more operators per row (7 more with
    torch 2.13 on this CPU: each row's sort, cumsum and sum, and the views they take)."""
    s = EVERY_MODE["interp-engine T0.7 top-p 0.9"]
    batched = ops_per_step(s, 64) - ops_per_step(s, 1)
    monkeypatch.setattr(gen, "_batch_rounds_as_rows", lambda op, like: False)
    rows = ops_per_step(s, 64) - ops_per_step(s, 1)
    assert rows - batched >= 63 * 5, (rows, batched)
