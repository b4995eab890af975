"""Sampling's reductions batched where they round as one row alone does (issue 27 item 1, on the CPU): the tokens
equal a row-by-row reference written here with plain torch (each row alone: TransformerLens' ``logsumexp`` on
``[1, V]``; interp-engine's sort, cumsum and sum on ``[V]``; ``torch.multinomial`` from the row's generator), and
the operators a step runs do not grow with the rows of one seed (a sweep's default), and grow by the draw alone
per distinct seed, in every sampling mode."""

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


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("seeds", [[5] * 7, [5, 5, 9, 5, 9, 11, 9], [3, 4, 5]], ids=["one seed", "repeats", "distinct"])
def test_rows_of_one_seed_draw_what_each_would_alone_over_several_steps(mode, seeds):
    """Rows sharing a seed share one draw per step: over four steps every row's token equals its own generator's,
    carried from step to step (a draw spread to the wrong row, or drawn once too often, changes the tokens)."""
    s = MODES[mode]
    b = len(seeds)
    sampler = TokenSampler([Row([1], sd) for sd in seeds], s, V, torch.device("cpu"),
                           torch.ones((b, 1), dtype=torch.long), torch.ones((b, 1), dtype=torch.long))
    generators = [torch.Generator().manual_seed(sd) for sd in seeds]
    for step in range(4):
        x = logits(b, seed=100 + step)
        assert sampler(x).tolist() == reference(x, s, seeds, generators), (mode, seeds, step)


@pytest.mark.parametrize("seeds", [[7, 7, 7], [5, 9, 5, 5, 9, 11]], ids=["one seed", "repeats"])
@pytest.mark.parametrize("as_2d", [False, True])
def test_the_batched_draw_gives_each_row_its_seeds_philox_stream(seeds, as_2d, monkeypatch):
    """CUDA's path (``engine.philox``: one kernel for all distinct seeds) played on this CPU through Triton's
    interpreter: every row gets its own seed's stream as tests/test_philox.py's Random123 reference computes it,
    step after step at the offset one draw moves the generator by."""
    import numpy as np

    from saejobs.engine import philox
    from tests.test_philox import expected, exponential_of

    stride, v = 8, 300
    launch = philox.launch
    found = philox.TRANSFORMS[-1]  # not the default: the draw must use what the check found (the interpreter
    asked, used = [], []            # takes its own logarithm, and float's ε is the float32 tensor's own)
    monkeypatch.setattr(philox, "matching_transform", lambda *key: asked.append(key) or found)
    monkeypatch.setattr(philox, "grid_stride", lambda numel, device: stride)
    monkeypatch.setattr(philox, "launch",
                        lambda *a, **k: used.append(k["transform"]) or launch(*a, **k, interpret=True))
    streams = gen.RowStreams(seeds, torch.device("cpu"))
    offset = 0
    for step in range(2):
        q = streams.exponential(torch.empty((len(seeds), v)), as_2d)
        stream = {s: [expected(s, offset, e, stride) for e in range(v)] for s in set(seeds)}
        want = exponential_of(np.array([stream[s] for s in seeds], dtype=np.int64))
        assert torch.equal(q.expand(len(seeds), v), want), (seeds, step)
        offset += philox.counter_offset(v, stride)
    assert streams.batched and asked == [(torch.device("cpu"), torch.float32, v)] and used == [found, found]


class Ops(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += 1
        return func(*args, **(kwargs or {}))


def ops_per_step(s: Sampling, b: int, seen: int = 2, seed: int | None = None) -> int:
    """Operators one sampling step dispatches for ``b`` rows (seeds 0 to b - 1, or all ``seed``), after ``seen``
    steps (penalties hold tokens)."""
    sampler = TokenSampler([Row([1], i if seed is None else seed) for i in range(b)], s, V, torch.device("cpu"),
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
    """What one more seed adds to the CPU's draw: its row of the noise, from its own mt19937 generator."""
    def count(b: int) -> int:
        streams = gen.RowStreams(list(range(b)), torch.device("cpu"))
        probs = torch.softmax(logits(b), dim=-1)
        streams.exponential(probs, False)  # the generators are made at the first draw, once per chunk
        with Ops() as mode:
            streams.exponential(probs, False)
        return mode.n
    return count(2) - count(1)


@pytest.mark.parametrize("mode", EVERY_MODE)
def test_a_step_runs_as_many_operators_for_256_rows_as_for_1(mode):
    """Every row's real draw included: rows of one seed (a sweep's default) draw one noise, so a step of any mode
    runs the same operators for 1 row and for 256. Distinct seeds cannot share a draw on this CPU (PyTorch's CPU
    generator is mt19937 and ``exponential_`` takes 2 × V consecutive words of a seed's own stream; CUDA's
    ``engine.philox`` draws them in one kernel), so each adds exactly its draw (its view and its
    ``exponential_``) and nothing else."""
    s = EVERY_MODE[mode]
    for op in gen.Reduction:  # this CPU rounds every reduction batched as it does one row alone
        assert gen._batch_rounds_as_rows(op, torch.empty((256, V))), op
    one, many = ops_per_step(s, 1, seed=42), ops_per_step(s, 256, seed=42)
    assert one == many, (mode, one, many)
    distinct = ops_per_step(s, 256) - ops_per_step(s, 1)
    assert distinct == (255 * draw_ops_per_row() if s.temperature > 0 else 0), (mode, distinct)


def test_top_p_row_by_row_costs_operators_per_row(monkeypatch):
    """The count can tell: with its reductions forced row by row, top-p costs more operators per row (7 more with
    torch 2.13 on this CPU: each row's sort, cumsum and sum, and the views they take)."""
    s = EVERY_MODE["interp-engine T0.7 top-p 0.9"]
    batched = ops_per_step(s, 64, seed=42) - ops_per_step(s, 1, seed=42)
    monkeypatch.setattr(gen, "_batch_rounds_as_rows", lambda op, like: False)
    rows = ops_per_step(s, 64, seed=42) - ops_per_step(s, 1, seed=42)
    assert batched == 0 and rows >= 63 * 5, (rows, batched)
