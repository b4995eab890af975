"""engine.decode: the static KV cache (and the CUDA graph that replays its steps) chooses what transformers'
own generation chooses, on a tiny random Gemma 2 on a CPU. The reference is ``model.generate`` (transformers'
left-padding, position and cache handling, none of saejobs'); the graph's capture and replay are played by a
stand-in on a CPU (the real one is bench/gpu.py's and the cuda fidelity cases' on a GPU)."""

from __future__ import annotations

import inspect
from types import SimpleNamespace

import pytest
import torch

from saejobs.engine import decode, generate as gen
from saejobs.engine.sampling import Sampling

PROMPTS = [[2, 10, 11, 12, 13, 14, 15], [2, 40, 41], [2, 99], [2, 7, 8, 9, 200]]
N = 8


def cache_arg(model) -> str:
    return "cache" if "cache" in inspect.signature(type(model).forward).parameters else "past_key_values"


def reference(lm) -> list[list[int]]:
    """transformers' greedy generation of each left-padded prompt (no EOS: every row runs N tokens)."""
    width = max(map(len, PROMPTS))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in PROMPTS])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in PROMPTS])
    out = lm.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=N, min_new_tokens=N, do_sample=False,
                            eos_token_id=None, pad_token_id=0)
    return out[:, width:].tolist()


def ours(lm, monkeypatch, kind) -> list[list[int]]:
    made = []
    real = decode.decoder

    def chosen(*a, **k):
        d = real(*a, **k) if kind == "auto" else kind(*a, **k)
        made.append(type(d))
        return d
    monkeypatch.setattr(gen, "decoder", chosen)
    monkeypatch.setattr(lm.tokenizer, "eos_token_id", None)
    rows = [gen.Row(p, 0) for p in PROMPTS]
    out = [g.token_ids for g in gen.generate(lm, rows, Sampling(n_tokens=N))]
    assert len(made) == 1
    return out


def test_static_and_dynamic_caches_generate_what_transformers_does(tiny_gemma2, monkeypatch):
    want = reference(tiny_gemma2)
    assert len({tuple(w) for w in want}) > 1  # rows differ: the test can tell them apart
    assert ours(tiny_gemma2, monkeypatch, decode.DynamicDecoder) == want
    assert ours(tiny_gemma2, monkeypatch, decode.StaticDecoder) == want


def test_generation_replays_a_static_cache_only_where_that_pays(tiny_gemma2, monkeypatch):
    """A CPU keeps the growing cache (no graphs to gain); CUDA takes the graph-replayed static cache up to
    GRAPH_MAX_ROWS rows, unless turned off; a sliding window shorter than prompt + tokens keeps the growing one."""
    made = []
    real = decode.decoder
    monkeypatch.setattr(gen, "decoder", lambda *a, **k: made.append(real(*a, **k)) or made[-1])
    gen.generate(tiny_gemma2, [gen.Row(p, 0) for p in PROMPTS], Sampling(n_tokens=N))
    assert isinstance(made[0], decode.DynamicDecoder)
    assert not decode.graph_pays("cpu", 1)
    assert decode.graph_pays("cuda", 1) and decode.graph_pays("cuda", decode.GRAPH_MAX_ROWS)
    assert not decode.graph_pays("cuda", decode.GRAPH_MAX_ROWS + 1)
    for var in ("SAEJOBS_CUDA_GRAPHS", "SAEJOBS_STATIC_CACHE"):
        monkeypatch.setenv(var, "0")
        assert not decode.graph_pays("cuda", 1)
        monkeypatch.delenv(var)
    window = tiny_gemma2.model.config.sliding_window
    assert decode.static_fits(tiny_gemma2.model, window) and not decode.static_fits(tiny_gemma2.model, window + 1)


class ReplayingGraph:
    """A CUDA graph's stand-in: ``replay`` runs the captured function again into the captured output (as the
    real one reruns its kernels into the same memory); ``broken`` adds an error, as a bad capture would."""

    def __init__(self, fn, out, broken: bool):
        self.fn, self.out, self.broken, self.replays = fn, out, broken, 0

    def replay(self):
        self.replays += 1
        self.out.copy_(self.fn() + (1.0 if self.broken else 0.0))


def run_static(lm, graph: bool, monkeypatch, broken: bool = False):
    graphs = []

    def capture(fn):
        g = ReplayingGraph(fn, torch.empty_like(fn()), broken)  # the stand-in's capture runs fn: rewind once more
        d.cache_rewind()
        graphs.append(g)
        return g, g.out
    monkeypatch.setattr(decode, "capture_graph", capture)
    width = max(map(len, PROMPTS))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in PROMPTS])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in PROMPTS])
    d = decode.StaticDecoder(lm.model, cache_arg(lm.model), ids, mask, N, graph=graph)
    d.cache_rewind = d._rewind
    toks, done = [], torch.zeros(len(PROMPTS), dtype=torch.bool)
    with torch.no_grad():
        logits = d.prompt()
        for step in range(N):
            toks.append(logits.argmax(-1))
            if step == N - 1:
                break
            done = done | (torch.arange(len(PROMPTS)) == 1) & (step >= 3)  # row 1 stops after 4 tokens
            logits = d.step(step, torch.where(done, 0, toks[-1]), done)
    return torch.stack(toks, 1).tolist(), graphs, d


@pytest.mark.parametrize("broken", [False, True])
def test_a_replayed_step_is_checked_against_the_eager_one_and_kept_only_if_equal(broken, tiny_gemma2, monkeypatch):
    """The first decode step runs eagerly, the cache rewinds, the captured step replays on the same slot: equal
    logits keep the graph for the rest of the chunk (and later chunks skip the eager step); a replay that
    differs turns graphs off for that model and device, and the slot is rewritten eagerly."""
    monkeypatch.setattr(decode, "_GRAPH_OK", decode.WeakKeyDictionary())
    eager, _, _ = run_static(tiny_gemma2, False, monkeypatch)
    assert eager == reference_with_stop(tiny_gemma2, monkeypatch)
    toks, graphs, d = run_static(tiny_gemma2, True, monkeypatch, broken)
    assert toks == eager
    assert dict(decode._GRAPH_OK) == {tiny_gemma2.model: {"cpu": not broken}}
    assert len(graphs) == 1 and graphs[0].replays == (1 if broken else N - 1)
    assert d.graph is (not broken)
    toks, graphs, _ = run_static(tiny_gemma2, True, monkeypatch, broken)  # a later chunk: the verdict stands
    assert toks == eager and len(graphs) == (0 if broken else 1)


def reference_with_stop(lm, monkeypatch) -> list[list[int]]:
    """Row 1 stopped after 4 tokens: its later tokens are whatever its masked steps give; the others are
    transformers' own, and row 1's first 4 too."""
    want = reference(lm)
    toks, _, _ = run_static(lm, False, monkeypatch)
    assert [t for b, t in enumerate(toks) if b != 1] == [w for b, w in enumerate(want) if b != 1]
    assert toks[1][:4] == want[1][:4]
    return toks


def test_a_cpu_head_in_slices_gives_the_heads_logits_and_generation_its_tokens(tiny_gemma2, monkeypatch):
    """``sliced_head``: an ``nn.Linear`` head computed 7 words at a time (260 words: a short last slice) gives
    ``F.linear``'s logits, with a bias too, and is itself again after the block; generation on a CPU runs every
    head call in slices and still chooses what transformers' own ``generate`` chooses."""
    monkeypatch.setattr(decode, "HEAD_SLICE", 7)
    g = torch.Generator().manual_seed(0)
    head = tiny_gemma2.model.get_output_embeddings()
    biased = torch.nn.Linear(head.in_features, 260)
    x = torch.randn(3, 5, head.in_features, generator=g)
    for lin in (head, biased):
        want = torch.nn.functional.linear(x, lin.weight, lin.bias)
        with decode.sliced_head(SimpleNamespace(get_output_embeddings=lambda lin=lin: lin)), torch.no_grad():
            got = lin(x)
            assert "forward" in lin.__dict__
        assert got.shape == want.shape == (3, 5, 260)
        assert torch.allclose(got, want, rtol=0, atol=1e-6)
        assert "forward" not in lin.__dict__
    want = reference(tiny_gemma2)
    sliced = []
    handle = head.register_forward_hook(lambda m, a, out: sliced.append("forward" in m.__dict__))
    try:
        assert ours(tiny_gemma2, monkeypatch, decode.DynamicDecoder) == want
    finally:
        handle.remove()
    assert len(sliced) == N and all(sliced)  # the prompt's pass and N - 1 steps
