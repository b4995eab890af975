"""engine.row_graph on a CPU, with a stand-in graph that reruns the captured loop into its captured outputs (as a
CUDA graph reruns its kernels into the same memory): a per-row loop is replayed only after its first replay
equals the eager loop, and sampling with the replayed loops draws each row's reference tokens. The real graph
runs in bench/gpu.py and the cuda fidelity cases on a GPU."""

import pytest
import torch

from saejobs.engine import generate as gen
from saejobs.engine import row_graph
from saejobs.engine.generate import Row, TokenSampler
from tests.test_sampling_batched import MODES, V, logits, reference


class ReplayingGraph:
    def __init__(self, fn, broken: bool):
        self.fn, self.broken, self.replays = fn, broken, 0
        out = fn()
        self.out = tuple(t.clone() for t in out) if isinstance(out, tuple) else out.clone()

    def replay(self):
        self.replays += 1
        new = self.fn()
        for mine, fresh in zip(row_graph._tuple(self.out), row_graph._tuple(new)):
            mine.copy_(fresh + (1 if self.broken else 0))


@pytest.fixture
def stand_in(monkeypatch):
    graphs = []

    def capture(fn, broken=False):
        graphs.append(ReplayingGraph(fn, broken))
        return graphs[-1], graphs[-1].out
    monkeypatch.setattr(row_graph, "graphs_here", lambda device: True)
    monkeypatch.setattr(row_graph, "capture_graph", capture)
    monkeypatch.setattr(row_graph, "_OFF", set())
    monkeypatch.setattr(gen, "_batch_rounds_as_rows", lambda op, like: False)  # the row-by-row path
    return graphs


def steps(s, seeds, n=4):
    """n steps of one sampler on fresh logits each step, against each row's reference draws."""
    sampler = TokenSampler([Row([1], sd) for sd in seeds], s, V, torch.device("cpu"),
                           torch.ones((len(seeds), 1), dtype=torch.long), torch.ones((len(seeds), 1), dtype=torch.long))
    xs = [logits(len(seeds), seed=10 + i) for i in range(n)]
    got = [sampler(x).tolist() for x in xs]
    # the reference restarts each row's generator per call: compare step by step against consecutive draws
    want = reference_steps(xs, s, seeds)
    return got, want


def reference_steps(xs, s, seeds):
    """Each row's tokens over consecutive steps, its generator carried across them (the reference's loop)."""
    gens = [torch.Generator().manual_seed(sd) for sd in seeds]
    out = []
    for x in xs:
        out.append([reference(x[b:b + 1], s, [0], generators=[gens[b]])[0] for b in range(len(seeds))])
    return out


@pytest.mark.parametrize("mode", ["transformerlens T0.7", "interp-engine T0.7 top-p 0.9"])
def test_the_loop_is_replayed_after_its_first_replay_equals_the_eager_loop(mode, stand_in):
    got, want = steps(MODES[mode], [3, 5, 8])
    assert got == want
    assert len(stand_in) == (1 if mode.startswith("transformerlens") else 3)  # logsumexp; sort, cumsum, sum
    assert all(g.replays == 1 + 3 for g in stand_in)  # the check's replay, then steps 2-4
    assert row_graph._OFF == set()


def test_a_replay_that_differs_leaves_the_loop_eager_on_that_device(stand_in, monkeypatch):
    monkeypatch.setattr(row_graph, "capture_graph", lambda fn: (lambda g: (g, g.out))(ReplayingGraph(fn, True)))
    s = MODES["transformerlens T0.7"]
    got, want = steps(s, [3, 5, 8])
    assert got == want
    assert row_graph._OFF == {("logsumexp", "cpu")}
    got, want = steps(s, [3, 5, 8])  # a later chunk does not try again
    assert got == want


def test_a_loop_that_cannot_be_captured_stays_eager(stand_in, monkeypatch):
    def refuse(fn):
        raise RuntimeError("operation not permitted when stream is capturing")
    monkeypatch.setattr(row_graph, "capture_graph", refuse)
    got, want = steps(MODES["interp-engine T0.7 top-p 0.9"], [3, 5])
    assert got == want
    assert row_graph._OFF == {("sort", "cpu"), ("cumsum", "cpu"), ("sum", "cpu")}
