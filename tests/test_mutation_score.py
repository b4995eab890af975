"""``engine.score`` against an independent computation on a tiny random Gemma 2 (fast: no real model).

Expected values come from plain torch in the test: the NLL from one unpadded forward per row and
``log_softmax``; the concept from a plain forward hook on the decoder layer and JumpReLU on the SAE
tensors; the degeneration figures from their definitions written out here. These tests exist for the
mutation check of ``engine/score.py`` (issue 25 item 4) and are fast enough to run per mutant. Which device
each tensor is on is checked with ``meta`` standing in for a second device (the model or the SAE there).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from saejobs.engine import score as sc
from saejobs.engine.models import LoadedModel, byte_tokenizer

LAYER = 1
HOOK = f"blocks.{LAYER}.hook_resid_post"
EOS, PAD, BOS = 1, 0, 2
FIELDS = {"concept", "concept_tokens", "concept_mean", "concept_fire_rate", "nll", "nll_novel", "perplexity", "distinct_1", "distinct_2",
          "longest_repeat", "stopped_at_eos", "completion_tokens"}


def tiny_lm(seed: int = 0, scale: float = 1.0, softcap: float | None = None, window: int = 64) -> LoadedModel:
    """A 2-layer random Gemma 2 with the byte tokenizer; no logit soft-capping unless ``softcap``, so
    ``scale`` (on the tied embedding) can make the logits, and so the NLL, as large as a test needs."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    tok = byte_tokenizer()
    cfg = Gemma2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=128,
                       sliding_window=window, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD,
                       final_logit_softcapping=softcap, attn_implementation="eager")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Gemma2ForCausalLM(cfg)
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(scale)
    model.eval()
    return LoadedModel(model, tok, "tiny", "tiny", "random", torch.float32, "cpu")


@pytest.fixture(scope="module")
def lm() -> LoadedModel:
    return tiny_lm()


def make_sae(d_model: int, n: int = 7, seed: int = 1) -> SimpleNamespace:
    """The three tensors ``score`` reads; thresholds at the median pre-activation scale so that some
    tokens fire and some do not."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn((d_model, n), generator=g)
    b = torch.randn(n, generator=g) * 0.1
    thr = torch.rand(n, generator=g) * 2.0
    W[:, -1] *= 0.02  # the last feature fires weakly: activations between its threshold and 1
    b[-1], thr[-1] = 0.0, 0.001
    return SimpleNamespace(W_enc=W, b_enc=b, threshold_floor=thr)


def reference(lm, sae, prompt: list[int], gen: list[int], feats: list[int]) -> dict:
    """One row alone: unpadded forward, log_softmax NLL over the completion (EOS included), the layer's
    output through a plain forward hook and JumpReLU (strictly above the threshold) over the completion
    without its final EOS."""
    seen = []
    handle = lm.model.model.layers[LAYER].register_forward_hook(lambda m, i, o: seen.append(o[0] if isinstance(o, tuple) else o))
    try:
        with torch.no_grad():
            logits = lm.model(input_ids=torch.tensor([prompt + gen])).logits[0].double()
    finally:
        handle.remove()
    lp = torch.log_softmax(logits, -1)
    P = len(prompt)
    nll = -sum(float(lp[P - 1 + i, t]) for i, t in enumerate(gen)) / len(gen) if gen else None
    # novel: the first token, and each whose bigram with the one before has not occurred before it
    novel = [i for i in range(len(gen)) if i == 0 or all(gen[j - 1:j + 1] != gen[i - 1:i + 1] for j in range(1, i))]
    nll_novel = -sum(float(lp[P - 1 + i, gen[i]]) for i in novel) / len(novel) if novel else None
    stopped = bool(gen) and gen[-1] == EOS
    body = gen[:-1] if stopped else gen
    x = seen[0][0, P:P + len(body)].double()
    concept, tokens = {}, {}
    for f in feats:
        pre = x @ sae.W_enc[:, f].double() + float(sae.b_enc[f])
        act = torch.where(pre > float(sae.threshold_floor[f]), pre, torch.zeros_like(pre))
        n = len(body)
        concept[str(f)] = {"mean": float(act.sum()) / n if n else 0.0,
                           "fire_rate": float((act > 0).sum()) / n if n else 0.0}
        tokens[str(f)] = act.tolist()
    return {"nll": nll, "nll_novel": nll_novel, "concept": concept, "tokens": tokens, "n_text": len(body), "stopped": stopped, "body": body,
            "max_act": {str(f): float((x @ sae.W_enc[:, f].double() + float(sae.b_enc[f])).max()) if len(body) else 0.0
                        for f in feats}}


def close(a, b, tol=1e-4):
    return a is None and b is None or a is not None and b is not None and math.isclose(a, b, rel_tol=tol, abs_tol=tol)


def check(got: dict, want: dict) -> None:
    assert set(got) == FIELDS
    assert close(got["nll"], want["nll"]), (got["nll"], want["nll"])
    assert close(got["nll_novel"], want["nll_novel"]), (got["nll_novel"], want["nll_novel"])
    assert close(got["perplexity"], None if want["nll"] is None else math.exp(want["nll"]), 1e-3)
    assert got["completion_tokens"] == want["n_text"]
    assert got["stopped_at_eos"] is want["stopped"]
    d1, d2, longest = ref_repetition(want["body"])
    assert (got["distinct_1"], got["distinct_2"], got["longest_repeat"]) == (d1, d2, longest)
    assert set(got["concept"]) == set(want["concept"])
    for f, c in want["concept"].items():
        assert close(got["concept"][f]["mean"], c["mean"]), (f, got["concept"][f], c)
        assert close(got["concept"][f]["fire_rate"], c["fire_rate"]), (f, got["concept"][f], c)
        acts = got["concept_tokens"][f]  # one per completion token (EOS excluded), what `serve` highlights
        assert len(acts) == len(want["tokens"][f]) and all(close(a, b, 1e-3) for a, b in zip(acts, want["tokens"][f]))
    assert set(got["concept_tokens"]) == set(want["concept"])
    means = [c["mean"] for c in want["concept"].values()]
    rates = [c["fire_rate"] for c in want["concept"].values()]
    assert close(got["concept_mean"], sum(means) / len(means) if means else None)
    assert close(got["concept_fire_rate"], sum(rates) / len(rates) if rates else None)


# Rows of different prompt and completion lengths, some ending at EOS, with overlapping feature sets,
# so that left-padding, the completion mask, the EOS exclusion and the feature membership all matter.
ITEMS = [
    ([BOS, 40, 41, 42, 43, 44, 45], [50, 51, 52, 53, EOS], [0, 2]),
    ([BOS, 60], [61, 62, 63, 64, 65, 66, 67], [2, 5]),
    ([BOS, 70, 71, 72], [73, EOS], [1]),
    ([BOS, 80, 81, 82, 83], [84, 85, 86], [0, 3, 5, 6]),
    ([BOS, 90, 91], [92, 93, 92], [4, 6]),
]


def test_scores_of_a_padded_batch_equal_each_row_alone(lm):
    sae = make_sae(lm.config.hidden_size)
    items = [sc.Item(p, g, f) for p, g, f in ITEMS]
    got = sc.score(lm, sae, HOOK, items)
    assert len(got) == len(ITEMS)
    for row, (p, g, f) in zip(got, ITEMS):
        check(row, reference(lm, sae, p, g, f))
    # and the reference itself is not trivial: features fire on some tokens and not on others, and the
    # weak feature fires with activations below 1
    rates = [c["fire_rate"] for row in got for c in row["concept"].values()]
    assert any(0 < r < 1 for r in rates)
    weak = [reference(lm, sae, p, g, f) for p, g, f in ITEMS if 6 in f]
    assert all(w["concept"]["6"]["fire_rate"] > 0 and w["max_act"]["6"] < 1 for w in weak)


def test_concept_is_read_in_the_sae_dtype(lm):
    """An SAE kept in another dtype than the model (float64 here) reads the activation cast to its own."""
    sae = make_sae(lm.config.hidden_size)
    wide = SimpleNamespace(W_enc=sae.W_enc.double(), b_enc=sae.b_enc.double(), threshold_floor=sae.threshold_floor.double())
    p, g, f = ITEMS[0]
    check(sc.score(lm, wide, HOOK, [sc.Item(p, g, f)])[0], reference(lm, sae, p, g, f))


def test_field_names_are_the_stored_ones():
    assert {str(s) for s in sc.Score} == FIELDS
    assert sc.Score.CONCEPT == "concept" and sc.Score.NLL == "nll" and sc.Score.PERPLEXITY == "perplexity"
    assert sc.Score.CONCEPT_MEAN == "concept_mean" and sc.Score.CONCEPT_FIRE_RATE == "concept_fire_rate"
    assert sc.Score.DISTINCT_1 == "distinct_1" and sc.Score.DISTINCT_2 == "distinct_2"
    assert sc.Score.LONGEST_REPEAT == "longest_repeat" and sc.Score.STOPPED_AT_EOS == "stopped_at_eos"
    assert sc.Score.COMPLETION_TOKENS == "completion_tokens"


def test_threshold_itself_does_not_fire_and_zero_activation_is_not_a_fire(lm):
    """JumpReLU fires strictly above the threshold: a feature whose pre-activation equals its threshold
    on every token (zero encoder column, bias = threshold) has activation 0 and fire rate 0; a feature
    with threshold 0 and bias 0 on a zero column is never counted as firing either."""
    d = lm.config.hidden_size
    W = torch.zeros((d, 3))
    W[:, 2] = torch.randn(d, generator=torch.Generator().manual_seed(5))
    sae = SimpleNamespace(W_enc=W, b_enc=torch.tensor([0.75, 0.0, 0.0]), threshold_floor=torch.tensor([0.75, 0.0, 0.0]))
    p, g = [BOS, 40, 41], [42, 43, 44, 45]
    row = sc.score(lm, sae, HOOK, [sc.Item(p, g, [0, 1, 2])])[0]
    assert row["concept"]["0"] == {"mean": 0.0, "fire_rate": 0.0}
    assert row["concept"]["1"] == {"mean": 0.0, "fire_rate": 0.0}
    check(row, reference(lm, sae, p, g, [0, 1, 2]))
    assert 0 < row["concept"]["2"]["fire_rate"] < 1


def test_only_eos_and_empty_completions(lm):
    """A completion that is only EOS: NLL of that EOS, no concept tokens (mean and fire rate 0). No
    completion at all (in a group with one): NLL and perplexity None, degeneration of nothing."""
    sae = make_sae(lm.config.hidden_size)
    p = [BOS, 40, 41, 42]
    rows = sc.score(lm, sae, HOOK, [sc.Item(p, [EOS], [1, 4]), sc.Item(p, [43, 44], [4])])
    check(rows[0], reference(lm, sae, p, [EOS], [1, 4]))
    assert rows[0]["concept"] == {"1": {"mean": 0.0, "fire_rate": 0.0}, "4": {"mean": 0.0, "fire_rate": 0.0}}
    assert rows[0]["completion_tokens"] == 0 and rows[0]["stopped_at_eos"] is True
    assert rows[0]["distinct_1"] == 1.0 and rows[0]["longest_repeat"] == 0
    check(rows[1], reference(lm, sae, p, [43, 44], [4]))
    empty = sc.score(lm, sae, HOOK, [sc.Item(p, [], []), sc.Item(p, [43], [])])[0]  # beside a row that has one
    assert empty["nll"] is None and empty["perplexity"] is None and empty["concept"] == {}
    assert empty["concept_mean"] is None and empty["concept_fire_rate"] is None
    assert empty["stopped_at_eos"] is False and empty["completion_tokens"] == 0
    alone = sc.score(lm, sae, HOOK, [sc.Item(p, [], [1])])[0]  # a group with no completion token at all
    assert alone["nll"] is None and alone["nll_novel"] is None and alone["concept"] == {"1": {"mean": 0.0, "fire_rate": 0.0}}
    assert sc.score(lm, sae, HOOK, []) == []


def test_no_features_scores_fluency_and_degeneration(lm):
    sae = make_sae(lm.config.hidden_size)
    p, g = [BOS, 40, 41], [42, 42, 43, EOS]
    row = sc.score(lm, sae, HOOK, [sc.Item(p, g, [])])[0]
    check(row, reference(lm, sae, p, g, []))
    assert row["concept"] == {} and row["concept_mean"] is None
    assert row["distinct_1"] == 2 / 3 and row["longest_repeat"] == 1


def test_tokenizer_without_eos_or_pad(lm):
    """No EOS: nothing is a stop, the last token counts for concept and degeneration; no pad token:
    padding with id 0 (masked out) changes nothing."""
    plain = dataclasses.replace(lm, tokenizer=SimpleNamespace(eos_token_id=None, pad_token_id=None))
    sae = make_sae(lm.config.hidden_size)
    items = [([BOS, 40, 41, 42, 43], [50, EOS], [0]), ([BOS, 60], [61, 62, EOS, 63], [0])]
    rows = sc.score(plain, sae, HOOK, [sc.Item(*i) for i in items])
    for row, (p, g, f) in zip(rows, items):
        want = reference(lm, sae, p, g, f)
        body = g  # without an EOS id nothing is excluded
        assert row["stopped_at_eos"] is False and row["completion_tokens"] == len(body)
        assert close(row["nll"], want["nll"])
        assert row["distinct_1"] == len(set(body)) / len(body)
    # the concept over every generated token (EOS id included) equals the reference's over a non-EOS row
    p, g = items[0][0], items[0][1]
    seen = []
    h = lm.model.model.layers[LAYER].register_forward_hook(lambda m, i, o: seen.append(o))
    with torch.no_grad():
        lm.model(input_ids=torch.tensor([p + g]))
    h.remove()
    x = seen[0][0, len(p):].double()
    pre = x @ sae.W_enc[:, 0].double() + float(sae.b_enc[0])
    act = torch.where(pre > float(sae.threshold_floor[0]), pre, torch.zeros_like(pre))
    assert close(rows[0]["concept"]["0"]["mean"], float(act.mean()))


def test_perplexity_is_capped_at_exp_700(lm):
    """An NLL above 700 (a model with enormous logits, the least likely tokens) gives exp(700), not an
    overflow."""
    loud = tiny_lm(scale=1e4)
    p = [BOS, 40, 41]
    with torch.no_grad():
        logits = loud.model(input_ids=torch.tensor([p])).logits[0, -1]
    g = [int(logits.argmin())]
    sae = make_sae(loud.config.hidden_size)
    want = reference(loud, sae, p, g, [])
    assert want["nll"] > 700
    row = sc.score(loud, sae, HOOK, [sc.Item(p, g, [])])[0]
    assert close(row["nll"], want["nll"]) and row["perplexity"] == math.exp(700.0)


def row_bytes(cfg, width: int) -> int:
    """One row's forward pass over ``width`` tokens as the README's Scores section sizes it: per token the
    residual stream and its copies (8 d), the MLP's three intermediates (3 ff), each head's attention row
    (2 heads × width), in float32."""
    return width * (8 * cfg.hidden_size + 3 * cfg.intermediate_size + 2 * cfg.num_attention_heads * width) * 4


def test_groups_by_memory_in_order_with_progress(lm, monkeypatch):
    """With a budget that holds two rows, five items are scored in groups of 2, 2, 1, in order, with a
    progress call after each group; each equals its row alone."""
    width = max(len(p) + len(g) for p, g, _ in ITEMS)
    monkeypatch.setattr(sc, "CPU_GROUP_BYTES", 3 * row_bytes(lm.config, width) - 1)
    assert sc._group_rows(lm, width) == 2
    sae = make_sae(lm.config.hidden_size)
    items = ITEMS
    calls = []
    got = sc.score(lm, sae, HOOK, [sc.Item(*i) for i in items], on_group=calls.append)
    assert calls == [2, 4, 5]
    for row, (p, g, f) in zip(got, items):
        check(row, reference(lm, sae, p, g, f))


def config(d=640, ff=2048, heads=4) -> SimpleNamespace:
    return SimpleNamespace(hidden_size=d, intermediate_size=ff, num_attention_heads=heads)


def test_group_rows_from_memory():
    """Rows whose forward pass fits 512 MiB on a CPU (Gemma 3 270M's shape: 38 tokens, 305 rows; a
    chat-length 332, 29); at least one row."""
    cpu = SimpleNamespace(device="cpu", config=config())
    assert sc._group_rows(cpu, 38) == (512 * 2**20) // (38 * (8 * 640 + 3 * 2048 + 2 * 4 * 38) * 4) == 305
    assert sc._group_rows(cpu, 332) == (512 * 2**20) // (332 * (8 * 640 + 3 * 2048 + 2 * 4 * 332) * 4) == 29
    huge = SimpleNamespace(device="cpu", config=config(d=10**9))
    assert sc._group_rows(huge, 10) == 1


def test_group_rows_never_round_up_past_the_budget(monkeypatch):
    """Integer floor division: a budget one byte short of three rows gives two, even where a float quotient
    would round up to 3.0 (sizes past 2**53)."""
    lm = SimpleNamespace(device="cpu", config=config(d=2**50, ff=0, heads=0))
    per_row = row_bytes(lm.config, 1)
    monkeypatch.setattr(sc, "CPU_GROUP_BYTES", 3 * per_row - 1)
    assert float(3 * per_row - 1) / per_row == 3.0  # what a float division would make of it
    assert sc._group_rows(lm, 1) == 2


def test_group_rows_and_vocabulary_slices_on_a_gpu_take_a_quarter_of_free_memory(monkeypatch):
    free = 64 * 2**30
    asked = []

    def mem_get_info(device):
        asked.append(torch.device(device))
        return free, 80 * 2**30
    monkeypatch.setattr(torch.cuda, "mem_get_info", mem_get_info)
    gemma2 = config(d=2304, ff=9216, heads=8)
    gpu = SimpleNamespace(device="cuda:1", config=gemma2)
    assert sc._group_rows(gpu, 332) == int(free / 4 // row_bytes(gemma2, 332))
    # 1,024 rows of 32 tokens: logits and two temporaries of 32,768 positions in float32
    assert sc._vocab_slice(torch.device("cuda:1"), 32768, 256000) == int(free / 4 // (32768 * 4 * 3)) // 256 * 256 == 43520
    assert asked == [torch.device("cuda:1")] * 2
    free = 10
    assert sc._group_rows(gpu, 31) == 1
    assert sc._vocab_slice(torch.device("cuda:1"), 32768, 256000) == sc.MIN_SLICE


def test_vocabulary_slices_on_a_cpu_are_cache_sized_and_aligned():
    """4 MiB for a slice's logits and two temporaries, in whole multiples of 256 words (an unaligned
    width ran the product 30-40% slower): 34,816 words for 10 positions; the whole vocabulary when it fits;
    never under MIN_SLICE words."""
    cpu = torch.device("cpu")
    assert sc._vocab_slice(cpu, 10, 262144) == (4 << 20) // (10 * 12) // 256 * 256 == 34816
    assert sc._vocab_slice(cpu, 1, 262144) == 262144
    assert sc._vocab_slice(cpu, 1000, 262144) == sc.MIN_SLICE == 1024
    assert sc._vocab_slice(cpu, 1, 10**9) == 349440  # one position: 349,525 words fit, 349,440 aligned
    assert all(sc._vocab_slice(cpu, n, 262144) % 256 == 0 for n in range(1, 5000, 7))


def test_prefix_slots_give_each_distinct_prefix_one_position():
    """The tree of the group's texts, written out: rows 0 and 1 share their prompt and first two tokens,
    row 2 repeats row 0's completion after another prompt, row 3 has row 0's prompt and a completion that
    differs at once (its first position is still row 0's)."""
    P, Q = (BOS, 40, 41), (BOS, 50)
    items = [sc.Item(P, [60, 61, 62], []), sc.Item(P, [60, 61, 70, 71], []), sc.Item(Q, [60, 61, 62], []), sc.Item(P, [80], [])]
    L = 4
    offsets = [1, 0, 1, 3]  # right-aligned in the window, as the one-pass layout places them
    slot, first = sc._prefix_slots(items, offsets, L)
    want = [-1, 0, 1, 2,  # P | ; P 60 | ; P 60 61 |
            0, 1, 2, 3,  # the same three, then P 60 61 70 |
            -1, 4, 5, 6,  # Q | ; Q 60 | ; Q 60 61 |
            -1, -1, -1, 0]  # P | again
    assert slot == want
    assert first == [1, 2, 3, 7, 9, 10, 11]
    assert [slot[i] for i in first] == list(range(7))


def test_shared_prefixes_run_the_head_once_and_equal_each_row_alone(lm, monkeypatch):
    """Rows that share a prefix: the head sees only the distinct prefixes' positions, and each row's NLL
    still equals an unpadded forward pass and log_softmax of that row alone. The vocabulary (262 bytes here)
    is cut into slices of 7 words, so targets fall in many slices and the logsumexp is combined across them."""
    P = [BOS, 40, 41, 42]
    items = [(P, [60, 61, 62, 63], [0]), (P, [60, 61, 70], [1]), (P, [60, 90, 91, EOS], [0, 1]),
             ([BOS, 50], [60, 61, 62, 63], [2])]
    monkeypatch.setattr(sc, "MIN_SLICE", 7)
    monkeypatch.setattr(sc, "CPU_SLICE_BYTES", 1)
    head = lm.model.get_output_embeddings()
    storage = head.weight.untyped_storage().data_ptr()
    seen = []

    class HeadMatmuls(TorchDispatchMode):  # every matrix product with (a slice of) the head's weight
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func in (torch.ops.aten.mm.default, torch.ops.aten.mm.out, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default):
                x, w = args[-2:]
                if w.untyped_storage().data_ptr() == storage:
                    seen.append((x.shape, w.shape[-1]))
            return func(*args, **(kwargs or {}))
    sae = make_sae(lm.config.hidden_size)
    with HeadMatmuls():
        got = sc.score(lm, sae, HOOK, [sc.Item(*i) for i in items])
    for row, (p, g, f) in zip(got, items):
        check(row, reference(lm, sae, p, g, f))
    # distinct prefixes: row 0's four (P|, P 60|, P 60 61|, P 60 61 62|); none of row 1's (its last, P 60 61|,
    # predicts 70 but is row 0's third); row 2's P 60 90| and P 60 90 91|; the other prompt's four: 10 of 15
    V, d = head.weight.shape
    whole = [x for x, w in seen if w == V]  # the model's own call of its head: handed no position
    assert len(whole) == 1 and whole[0].numel() == 0
    slices = [(x, w) for x, w in seen if w < V]
    assert {x for x, _ in slices} == {torch.Size([10, d])}
    assert sum(w for _, w in slices) == V and len(slices) == -(-V // 7)


def test_a_head_with_a_bias_adds_it_in_every_slice(monkeypatch):
    """An output projection with a bias (Gemma's has none; a head is a plain ``nn.Linear``): each slice adds
    its part of the bias, and the NLL equals the model's own forward pass."""
    biased = tiny_lm(seed=3)
    old = biased.model.lm_head
    head = torch.nn.Linear(old.in_features, old.out_features, bias=True)
    with torch.no_grad():
        head.weight.copy_(old.weight)
        head.bias.copy_(torch.randn(old.out_features, generator=torch.Generator().manual_seed(0)) * 3)
    biased.model.lm_head = head
    checked_in_slices(biased, monkeypatch, 50)


def checked_in_slices(lm, monkeypatch, words: int) -> list[dict]:
    """ITEMS scored with the vocabulary cut into slices of ``words``, each row checked against the reference."""
    monkeypatch.setattr(sc, "MIN_SLICE", words)
    monkeypatch.setattr(sc, "CPU_SLICE_BYTES", 1)
    sae = make_sae(lm.config.hidden_size)
    rows = sc.score(lm, sae, HOOK, [sc.Item(p, g, f) for p, g, f in ITEMS])
    for row, (p, g, f) in zip(rows, ITEMS):
        check(row, reference(lm, sae, p, g, f))
    return rows


def test_a_bfloat16_model_is_scored_in_its_own_dtype():
    """A bf16 model (as on a GPU): the head's slices, the masks of the prompts' pass and the recorded stream are
    in bf16 and the NLL is taken in float32; each row within bf16's rounding of the model's own bf16 pass."""
    half = tiny_lm(seed=4)
    half = dataclasses.replace(half, model=half.model.to(torch.bfloat16), dtype=torch.bfloat16)
    sae = make_sae(half.config.hidden_size)
    cap = recorded(half, CHUNK)
    assert cap.stream.dtype == torch.bfloat16
    got = sc.score(half, sae, HOOK, [sc.Item(p, g, f) for p, g, f in CHUNK], streams=[(cap, b) for b in range(len(CHUNK))])
    for row, (p, g, f) in zip(got, CHUNK):
        want = reference(half, sae, p, g, f)
        assert row["nll"] == pytest.approx(want["nll"], rel=2e-2), (row["nll"], want["nll"])


def test_soft_capped_logits_as_the_model_caps_them(monkeypatch):
    """Gemma 2's final soft-capping (tanh at 30, here at 3 so that it bends every logit): the NLL equals
    the model's own forward pass, which applies it, over several vocabulary slices."""
    capped = tiny_lm(scale=20.0, softcap=3.0)
    rows = checked_in_slices(capped, monkeypatch, 64)
    # the cap matters here: the same model without it scores the row otherwise
    capped.model.config.final_logit_softcapping = None
    sae = make_sae(capped.config.hidden_size)
    assert sc.score(capped, sae, HOOK, [sc.Item(*ITEMS[0])])[0]["nll"] != pytest.approx(rows[0]["nll"], rel=1e-2)


def test_concept_features_of_a_row():
    """A row's own SAE features (those with an index); a DEFAULT row (no features) gets the sweep's; a row
    steering only non-SAE vectors has none."""
    assert sc.concept_features([{"index": "3", "strength": 2.0}, {"index": 7}], [1, 2]) == [3, 7]
    assert sc.concept_features([], ["4", 5]) == [4, 5]
    assert sc.concept_features([{"vector": [0.1]}], [4, 5]) == []
    assert sc.concept_features([{"vector": [0.1]}, {"index": 9}], [4]) == [9]


def test_concepts_of_a_multi_sae_row_split_by_sae():
    """A steer naming several SAEs: the sweep's own SAE (``sae_id``, or any feature naming none) gives the
    row's concept features; every other SAE's features are (SAE id, index) pairs, once each, in order."""
    feats = [{"index": "3"}, {"sae": "a", "index": 5}, {"sae": "main", "index": 4}, {"sae": "b", "index": "6"},
             {"sae": "a", "index": 5}, {"vector": [0.1], "sae": "c"}, {"index": 3}]
    assert sc.concept_features(feats, [9], "main") == [3, 4]
    assert sc.other_concepts(feats, "main") == [("a", 5), ("b", 6)]
    assert sc.concept_features(feats, [9], None) == [3]  # no sweep SAE id: only features naming none
    assert sc.other_concepts(feats, None) == [("a", 5), ("main", 4), ("b", 6)]
    assert sc.other_concepts([{"index": 2}], "main") == []


def test_novel_tokens_leave_out_repeated_bigrams():
    assert sc.novel_tokens([5, 6, 5, 6, 7, 5, 6, 6]) == [True, True, True, False, True, True, False, True]
    assert sc.novel_tokens([4]) == [True] and sc.novel_tokens([]) == []
    assert sc.novel_tokens([8, 8, 8]) == [True, True, False]  # (8, 8) twice
    assert sc.novel_tokens([1, 2, 3, 1, 3]) == [True] * 5  # 1 and 3 recur, no bigram does


def test_rows_with_one_completion_share_a_pass_and_keep_their_own_concepts(lm, monkeypatch):
    """Three rows with one prompt and completion and different features (one also reading another SAE) and a
    fourth apart: two distinct passes; each row's scores equal that row scored alone against the reference,
    with only its own concept keys; progress counts rows."""
    sae = make_sae(lm.config.hidden_size)
    other = make_sae(lm.config.hidden_size, seed=5)
    p, g = [BOS, 40, 41, 42], [50, 51, 52, 50, 51, EOS]
    items = [sc.Item(p, g, [0, 2]), sc.Item(p, g, [5]), sc.Item(p, g, [2], [("x", 3)]), sc.Item([BOS, 60], [61, 62], [1])]
    passes, calls = [], []
    real = sc._score_group
    monkeypatch.setattr(sc, "_score_group", lambda lm_, sae_, hook_, group, *a, **kw: passes.append(group)
                        or real(lm_, sae_, hook_, group, *a, **kw))
    got = sc.score(lm, sae, HOOK, items, on_group=calls.append, others={"x": (other, HOOK)})
    assert [len(g_) for g_ in passes] == [2] and calls == [4]
    assert sorted(passes[0][0].features) == [0, 2, 5] and list(passes[0][0].others) == [("x", 3)]
    for row, it in zip(got, items):
        want = reference(lm, sae, it.prompt_ids, it.token_ids, list(it.features))
        mine = {str(f) for f in it.features} | {f"x:{f}" for _, f in it.others}
        assert set(row["concept"]) == set(row["concept_tokens"]) == mine
        for f, c in want["concept"].items():
            assert close(row["concept"][f]["mean"], c["mean"]) and close(row["concept"][f]["fire_rate"], c["fire_rate"])
        if it.others:
            ref = reference(lm, other, it.prompt_ids, it.token_ids, [3])["concept"]["3"]
            assert close(row["concept"]["x:3"]["mean"], ref["mean"])
            means = [want["concept"]["2"]["mean"], ref["mean"]]
            assert close(row["concept_mean"], sum(means) / 2)
            assert close(row["concept_fire_rate"], (want["concept"]["2"]["fire_rate"] + ref["fire_rate"]) / 2)
        else:
            check(row, want)
    assert got[0] is not got[1] and got[0]["concept"] is not got[1]["concept"]


def test_logits_far_apart_in_scale_keep_each_positions_own_maximum(monkeypatch):
    """A model with enormous logits (the tied embedding scaled by 1e4): positions whose largest logits differ
    by thousands, in one slice, each keep their own NLL (a maximum taken over the whole slice would underflow
    every other position's sum to zero)."""
    loud = tiny_lm(scale=1e4)
    sae = make_sae(loud.config.hidden_size)
    for p, g, f in ITEMS[:3]:
        row = sc.score(loud, sae, HOOK, [sc.Item(p, g, f)])[0]
        want = reference(loud, sae, p, g, f)
        assert math.isfinite(row["nll"]) and close(row["nll"], want["nll"]), (row["nll"], want["nll"])


def test_score_outputs_scores_each_output_with_its_features(lm):
    sae = make_sae(lm.config.hidden_size)
    prompts = {"a": [BOS, 40, 41, 42], "b": [BOS, 60]}
    runner = SimpleNamespace(lm=lm, sae=sae, hook_name=HOOK, ids=lambda c: prompts[c.prompt])
    outs = [(SimpleNamespace(prompt="a", features=[{"index": 3}]), SimpleNamespace(token_ids=[50, 51, EOS]), "t"),
            (SimpleNamespace(prompt="b", features=[]), SimpleNamespace(token_ids=[61, 62]), "u")]
    got = sc.score_outputs(runner, outs, [1, 4])
    check(got[0], reference(lm, sae, prompts["a"], [50, 51, EOS], [3]))
    check(got[1], reference(lm, sae, prompts["b"], [61, 62], [1, 4]))


# A chunk as generation lays it out: three prompts, two of them shared by several rows, completions of different
# lengths, one that stopped at EOS and one row whose prompt is another's with a token more.
CHUNK = [
    ([BOS, 40, 41, 42], [50, 51, 52, 53, 54], [0, 2]),
    ([BOS, 40, 41, 42], [50, 51, 60, EOS], [1]),
    ([BOS, 40, 41, 42], [70, 71, 72, 73, 74], [3, 6]),
    ([BOS, 60], [61, 62, 63], [2]),
    ([BOS, 60], [61, 62, 63, 64, 65], [4]),
    ([BOS, 40, 41, 42, 43], [50, 51], [5]),
]


def recorded(lm, chunk, layer: int = LAYER, seed: int = 0, post: bool = False, unsteered=()):
    """A ``ResidualCapture`` of ``chunk`` filled without saejobs' generation: each row's input to decoder layer
    ``layer`` (``post``: its output) from one unpadded forward pass of that row alone (a plain hook), written
    where generation writes it (prompts right-aligned in ``width`` columns, completions from column ``width``);
    every other column (left padding, a final EOS, the columns after a short completion) holds noise, which
    scoring must never read. ``unsteered`` rows get their log-probabilities as generation keeps them: each
    token's ``log_softmax`` from that pass, NaN after the row's last token."""
    from saejobs.engine.residual import ResidualCapture

    width, n = max(len(p) for p, _, _ in chunk), max(len(g) for _, g, _ in chunk)
    point = f"blocks.{layer}.hook_resid_{'post' if post else 'pre'}"
    cap = ResidualCapture(lm, point, len(chunk), width, n, "cpu", next(lm.model.parameters()).dtype, unsteered)
    cap.stream.copy_(torch.randn(cap.stream.shape, generator=torch.Generator().manual_seed(seed)) * 50)
    cap.logp.fill_(float("nan"))
    for b, (p, g, _) in enumerate(chunk):
        seen = []
        module = lm.model.model.layers[layer]
        h = (module.register_forward_hook(lambda _m, _a, out: seen.append((out[0] if isinstance(out, tuple) else out)[0]))
             if post else module.register_forward_pre_hook(
                 lambda _m, args, kw: seen.append((args[0] if args else kw["hidden_states"])[0]), with_kwargs=True))
        try:
            with torch.no_grad():
                logits = lm.model(input_ids=torch.tensor([p + g])).logits[0]
        finally:
            h.remove()
        if cap.known(b):
            lp = torch.log_softmax(logits.float(), dim=-1)[len(p) - 1:len(p) - 1 + len(g)]
            cap.logp[cap.unsteered[b], :len(g)] = lp.gather(1, torch.tensor(g)[:, None])[:, 0]
        fed = len(g) - (g[-1:] == [EOS])  # generation never feeds the EOS that ends a row: noise there too
        cap.stream[b, width - len(p):width + fed] = seen[0][:len(p) + fed]
    return cap


def test_scores_from_a_recorded_stream_equal_each_row_alone(lm):
    """Rows scored from a recorded stream (the layers below it skipped, generation's layout, noise wherever a
    row has no token; rows sharing prompts: the prompts run once) equal the reference: one unpadded pass of
    the whole model over the row alone."""
    sae = make_sae(lm.config.hidden_size)
    cap = recorded(lm, CHUNK)
    ran = []
    hooks = [layer.register_forward_pre_hook(lambda *_a, _i=i: ran.append(_i)) for i, layer in enumerate(lm.model.model.layers)]
    runner = SimpleNamespace(lm=lm, sae=sae, hook_name=HOOK, ids=lambda c: c.prompt)
    outs = [(SimpleNamespace(prompt=p, features=[{"index": f} for f in fs]), SimpleNamespace(token_ids=g, stream=(cap, b)), "")
            for b, (p, g, fs) in enumerate(CHUNK)]
    try:
        got = sc.score_outputs(runner, outs, [0])
    finally:
        for h in hooks:
            h.remove()
    # layer 0 never ran (the recording stood in for it); layer 1 twice: the 3 distinct prompts' columns once,
    # then the 6 rows' completion columns on the prompts' cached keys and values
    assert ran == [LAYER, LAYER]
    for row, (p, g, f) in zip(got, CHUNK):
        check(row, reference(lm, sae, p, g, f))
    # without the streams (one of the rows not recorded), the same scores come from one whole pass
    outs[2] = (outs[2][0], SimpleNamespace(token_ids=CHUNK[2][1]), "")
    for row, (p, g, f) in zip(sc.score_outputs(runner, outs, [0]), CHUNK):
        check(row, reference(lm, sae, p, g, f))


def test_scores_from_a_stream_recorded_at_the_hooks_resid_post_run_no_layer_below_it(lm):
    """The stream recorded at the concept hook's ``resid_post`` (layer 1's output, the tiny model's last layer):
    scoring runs no decoder layer at all (the concepts read from the record, the NLL from the final norm and the
    head on it), equal to the reference of the whole model."""
    sae = make_sae(lm.config.hidden_size)
    cap = recorded(lm, CHUNK, post=True)
    assert cap.layer == LAYER + 1
    ran = []
    hooks = [layer.register_forward_pre_hook(lambda *_a, _i=i: ran.append(_i)) for i, layer in enumerate(lm.model.model.layers)]
    try:
        got = sc.score(lm, sae, HOOK, [sc.Item(p, g, f) for p, g, f in CHUNK], streams=[(cap, b) for b in range(len(CHUNK))])
    finally:
        for h in hooks:
            h.remove()
    assert ran == []
    for row, (p, g, f) in zip(got, CHUNK):
        check(row, reference(lm, sae, p, g, f))


def test_rows_generated_unsteered_are_scored_from_their_generation_alone(lm, monkeypatch):
    """Rows whose capture holds their log-probabilities (generated unsteered), recorded at the concept hook:
    scored without a pass (only the other rows reach the head), equal to the reference. A known row whose
    concepts another SAE reads at another hook, or a record below the concept hook, needs its pass."""
    sae, other = make_sae(lm.config.hidden_size), make_sae(lm.config.hidden_size, seed=9)
    known = [0, 3, 5]
    heads = []
    real = sc._log_probs
    monkeypatch.setattr(sc, "_log_probs", lambda lm_, hidden, *a: heads.append(hidden.shape[0]) or real(lm_, hidden, *a))
    items = [sc.Item(p, g, f) for p, g, f in CHUNK]
    cap = recorded(lm, CHUNK, post=True, unsteered=known)
    got = sc.score(lm, sae, HOOK, items, streams=[(cap, b) for b in range(6)])
    assert heads == [3]  # one pass: the three rows not known
    for row, (p, g, f) in zip(got, CHUNK):
        check(row, reference(lm, sae, p, g, f))
    heads.clear()
    items[3] = replace(items[3], others=[("x", 1)])  # read by another SAE at layer 0's output: below the record
    cap = recorded(lm, CHUNK, post=True, unsteered=known)
    got = sc.score(lm, sae, HOOK, items, others={"x": (other, "blocks.0.hook_resid_post")},
                   streams=[(cap, b) for b in range(6)])
    assert heads == [4]
    assert set(got[3]["concept"]) == {"2", "x:1"}
    heads.clear()
    cap = recorded(lm, CHUNK, unsteered=known)  # layer 1's input: layer 1's output is read in a pass
    plain = [([] if b == 5 else f) for b, (_, _, f) in enumerate(CHUNK)]  # a known row reading no concept needs none
    got = sc.score(lm, sae, HOOK, [sc.Item(p, g, f) for (p, g, _), f in zip(CHUNK, plain)],
                   streams=[(cap, b) for b in range(6)])
    assert heads == [5]
    for row, (p, g, _), f in zip(got, CHUNK, plain):
        check(row, reference(lm, sae, p, g, f))
    assert got[5]["concept"] == {} and got[5]["concept_mean"] is None


def test_rows_longer_than_a_sliding_window_are_scored_in_one_pass():
    """A sliding window (6) shorter than a row (up to 10 columns): the prompts are not run apart (a static cache
    of the row's length would not slide), one pass over generation's layout runs, equal to the reference."""
    short = tiny_lm(window=6)
    sae = make_sae(short.config.hidden_size)
    cap = recorded(short, CHUNK)
    calls = []
    h = short.model.model.layers[LAYER].register_forward_pre_hook(lambda *_a: calls.append(1))
    try:
        got = sc.score(short, sae, HOOK, [sc.Item(p, g, f) for p, g, f in CHUNK], streams=[(cap, b) for b in range(len(CHUNK))])
    finally:
        h.remove()
    assert calls == [1]
    for row, (p, g, f) in zip(got, CHUNK):
        check(row, reference(short, sae, p, g, f))


def test_rows_of_two_captures_are_scored_in_separate_groups(lm, monkeypatch):
    """Streams of two chunks' captures: each group replays one capture's rows, in order, each row equal to the
    reference, progress after each group."""
    sae = make_sae(lm.config.hidden_size)
    a, b = recorded(lm, CHUNK[:3]), recorded(lm, CHUNK[3:], seed=1)
    items = [sc.Item(p, g, f) for p, g, f in CHUNK]
    streams = [(a, 0), (a, 1), (a, 2), (b, 0), (b, 1), (b, 2)]
    groups, calls = [], []
    real = sc._score_group
    monkeypatch.setattr(sc, "_score_group", lambda *args, **kw: groups.append([r for _, r in args[-1]]) or real(*args, **kw))
    got = sc.score(lm, sae, HOOK, items, on_group=calls.append, streams=streams)
    assert groups == [[0, 1, 2], [0, 1, 2]] and calls == [3, 6]
    for row, (p, g, f) in zip(got, CHUNK):
        check(row, reference(lm, sae, p, g, f))
    # a budget of two rows of the captures' width (prompt columns + tokens): groups of 2 and 1 per capture
    width = max(c.width + c.n for c in (a, b))
    monkeypatch.setattr(sc, "CPU_GROUP_BYTES", 3 * row_bytes(lm.config, width) - 1)
    groups.clear(), calls.clear()
    got = sc.score(lm, sae, HOOK, items, on_group=calls.append, streams=streams)
    assert groups == [[0, 1], [2], [0, 1], [2]] and calls == [2, 3, 5, 6]
    for row, (p, g, f) in zip(got, CHUNK):
        check(row, reference(lm, sae, p, g, f))


def test_score_outputs_reads_other_saes_features_with_their_own_sae(lm):
    """A multi-SAE steer's row: its features of the sweep's SAE (``sae_id``) are read by that SAE, those of
    another SAE the runner holds (``runner.saes``) by that one, as "ID:index"; a DEFAULT row reads the sweep's
    features."""
    sae, other = make_sae(lm.config.hidden_size), make_sae(lm.config.hidden_size, seed=9)
    p, g = [BOS, 40, 41, 42], [50, 51, 52, EOS]
    runner = SimpleNamespace(lm=lm, sae=sae, hook_name=HOOK, ids=lambda c: p, saes={"x": (other, HOOK)})
    steer = [{"sae": "main", "index": 2}, {"sae": "x", "index": 4}, {"index": 5}]
    outs = [(SimpleNamespace(features=steer), SimpleNamespace(token_ids=g), ""),
            (SimpleNamespace(features=[]), SimpleNamespace(token_ids=g[:2]), "")]
    got = sc.score_outputs(runner, outs, [1, 3], "main")
    assert set(got[0]["concept"]) == {"2", "5", "x:4"} and set(got[1]["concept"]) == {"1", "3"}
    mine, theirs = reference(lm, sae, p, g, [2, 5]), reference(lm, other, p, g, [4])
    for f in ("2", "5"):
        assert close(got[0]["concept"][f]["mean"], mine["concept"][f]["mean"])
    assert close(got[0]["concept"]["x:4"]["mean"], theirs["concept"]["4"]["mean"])
    assert close(got[0]["concept"]["x:4"]["fire_rate"], theirs["concept"]["4"]["fire_rate"])
    assert got[0]["concept"]["x:4"]["mean"] != pytest.approx(reference(lm, sae, p, g, [4])["concept"]["4"]["mean"])
    check(got[1], reference(lm, sae, p, g[:2], [1, 3]))


def ref_repetition(t: list[int]) -> tuple[float, float, int]:
    """distinct-n by definition and the longest n-gram occurring at least twice by brute force."""
    d1 = len(set(t)) / len(t) if t else 1.0
    bi = [tuple(t[i:i + 2]) for i in range(len(t) - 1)]
    d2 = len(set(bi)) / len(bi) if bi else 1.0
    longest = 0
    for n in range(1, len(t) + 1):
        grams = [tuple(t[i:i + n]) for i in range(len(t) - n + 1)]
        if len(set(grams)) < len(grams):
            longest = n
    return d1, d2, longest


@pytest.mark.parametrize("tokens", [[], [5], [5, 5], [1, 2, 3], [1, 2, 1, 2, 1], [7, 7, 7, 7], [1, 2, 3, 1, 2, 3, 4],
                                    [9, 8, 9, 8, 9, 8, 9], [1, 2, 3, 4, 1, 2, 3, 4], [1, 1, 2, 2],
                                    [5, 6, 5, 7]])
def test_repetition_matches_its_definition(tokens):
    got = sc.repetition(tokens)
    assert set(got) == {"distinct_1", "distinct_2", "longest_repeat"}
    assert (got["distinct_1"], got["distinct_2"], got["longest_repeat"]) == ref_repetition(tokens)


# A meta tensor stands in for another device on a CPU-only run: an operand left on the CPU is refused there
# as it would be on a GPU. Copying out of meta has no data, so those copies are recorded and give zeros.
META = torch.device("meta")


@pytest.fixture
def host_copies(monkeypatch) -> list[tuple]:
    """Each copy of a meta tensor to the CPU (``.to`` or ``.cpu``) as (shape, dtype), answered with zeros."""
    copies = []
    real_to, real_cpu = torch.Tensor.to, torch.Tensor.cpu

    def to(self, *a, **k):
        try:
            return real_to(self, *a, **k)
        except NotImplementedError:  # "Cannot copy out of meta tensor"
            dtype = real_to(torch.empty(0, dtype=self.dtype), *a, **k).dtype
            copies.append((tuple(self.shape), dtype))
            return torch.zeros(self.shape, dtype=dtype)

    def cpu(self, *a, **k):
        if self.device.type != "meta":
            return real_cpu(self, *a, **k)
        copies.append((tuple(self.shape), self.dtype))
        return torch.zeros(self.shape, dtype=self.dtype)
    monkeypatch.setattr(torch.Tensor, "to", to)
    monkeypatch.setattr(torch.Tensor, "cpu", cpu)
    return copies


def on_meta(lm: LoadedModel) -> tuple[LoadedModel, list[dict]]:
    """A copy of ``lm`` on the meta device, its forward passes recording the device of each input."""
    meta = dataclasses.replace(lm, model=copy.deepcopy(lm.model).to(META), device="meta")
    inputs = []
    meta.model.register_forward_pre_hook(
        lambda m, a, k: inputs.append({n: t.device.type for n, t in k.items() if isinstance(t, torch.Tensor)}),
        with_kwargs=True)
    return meta, inputs


def test_a_group_runs_on_the_models_device_and_the_concept_on_the_saes(lm, host_copies):
    """Model on another device (meta) than the SAE (CPU): ids, mask and positions go to the model's device;
    the activation comes to the SAE (one copy, in its dtype); the concept goes back to the model's device
    for the per-row sums, of which one (B, 5 + 2F + L·F) tensor comes to the host (the sums, then each
    completion token's activations)."""
    meta, inputs = on_meta(lm)
    sae = make_sae(lm.config.hidden_size)
    items = [sc.Item(p, g, f) for p, g, f in ITEMS[:3]]  # features 0, 1, 2, 5; longest completion 7
    rows = sc.score(meta, sae, HOOK, items)
    (passed,) = inputs  # one forward pass; every tensor handed to it on the model's device
    assert "input_ids" in passed and set(passed.values()) == {"meta"}
    assert host_copies == [((3, 7, 32), torch.float32), ((3, 5 + 2 * 4 + 7 * 4), torch.float32)]
    assert len(rows) == 3 and rows[0]["completion_tokens"] == 0  # the sums are the stand-in's zeros


def test_an_sae_on_another_device_is_indexed_there(lm, host_copies, monkeypatch):
    """SAE on meta, model on the CPU: the feature index is built on the SAE's device (no copy from the host
    at each use), the activation goes there and the concept comes back to the model's device."""
    made = []
    real = torch.tensor

    def tensor(data, *a, **k):
        t = real(data, *a, **k)
        made.append((data, t.device.type))
        return t
    monkeypatch.setattr(torch, "tensor", tensor)
    base = make_sae(32)
    sae = SimpleNamespace(W_enc=base.W_enc.to(META), b_enc=base.b_enc.to(META),
                          threshold_floor=base.threshold_floor.to(META))
    rows = sc.score(lm, sae, HOOK, [sc.Item([BOS, 40, 41], [42, 43, EOS], [5, 2])])
    assert [d for data, d in made if isinstance(data, list) and data == [2, 5]] == ["meta"]
    assert host_copies == [((1, 3, 2), torch.float32)]  # the concept, back on the model's device
    assert rows[0]["completion_tokens"] == 2
