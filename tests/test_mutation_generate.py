"""``engine.generate``'s sampling (``TokenSampler``, ``draw``) against the references, on plain tensors.

The references run row by row as the servers run them: ``torch.manual_seed(seed)`` then per step
interp-engine's own ``steer._sample_next`` (the installed package), or TransformerLens 4.3's
``sample_logits`` written out (``/ temperature``, ``- freq_penalty * bincount(tokens so far)`` assigned
into the row, ``float32``, ``Categorical(logits=...).sample()``). The logits of each step are fixed
random tensors (the sampler does not care where they come from), so these run in milliseconds; they
exist for the mutation check of ``engine/generate.py``'s sampling (issue 25 item 4). Which device the
sampler's state and the one-time check use is checked with ``meta`` standing in for a GPU.
"""

from __future__ import annotations

import pytest
import torch
from interp_engine.steer import _sample_next

from saejobs.engine import generate as gen
from saejobs.engine.sampling import Sampling

V = 48
PAD = 0
CPU = torch.device("cpu")
PROMPTS = [[5, 6, 5, 7, 5], [9, 9], [3, 4, 3, 4, 3, 4, 8], [11], [5, 12, 13], [2, 2, 2, 2]]
SEEDS = [3, 42, 7, 0, 12345, 99]


def step_logits(dtype: torch.dtype, steps: int = 10, rows: int = len(PROMPTS), seed: int = 1) -> list[torch.Tensor]:
    """Per step a (rows, V) tensor: peaked on a few tokens (so tokens repeat and penalties matter), the
    pad id among the likely ones (so counting the padding would change draws)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        x = torch.randn((rows, V), generator=g) * 1.5
        x[:, [PAD, 5, 9, 3, 4]] += 3.0
        out.append(x.to(dtype))
    return out


def padded(prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    W = max(map(len, prompts))
    ids = torch.full((len(prompts), W), PAD, dtype=torch.long)
    mask = torch.zeros((len(prompts), W), dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, W - len(p):] = torch.tensor(p)
        mask[b, W - len(p):] = 1
    return ids, mask


def ours(s: Sampling, steps: list[torch.Tensor], prompts=PROMPTS, seeds=SEEDS) -> list[list[int]]:
    rows = [gen.Row(p, seed) for p, seed in zip(prompts, seeds)]
    ids, mask = padded(prompts)
    choose = gen.TokenSampler(rows, s, V, CPU, ids, mask)
    picked = []
    for x in steps:
        nxt = choose(x.clone())
        assert nxt.shape == (len(rows),) and nxt.dtype == torch.long
        choose.update_penalties(nxt)
        picked.append(nxt.tolist())
    return [list(r) for r in zip(*picked)]


def interp_reference(s: Sampling, steps: list[torch.Tensor], b: int, seed: int) -> list[int]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        generated: list[int] = []
        for x in steps:
            generated.append(_sample_next(x[b].clone(), temperature=s.temperature, top_k=s.top_k or None,
                                          top_p=s.top_p, presence_penalty=s.presence_penalty, generated=generated))
    return generated


def tl_reference(temperature: float, freq_penalty: float, steps: list[torch.Tensor], b: int, prompt: list[int],
                 seed: int) -> list[int]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tokens = torch.tensor([prompt])
        out = []
        for x in steps:
            if temperature == 0.0:
                nxt = x[b:b + 1].argmax(dim=-1)
            else:
                final = x[b:b + 1] / temperature
                final[0] = final[0] - freq_penalty * torch.bincount(tokens[0], minlength=V)
                nxt = torch.distributions.Categorical(logits=final.to(torch.float32)).sample()
            tokens = torch.cat([tokens, nxt[:, None]], dim=1)
            out.append(int(nxt[0]))
    return out


DTYPES = [torch.float32, torch.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kw", [dict(temperature=0.7), dict(temperature=0.5, freq_penalty=1.3),
                                dict(temperature=1.6, freq_penalty=0.4), dict(temperature=0.0, freq_penalty=2.0)])
def test_transformerlens_rows_equal_the_reference_alone(dtype, kw):
    s = Sampling(n_tokens=10, **kw)
    steps = step_logits(dtype)
    got = ours(s, steps)
    want = [tl_reference(s.temperature, s.freq_penalty, steps, b, p, seed)
            for b, (p, seed) in enumerate(zip(PROMPTS, SEEDS))]
    assert got == want


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kw", [dict(temperature=0.8), dict(temperature=0.6, presence_penalty=1.5),
                                dict(temperature=1.0, top_k=5), dict(temperature=0.9, top_p=0.7),
                                dict(temperature=0.7, top_k=6, top_p=0.8, presence_penalty=0.9),
                                dict(temperature=0.0, presence_penalty=2.5), dict(temperature=0.0)])
def test_interp_engine_rows_equal_its_sample_next_alone(dtype, kw):
    s = Sampling(n_tokens=10, sampling_semantics="interp-engine", **kw)
    steps = step_logits(dtype)
    got = ours(s, steps)
    want = [interp_reference(s, steps, b, seed) for b, seed in enumerate(SEEDS)]
    assert got == want


def test_penalties_and_top_k_p_change_the_draws():
    """The settings above are not no-ops on these logits (else the tests above could not fail)."""
    steps = step_logits(torch.float32)
    plain_tl = ours(Sampling(n_tokens=10, temperature=0.5), steps)
    assert ours(Sampling(n_tokens=10, temperature=0.5, freq_penalty=1.3), steps) != plain_tl
    plain = ours(Sampling(n_tokens=10, temperature=0.6, sampling_semantics="interp-engine"), steps)
    for kw in (dict(presence_penalty=1.5), dict(top_k=5), dict(top_p=0.7)):
        assert ours(Sampling(n_tokens=10, temperature=0.6, sampling_semantics="interp-engine", **kw), steps) != plain
    greedy = ours(Sampling(n_tokens=10, sampling_semantics="interp-engine"), steps)
    assert ours(Sampling(n_tokens=10, sampling_semantics="interp-engine", presence_penalty=2.5), steps) != greedy


def test_top_p_keeps_the_token_that_reaches_it():
    """interp-engine drops a token only when the mass before it already exceeds top_p: with two tokens
    at exactly 0.5 and top_p 0.5, both stay (both are drawn over seeds)."""
    x = torch.full((1, V), float("-inf"))
    x[0, 7] = x[0, 20] = 1.0
    s = Sampling(n_tokens=1, temperature=1.0, sampling_semantics="interp-engine", top_p=0.5)
    seeds = list(range(16))
    got = [ours(s, [x.clone()], prompts=[[1]], seeds=[seed])[0][0] for seed in seeds]
    assert got == [interp_reference(s, [x], 0, seed)[0] for seed in seeds]
    assert set(got) == {7, 20}


def test_probabilities_handed_to_the_draw_are_the_references_bit_for_bit(monkeypatch):
    """What each row draws from is bitwise what the reference draws from: ``Categorical(logits).probs``
    of the float32 penalized logits (TransformerLens); the softmax in the logits' dtype after top-k, and
    after top-p the sorted, zeroed, renormalized row (interp-engine)."""
    seen = []
    real = gen.draw

    def spy(probs, streams, *, as_2d):
        seen.append((probs.clone(), as_2d, len(streams.seeds)))
        return real(probs, streams, as_2d=as_2d)
    monkeypatch.setattr(gen, "draw", spy)

    steps = step_logits(torch.bfloat16, steps=1)
    x = steps[0]
    prompts = PROMPTS
    ours(Sampling(n_tokens=1, temperature=0.5, freq_penalty=1.3), steps)
    (probs, as_2d, n), = seen
    assert as_2d is True and n == len(prompts) and probs.dtype == torch.float32
    for b, p in enumerate(prompts):
        final = x[b:b + 1] / 0.5
        final[0] = final[0] - 1.3 * torch.bincount(torch.tensor(p), minlength=V)
        assert torch.equal(probs[b:b + 1], torch.distributions.Categorical(logits=final.float()).probs), b

    seen.clear()
    s = Sampling(n_tokens=1, temperature=0.7, sampling_semantics="interp-engine", top_k=6)
    ours(s, steps)
    (probs, as_2d, n), = seen
    assert as_2d is False and n == len(prompts) and probs.dtype == torch.bfloat16
    for b in range(len(prompts)):
        row = x[b] / 0.7
        kth = torch.topk(row, 6).values[..., -1, None]
        want = torch.softmax(torch.where(row < kth, torch.full_like(row, float("-inf")), row), dim=-1)
        assert torch.equal(probs[b], want) and int((want > 0).sum()) >= 6, b

    seen.clear()
    ours(Sampling(n_tokens=1, temperature=0.9, sampling_semantics="interp-engine", top_p=0.6), steps)
    rows = [(probs[b], n) for probs, as_2d, n in seen for b in range(probs.shape[0]) if as_2d is False]
    assert len(rows) == len(prompts) and {n for _, n in rows} <= {1, len(prompts)}  # one draw per row, or batched
    for b, (probs, _) in enumerate(rows):
        sp, _ = torch.sort(torch.softmax(x[b] / 0.9, dim=-1), descending=True)
        cum = torch.cumsum(sp, dim=-1)
        sp[cum - sp > 0.6] = 0.0
        want = sp / sp.sum()
        assert probs.shape == (V,) and torch.equal(probs, want), b
        assert 1 < int((want > 0).sum()) < V


def test_temperature_zero_is_argmax_without_generators():
    """Greedy takes the argmax (interp-engine after its presence penalty) and draws nothing."""
    x = step_logits(torch.float32, steps=1)[0]
    for sem in ("transformerlens", "interp-engine"):
        rows = [gen.Row(p, s) for p, s in zip(PROMPTS, SEEDS)]
        ids, mask = padded(PROMPTS)
        choose = gen.TokenSampler(rows, Sampling(sampling_semantics=sem), V, CPU, ids, mask)
        assert choose.gens is None and torch.equal(choose(x), x.argmax(-1))


def test_frequency_counts_start_from_the_prompt_without_its_padding():
    """TransformerLens' bincount covers the prompt (BOS and repeats included) and each generated token,
    never the left padding."""
    rows = [gen.Row(p, s) for p, s in zip(PROMPTS, SEEDS)]
    ids, mask = padded(PROMPTS)
    choose = gen.TokenSampler(rows, Sampling(temperature=1.0, freq_penalty=0.5), V, CPU, ids, mask)
    want = torch.stack([torch.bincount(torch.tensor(p), minlength=V) for p in PROMPTS]).float()
    assert torch.equal(choose.counts, want)
    nxt = torch.tensor([5, 0, 47, 11, 1, 2])
    choose.update_penalties(nxt)
    want[torch.arange(len(PROMPTS)), nxt] += 1
    assert torch.equal(choose.counts, want)


def draws_like_multinomial(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(3)
    probs = torch.softmax(torch.randn((5, 300), generator=g) * 4, dim=-1).to(dtype)
    for as_2d in (False, True):
        mine = gen.RowStreams(list(range(5)), CPU)
        ref = [torch.Generator().manual_seed(s) for s in range(5)]
        for _ in range(3):
            got = gen.draw(probs, mine, as_2d=as_2d)
            want = [int(torch.multinomial(probs[b:b + 1] if as_2d else probs[b], 1, as_2d, generator=r).flatten()[0])
                    for b, r in enumerate(ref)]
            assert got.tolist() == want


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_draw_equals_torch_multinomial_by_either_path(dtype, monkeypatch):
    """Whichever path the one-time check picks, ``draw`` is ``torch.multinomial`` with each row's own
    generator: the exponential trick where it holds (it does on the CPU), else multinomial per row."""
    monkeypatch.setattr(gen, "_TRICK", {})
    assert gen._exponential_trick_holds(CPU, dtype) is True
    assert gen._TRICK == {("cpu", dtype): True}
    draws_like_multinomial(dtype)
    monkeypatch.setattr(gen, "_TRICK", {("cpu", dtype): False})
    draws_like_multinomial(dtype)


def test_draw_takes_the_path_the_check_found(monkeypatch):
    calls = []
    exp, mult = gen._draw_exponential, gen._draw_multinomial
    monkeypatch.setattr(gen, "_draw_exponential", lambda *a: calls.append("exp") or exp(*a))
    monkeypatch.setattr(gen, "_draw_multinomial", lambda *a: calls.append("mult") or mult(*a))
    probs = torch.softmax(torch.randn((2, 10)), dim=-1)
    monkeypatch.setattr(gen, "_TRICK", {("cpu", torch.float32): True})
    gen.draw(probs, gen.RowStreams([0, 1], CPU), as_2d=True)
    assert calls == ["exp"]
    monkeypatch.setattr(gen, "_TRICK", {("cpu", torch.float32): False})
    gen.draw(probs, gen.RowStreams([0, 1], CPU), as_2d=False)
    assert calls == ["exp", "mult"]


@pytest.mark.parametrize("where", ["2d", "1d", "second draw", "last row", "later seed", "bfloat16"])
def test_the_check_catches_a_trick_that_differs_anywhere_it_looks(where, monkeypatch):
    """The one-time check covers both tensor shapes, consecutive draws, every row, several seeds, and the
    dtype asked about: an exponential draw that goes wrong in any one of these is found (and cached
    for that device and dtype only)."""
    real = gen._draw_exponential
    n = {"calls": 0}

    def broken(probs, streams, as_2d):
        n["calls"] += 1
        out = real(probs, streams, as_2d)
        wrong = {"2d": as_2d, "1d": not as_2d, "second draw": n["calls"] % 2 == 0,
                 "last row": True, "later seed": streams.seeds[0] >= 2,
                 "bfloat16": probs.dtype == torch.bfloat16}[where]
        if wrong:
            out = out.clone()
            out[-1 if where == "last row" else 0] += 1
        return out
    monkeypatch.setattr(gen, "_TRICK", {})
    monkeypatch.setattr(gen, "_draw_exponential", broken)
    dtype = torch.bfloat16 if where == "bfloat16" else torch.float32
    assert gen._exponential_trick_holds(CPU, dtype) is False
    assert gen._exponential_trick_holds(CPU, torch.float64) is (where == "bfloat16")  # checked on its own
    assert gen._TRICK[("cpu", dtype)] is False


def test_the_check_leaves_the_global_generator_alone(monkeypatch):
    """The one-time check draws its test probabilities from its own seeded generator: the first sampled
    sweep does not move torch's global random state (a caller's ``torch.manual_seed`` stream)."""
    monkeypatch.setattr(gen, "_TRICK", {})
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    assert gen._exponential_trick_holds(CPU, torch.float32) is True
    assert torch.equal(torch.get_rng_state(), before)


# A meta tensor stands in for another device on a CPU-only run: an operand left on the CPU is refused there
# as it would be on a GPU. torch has no meta generator, so a stand-in records the device each is asked for.
META = torch.device("meta")


class RecordedGenerator:
    def __init__(self, device):
        self.device, self.seed = torch.device(device), None

    def manual_seed(self, seed):
        self.seed = seed
        return self

    def initial_seed(self):
        return self.seed


def recording_generators(monkeypatch) -> None:
    """``torch.Generator(device=d)`` records d; a generator asked for without a device is a real CPU one."""
    real = torch.Generator
    monkeypatch.setattr(torch, "Generator", lambda device=None: real() if device is None else RecordedGenerator(device))


@pytest.mark.parametrize("semantics, kw", [("transformerlens", dict(freq_penalty=0.5)),
                                           ("interp-engine", dict(presence_penalty=1.5))])
def test_a_sampler_keeps_its_generators_and_penalties_on_the_given_device(semantics, kw, monkeypatch):
    recording_generators(monkeypatch)
    rows = [gen.Row(p, s) for p, s in zip(PROMPTS, SEEDS)]
    ids, mask = padded(PROMPTS)
    s = Sampling(temperature=1.0, sampling_semantics=semantics, **kw)
    choose = gen.TokenSampler(rows, s, V, META, ids.to(META), mask.to(META))
    assert [(g.device, g.initial_seed()) for g in choose.gens.gens] == [(META, seed) for seed in SEEDS]
    penalty = choose.counts if semantics == "transformerlens" else choose.seen
    assert penalty.device.type == "meta" and penalty.shape == (len(PROMPTS), V)
    choose.update_penalties(torch.zeros(len(PROMPTS), dtype=torch.long, device=META))  # CPU state would refuse it


def test_the_check_draws_on_the_device_it_is_asked_about(monkeypatch):
    """The one-time check's probabilities and both sets of generators are on the device asked about (meta
    here), in its dtype: a check run on the CPU would say nothing about the device's own sampling."""
    monkeypatch.setattr(gen, "_TRICK", {})
    recording_generators(monkeypatch)
    seen = []

    def recorded(kind):
        def draw(probs, streams, as_2d):
            gens = streams if kind == "mult" else streams.gens
            seen.append((kind, probs.device.type, probs.dtype, {g.device for g in gens}))
            return torch.zeros(3, dtype=torch.long)
        return draw
    monkeypatch.setattr(gen, "_draw_exponential", recorded("exp"))
    monkeypatch.setattr(gen, "_draw_multinomial", recorded("mult"))
    assert gen._exponential_trick_holds(META, torch.bfloat16) is True
    assert gen._TRICK == {("meta", torch.bfloat16): True}
    assert {kind for kind, *_ in seen} == {"exp", "mult"}
    assert {(d, dt) for _, d, dt, _ in seen} == {("meta", torch.bfloat16)}
    assert all(devices == {META} for _, _, _, devices in seen)
