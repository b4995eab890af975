"""Scoring from the stream generation recorded (``engine.residual``, issue 27 item 4), on the real Gemma 3 270M
with the demo SAE: rows steered at the SAE's layer (6) and with a raw vector below it (layer 3: at its
``resid_post`` the stream is recorded there, before the vector is added, and scoring starts at layer 4; at its
``mlp_out``, inside layer 3, it is recorded entering layer 3; with no such vector it is recorded at the SAE's own
hook, and the DEFAULT and zero-strength rows are scored from their generation alone, no layer run for them),
DEFAULT rows, and rows that stop at EOS after different numbers of tokens, each scored from the recording, equal
``tests.test_score.reference_scores`` (one unpadded pass of the plain transformers model over the row alone, the
SAE file's own tensors): NLL within 1e-4, concept within 1e-3 relative. On the growing cache and on the static
one (its eager steps: no CUDA graph on a CPU)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from saejobs.engine import decode, demo, residual, score
from saejobs.engine.request import Settings, SweepConfig, plan_configs
from saejobs.engine.sweep import SweepGenerator
from tests.test_score import demo_sae, mirror, reference_scores, sae_file  # noqa: F401 (fixtures)

PROMPTS = ["Once upon a time", "My favourite thing about long summer evenings is"]


class EosAs:
    """The tokenizer with another token as its EOS: a random-enough choice makes rows stop early, at different
    steps, as a real EOS would."""

    def __init__(self, tok, eos: int):
        self._tok, self.eos_token_id = tok, eos

    def __call__(self, *a, **kw):
        return self._tok(*a, **kw)

    def __getattr__(self, name):
        return getattr(self._tok, name)


def configs(settings: Settings, low: str | None) -> list[SweepConfig]:
    if low is None:  # zero-strength rows too: generated unsteered, as the DEFAULT rows are
        return plan_configs([0, 1], [], [0, 150, 300], PROMPTS, [42], False, settings, "t")
    grid = plan_configs([0, 1], [], [150, 300], PROMPTS, [42], False, settings, "t")
    steered = [c for c in grid if c.type == "STEERED"]
    below = [dataclasses.replace(c, features=({"vector": "low", "hook": low, "strength": 40.0}, *c.features), key=f"low{i}")
             for i, c in enumerate(steered[:3])]
    return grid + below


@pytest.mark.model
@pytest.mark.parametrize("cache, low", [("growing", "blocks.3.hook_resid_post"), ("static", "blocks.3.hook_resid_post"),
                                        ("growing", "blocks.3.hook_mlp_out"), ("static", None)])
def test_scores_from_the_recorded_stream_equal_an_independent_pass(cache, low, gemma3, demo_sae, sae_file, monkeypatch):
    if cache == "static":
        monkeypatch.setattr(decode, "graph_pays", lambda device_type, rows: True)
        monkeypatch.setattr(decode, "MIN_GRAPH_STEPS", 1 << 30)  # the static cache's steps run eagerly
    settings = Settings(n_tokens=10)
    vector = torch.randn(gemma3.d_model, generator=torch.Generator().manual_seed(3))
    plain = SweepGenerator(gemma3, demo_sae, demo.ENTRY.hook_name, settings, vectors={"low": vector})
    first = plain.run(configs(settings, low))
    # an EOS that rows produce mid-way, at different steps (a row's tokens up to its first EOS do not change):
    # of the tokens generated after the first, the one that ends the rows at the most distinct lengths
    def lengths_if(eos: int) -> list[int]:
        return [g.token_ids.index(eos) + 1 if eos in g.token_ids else len(g.token_ids) for _, g, _ in first]
    eos = max(sorted({t for _, g, _ in first for t in g.token_ids[1:-1]}), key=lambda t: len(set(lengths_if(t))))
    lm = dataclasses.replace(gemma3, tokenizer=EosAs(gemma3.tokenizer, eos))
    runner = SweepGenerator(lm, demo_sae, demo.ENTRY.hook_name, settings, vectors={"low": vector})
    made: list = []
    monkeypatch.setattr(residual.ResidualCapture, "__init__", _recording(residual.ResidualCapture.__init__, made))
    outs = runner.run(configs(settings, low), for_scoring=True)
    # recorded as layer 3's output (before the vector), else as its input; with no vector, as the SAE's layer 6's output
    at, post = (6, True) if low is None else (3, low.endswith("resid_post"))
    assert len(made) == 1 and made[0].layer == at + post
    assert made[0].hook_name == f"blocks.{at}.hook_resid_{'post' if post else 'pre'}"
    assert all(g.stream is not None and g.stream[0] is made[0] for _, g, _ in outs)
    lengths = sorted({len(g.token_ids) for _, g, _ in outs})
    stopped = sum(g.stopped_at_eos for _, g, _ in outs)
    assert stopped >= 2 and len(lengths) >= 3 and lengths[-1] == settings.n_tokens, (lengths, stopped)
    # the recording itself: each row's stream at that layer (output or input) equals a plain unsteered unpadded pass's,
    # last token included
    # (an EOS is never fed: a row that stops feeds padding, masked, in its place; scoring reads nothing there)
    width = made[0].width
    for (c, g, _), b in zip(outs, range(len(outs))):
        ids, k = runner.ids(c), len(g.token_ids) - g.stopped_at_eos
        plain_in = []
        h = (gemma3.layers[at].register_forward_hook(lambda _m, _a, out: plain_in.append(out[0])) if post else
             gemma3.layers[at].register_forward_pre_hook(lambda _m, args, kw: plain_in.append(
                 (args[0] if args else kw["hidden_states"])[0]), with_kwargs=True))
        try:
            with torch.no_grad():  # the stream is all this pass is for: the output layer at one position only
                gemma3.model(input_ids=torch.tensor([ids + g.token_ids]), logits_to_keep=1)
        finally:
            h.remove()
        recorded = made[0].stream[b, width - len(ids):width + k]
        want = plain_in[0][:len(ids) + k]  # rounding, relative to the stream's scale (hundreds at layer 3's output)
        assert torch.allclose(recorded, want, rtol=1e-4, atol=1e-5 * float(want.abs().max())), (b, c.features, g.token_ids)
    got = score.score_outputs(runner, outs, [0, 1])
    for (c, g, _), mine in zip(outs, got):
        ref = reference_scores(lm, sae_file, runner.ids(c), g.token_ids, [0, 1] if c.type == "DEFAULT" else
                               [f["index"] for f in c.features if "index" in f])
        where = (c.type, c.features, g.token_ids)
        assert mine["nll"] == pytest.approx(ref["nll"], rel=1e-4, abs=1e-4), where
        assert mine["nll_novel"] == pytest.approx(ref["nll_novel"], rel=1e-4, abs=1e-4), where
        assert mine["stopped_at_eos"] is ref["stopped_at_eos"] and mine["completion_tokens"] == ref["completion_tokens"]
        assert mine["concept"].keys() == ref["concept"].keys(), where
        for f, v in ref["concept"].items():
            assert mine["concept"][f]["mean"] == pytest.approx(v["mean"], rel=1e-3, abs=1e-3), (f, where)
            assert mine["concept"][f]["fire_rate"] == pytest.approx(v["fire_rate"], abs=1e-9), (f, where)
    assert sum(s["concept_mean"] > 0 for s in got) >= 3, "the SAE fired on too few rows to test anything"
    # the layers below the recording really were skipped: scoring runs layers from the record's up only, and no
    # layer for a row that generation already scored (a DEFAULT row, its concepts read at the record point)
    ran: list[tuple[int, int]] = []
    hooks = [gemma3.layers[i].register_forward_pre_hook(lambda _m, args, kw, _i=i: ran.append(
        (_i, (args[0] if args else kw["hidden_states"]).shape[0])), with_kwargs=True) for i in range(gemma3.n_layers)]
    try:
        again = score.score_outputs(runner, outs, [0, 1])
    finally:
        for h in hooks:
            h.remove()
    assert again == got
    assert sorted({i for i, _ in ran}) == list(range(at + post, gemma3.n_layers))
    unsteered = [c.type == "DEFAULT" or all(f.get("strength") == 0 for f in c.features) for c, _, _ in outs]
    assert [made[0].known(b) for b in range(len(outs))] == unsteered  # their log-probabilities kept
    assert sum(unsteered) == (2 + 4 if low is None else 2)  # two DEFAULT rows, and four zero-strength ones
    texts = {kind: {(tuple(runner.ids(c)), tuple(g.token_ids)) for (c, g, _), u in zip(outs, unsteered)
                    if (low is None and u) == kind} for kind in (True, False)}  # below the SAE's hook: all run
    assert max(rows for i, rows in ran if i == at + post) == len(texts[False] - texts[True])


def _recording(init, made: list):
    def wrapped(self, *a, **kw):
        init(self, *a, **kw)
        made.append(self)
    return wrapped
