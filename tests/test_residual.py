"""Scoring from the stream generation recorded (``engine.residual``, issue 27 item 4), on the real Gemma 3 270M
with the demo SAE: rows steered at the SAE's layer (6) and with a raw vector below it (layer 3: at its
``resid_post`` the stream is recorded there, before the vector is added, and scoring starts at layer 4; at its
``mlp_out``, inside layer 3, it is recorded entering layer 3), DEFAULT rows, and rows that stop at EOS after different numbers of tokens, each scored
from the recording, equal ``tests.test_score.reference_scores`` (one unpadded pass of the plain transformers model
over the row alone, the SAE file's own tensors): NLL within 1e-4, concept within 1e-3 relative. On the growing
cache and on the static one (its eager steps: no CUDA graph on a CPU)."""

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


def configs(settings: Settings, low: str) -> list[SweepConfig]:
    grid = plan_configs([0, 1], [], [150, 300], PROMPTS, [42], False, settings, "t")
    steered = [c for c in grid if c.type == "STEERED"]
    below = [dataclasses.replace(c, features=({"vector": "low", "hook": low, "strength": 40.0}, *c.features), key=f"low{i}")
             for i, c in enumerate(steered[:3])]
    return grid + below


@pytest.mark.model
@pytest.mark.parametrize("cache, low", [("growing", "blocks.3.hook_resid_post"), ("static", "blocks.3.hook_resid_post"),
                                        ("growing", "blocks.3.hook_mlp_out")])
def test_scores_from_the_recorded_stream_equal_an_independent_pass(cache, low, gemma3, demo_sae, sae_file, monkeypatch):
    if cache == "static":
        monkeypatch.setattr(decode, "graph_pays", lambda device_type, rows: True)
        monkeypatch.setattr(decode, "MIN_GRAPH_STEPS", 1 << 30)  # the static cache's steps run eagerly
    settings = Settings(n_tokens=10)
    vector = torch.randn(gemma3.d_model, generator=torch.Generator().manual_seed(3))
    plain = SweepGenerator(gemma3, demo_sae, demo.ENTRY.hook_name, settings, vectors={"low": vector})
    first = plain.run(configs(settings, low))
    # an EOS that some rows produce mid-way: the 4th token of one row
    eos = first[len(first) // 2][1].token_ids[3]
    lm = dataclasses.replace(gemma3, tokenizer=EosAs(gemma3.tokenizer, eos))
    runner = SweepGenerator(lm, demo_sae, demo.ENTRY.hook_name, settings, vectors={"low": vector})
    made: list = []
    monkeypatch.setattr(residual.ResidualCapture, "__init__", _recording(residual.ResidualCapture.__init__, made))
    outs = runner.run(configs(settings, low), for_scoring=True)
    post = low.endswith("resid_post")  # recorded as layer 3's output (before the vector), else as its input
    assert len(made) == 1 and made[0].layer == 3 + post  # the vector's layer 3 is below the SAE's layer 6
    assert made[0].hook_name == ("blocks.3.hook_resid_post" if post else "blocks.3.hook_resid_pre")
    assert all(g.stream is not None and g.stream[0] is made[0] for _, g, _ in outs)
    lengths = sorted({len(g.token_ids) for _, g, _ in outs})
    stopped = sum(g.stopped_at_eos for _, g, _ in outs)
    assert stopped >= 2 and len(lengths) >= 3 and lengths[-1] == settings.n_tokens, (lengths, stopped)
    # the recording itself: each row's stream at layer 3 (output or input) equals a plain unsteered unpadded pass's,
    # last token included
    # (an EOS is never fed: a row that stops feeds padding, masked, in its place; scoring reads nothing there)
    width = made[0].width
    for (c, g, _), b in zip(outs, range(len(outs))):
        ids, k = runner.ids(c), len(g.token_ids) - g.stopped_at_eos
        plain_in = []
        h = (gemma3.layers[3].register_forward_hook(lambda _m, _a, out: plain_in.append(out[0])) if post else
             gemma3.layers[3].register_forward_pre_hook(lambda _m, args, kw: plain_in.append(
                 (args[0] if args else kw["hidden_states"])[0]), with_kwargs=True))
        try:
            with torch.no_grad():
                gemma3.model(input_ids=torch.tensor([ids + g.token_ids]))
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
    # the layers below the recording really were skipped: scoring runs layers 4.. (3.. from layer 3's input) only
    ran: list[int] = []
    hooks = [gemma3.layers[i].register_forward_pre_hook(lambda *_a, _i=i: ran.append(_i)) for i in range(gemma3.n_layers)]
    try:
        score.score_outputs(runner, outs[:2], [0, 1])
    finally:
        for h in hooks:
            h.remove()
    assert sorted(set(ran)) == list(range(3 + post, gemma3.n_layers))


def _recording(init, made: list):
    def wrapped(self, *a, **kw):
        init(self, *a, **kw)
        made.append(self)
    return wrapped
