"""Scores of steered generations on the real Gemma 3 270M with the demo SAE: concept, fluency and
degeneration; stored with their chunk; backfilled by ``saejobs score``; the strength search; the
HTML report rendered in headless Chromium; the notebook API and Parquet."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from saejobs.engine import demo, score, search
from saejobs.engine.request import Settings, plan_configs
from saejobs.engine.sweep import SweepGenerator
from tests.artifacts import ARTIFACTS
from tests.dbfixtures import home  # noqa: F401

PROMPTS = ["Once upon a time", "My favourite thing about", "The weather today is", "In the beginning"]
WORDS = {0: "dog", 1: "ocean", 2: "music", 3: "space"}


def test_repetition_counts_tokens_and_repeats():
    r = score.repetition([5, 6, 7, 5, 6, 7, 5])
    assert r[score.Score.DISTINCT_1] == pytest.approx(3 / 7) and r[score.Score.DISTINCT_2] == pytest.approx(3 / 6)
    assert r[score.Score.LONGEST_REPEAT] == 4  # 5 6 7 5 occurs twice (overlapping)
    assert score.repetition([1, 2, 3]) == {"distinct_1": 1.0, "distinct_2": 1.0, "longest_repeat": 0}
    assert score.repetition([])["distinct_1"] == 1.0


def test_novel_tokens_leave_out_every_token_that_repeats_a_bigram():
    assert score.novel_tokens([]) == []
    assert score.novel_tokens([7]) == [True]
    #                          a  b  a  b  a  c  b  a  b
    assert score.novel_tokens([1, 2, 1, 2, 1, 3, 2, 1, 2]) == [True, True, True, False, False, True, True, False, False]
    assert score.novel_tokens([5, 5, 5, 5]) == [True, True, False, False]


def test_search_rule_takes_the_most_conceptual_strength_within_the_fluency_bound():
    pts = [search.Point(0, 0.0, 1.0, 1), search.Point(100, 5.0, 1.5, 1), search.Point(200, 9.0, 2.2, 1),
           search.Point(300, 9.0, 1.9, 1), search.Point(400, 30.0, 4.0, 1)]
    assert search.choose(pts, B(1.0), R(1.0)).strength == 300  # 400 and 200 break the bound
    assert search.choose(pts, B(1.0), R(1.5)).strength == 200  # a tie goes to the weaker strength
    assert search.choose(pts, B(1.0), R(0.6)).strength == 100
    assert search.choose(pts[1:], B(1.0), R(0.1)) is None
    assert search.coarse_grid(0, 400) == [0, 100, 200, 300, 400]
    assert search.refine([300], 100, 0, 400, {0, 100, 200, 300, 400}) == [250, 350]
    assert search.refine([400], 100, 0, 400, {350, 400}) == []


def test_search_rule_takes_the_best_admissible_point_not_the_first_or_the_last():
    """The README's search, as a curve (in no particular order): 200 has more concept than 300 but breaks
    the bound, 400 too; 100 is the first admissible point, 350 the last: the answer is 300."""
    P = search.Point
    pts = [P(350, 10.0, 2.0, 1), P(100, 0.5, 1.4, 1), P(0, 0.0, 1.22, 1), P(200, 26.3, 3.26, 1), P(300, 24.2, 2.26, 1),
           P(400, 40.0, 5.12, 1), P(250, 99.0, None, 1), P(150, 24.2, 2.5, 1)]
    pick = search.choose(pts, B(1.22), R(1.5))
    assert (pick.strength, pick.concept, pick.nll) == (150, 24.2, 2.5)  # a tie on concept: the weaker strength
    pick = search.choose(pts[:-1], B(1.22), R(1.5))
    assert (pick.strength, pick.concept, pick.nll) == (300, 24.2, 2.26)  # bound 2.72: not 200 (3.26), not 400
    assert search.choose(pts[:-1], B(1.22), R(2.1)).strength == 200  # bound 3.32 admits 200
    assert search.choose(pts[:-1], None, R(0.0)).strength == 400  # no DEFAULT NLL: no bound; an unscored point never
    assert search.choose([P(-300, 24.2, 2.0, 1), P(300, 24.2, 2.0, 1), P(-100, 1.0, 1.0, 1)], B(1.0), R(5)).strength == -300
    assert search.choose([P(-300, 24.2, 2.0, 1), P(200, 24.2, 2.0, 1)], B(1.0), R(5)).strength == 200  # weaker by |s|


B, R = search.Baseline, search.Rule
# The demo's scores (Gemma 3 270M, demo SAE, "Once upon a time", 32 greedy tokens, 2026-12-04): its DEFAULT
# (NLL 1.028, distinct-2 0.97, longest repeat 2), feature 1 at 300 ("the <strong><strong>..." 22 times: NLL
# 0.667, under the DEFAULT's) and at 50 (fluent, about the sea); feature 2 at 100 ("I was a kid." looped:
# NLL 0.718). Their nll_novel, measured in the same run: 4.056 and 1.757 (the DEFAULT's 1.025): the first is
# refused by fluency as well, the second (a fluent sentence, looped) by degeneration alone.
DEMO_DEFAULT = B(1.028, 1.025, 0.97, 2)
DEGENERATE_1 = search.Point(300, 0.0, 0.667, 1, nll_novel=4.056, distinct_2=0.10, longest_repeat=29, fire_rate=0.0)
DEGENERATE_2 = search.Point(100, 0.0, 0.718, 1, nll_novel=1.757, distinct_2=0.23, longest_repeat=25, fire_rate=0.0)
FLUENT_1 = search.Point(50, 16.67, 1.663, 1, nll_novel=1.663, distinct_2=1.0, longest_repeat=1, fire_rate=0.06)


def test_repetition_cannot_make_a_point_admissible():
    rule = R(1.0)
    for p in (DEGENERATE_1, DEGENERATE_2):
        assert not rule.admissible(p, DEMO_DEFAULT) and rule.combined(p, DEMO_DEFAULT) == 0.0
        # the plain-NLL rule this replaces admitted both: their NLL is below the DEFAULT's
        assert p.nll <= DEMO_DEFAULT.nll + 1.0
    assert rule.excess_nll(DEGENERATE_1, DEMO_DEFAULT) > 1.0 >= rule.excess_nll(DEGENERATE_2, DEMO_DEFAULT)
    assert rule.admissible(FLUENT_1, DEMO_DEFAULT)
    assert search.choose([DEGENERATE_1, FLUENT_1], DEMO_DEFAULT, rule) == FLUENT_1
    # each clause alone refuses: the fluency of novel tokens, the longest repeat, distinct-2
    from dataclasses import replace

    ok = replace(FLUENT_1, nll_novel=2.0, longest_repeat=6, distinct_2=0.78)
    assert rule.admissible(ok, DEMO_DEFAULT)  # 2.0 <= 2.025, 6 <= 2 + 4, 0.78 >= 0.97 - 0.2
    assert not rule.admissible(replace(ok, nll_novel=2.03), DEMO_DEFAULT)
    assert not rule.admissible(replace(ok, longest_repeat=7), DEMO_DEFAULT)
    assert not rule.admissible(replace(ok, distinct_2=0.76), DEMO_DEFAULT)
    assert R(1.0, max_repeat_increase=5).admissible(replace(ok, longest_repeat=7), DEMO_DEFAULT)
    # rows scored before nll_novel existed: the plain NLL decides, against the DEFAULT's plain NLL
    old = replace(ok, nll_novel=None, nll=2.0)
    assert rule.admissible(old, DEMO_DEFAULT) and not rule.admissible(replace(old, nll=2.1), DEMO_DEFAULT)


def test_the_combined_score_is_the_harmonic_mean_and_held_out_choice_averages_it():
    rule = R(1.0)
    p = search.Point(50, 16.0, 1.5, 1, nll_novel=1.53, distinct_2=0.9, longest_repeat=3, fire_rate=0.25)
    fluency = math.exp(-(1.53 - 1.025))
    assert rule.combined(p, DEMO_DEFAULT) == pytest.approx(2 * 0.25 * fluency / (0.25 + fluency))
    as_fluent = search.Point(60, 16.0, 1.0, 1, nll_novel=0.9, distinct_2=0.9, longest_repeat=3, fire_rate=0.5)
    assert rule.combined(as_fluent, DEMO_DEFAULT) == pytest.approx(2 * 0.5 / 1.5)  # fluency 1: no excess NLL
    # across two prompts: 60 fires on one and is degenerate on the other (0), 50 is good on both
    bases = {"a": DEMO_DEFAULT, "b": DEMO_DEFAULT}
    per_prompt = {"a": [p, as_fluent], "b": [p, DEGENERATE_2.__class__(60, 0.0, 0.7, 1, nll_novel=1.9,
                                                                     distinct_2=0.2, longest_repeat=25, fire_rate=0.9)]}
    strength, mean = search.choose_across(per_prompt, bases, rule)
    assert strength == 50 and mean == pytest.approx(rule.combined(p, DEMO_DEFAULT))
    assert search.choose_across({"a": [DEGENERATE_1]}, bases, rule) is None


@pytest.fixture(scope="module")
def mirror(demo_mirror) -> Path:
    return demo_mirror


@pytest.fixture(scope="module")
def demo_sae(mirror):
    from saejobs.engine.sae import load_sae

    return load_sae(demo.ENTRY, mirror / demo.ENTRY.repo_id / demo.ENTRY.folder)


STRENGTHS = [0, 100, 200, 300, 400]


@pytest.fixture(scope="module")
def grid(gemma3, demo_sae):
    """The README's grid: word features 0–3 × strengths 0…400 along the unit directions (--normalize)
    × 4 prompts, 16 greedy tokens, one batched sweep: (runner, its outputs)."""
    settings = Settings(n_tokens=16, normalize=True)
    runner = SweepGenerator(gemma3, demo_sae, demo.ENTRY.hook_name, settings)
    return runner, runner.run(plan_configs(list(WORDS), [], STRENGTHS, PROMPTS, [42], False, settings, "demo"))


@pytest.mark.model
def test_concept_rises_with_strength_fluency_falls_at_the_high_end_default_near_zero(grid):
    """Strengths 0…400 along the unit directions (--normalize): per word feature the concept score
    (mean over 4 prompts) does not fall over the low range and rises above the DEFAULT's; at the
    highest strength the NLL is above the DEFAULT's; the DEFAULT's concept is ~0 on every feature."""
    runner, outs = grid
    scores = score.score_outputs(runner, outs, list(WORDS))
    rows = [{"type": c.type, "features": [dict(f) for f in c.features], "prompt": "*", "scores": s}
            for (c, _, _), s in zip(outs, scores)]
    curves, base = search.curves(rows)
    for f in WORDS:
        concept = [p.concept for p in curves[(f, "*")]]
        assert base[(f, "*")] < 1.0, (f, base[(f, "*")])
        low = concept[:3]  # 0, 100, 200
        assert low == sorted(low) and max(concept) > base[(f, "*")] + 10, (f, concept)
        assert curves[(f, "*")][-1].nll > base[(-1, "*")].nll + 0.5, (f, [p.nll for p in curves[(f, "*")]])
    # batched scoring (left-padded, rows of different lengths) equals scoring each row alone
    some = [outs[i] for i in (0, 7, 14, len(outs) - 1)]
    batched = score.score_outputs(runner, some, list(WORDS))
    alone = [score.score_outputs(runner, [o], list(WORDS))[0] for o in some]
    for b, a in zip(batched, alone):
        assert b["nll"] == pytest.approx(a["nll"], abs=1e-4) and b["concept"].keys() == a["concept"].keys()
        for k in b["concept"]:
            assert b["concept"][k]["mean"] == pytest.approx(a["concept"][k]["mean"], abs=1e-2)


@pytest.mark.model
def test_rows_with_one_completion_share_one_pass_and_keep_their_own_concepts(grid, gemma3):
    """Greedy, strength 0 writes what DEFAULT writes: a prompt's DEFAULT row and its four zero-strength rows are
    scored in one row's pass, and each row's scores equal that row scored alone (its own concepts only)."""
    runner, outs = grid
    prompt = PROMPTS[0]
    rows = [o for o in outs if o[0].prompt == prompt and (o[0].type == "DEFAULT" or o[0].features[0]["strength"] == 0)]
    assert len(rows) == 5 and len({tuple(g.token_ids) for _, g, _ in rows}) == 1
    seen: list[int] = []
    handle = gemma3.model.register_forward_pre_hook(lambda m, a, k: seen.append(k["input_ids"].shape[0]),
                                                    with_kwargs=True)
    try:
        together = score.score_outputs(runner, rows, list(WORDS))
    finally:
        handle.remove()
    assert seen == [1], seen
    for row, got in zip(rows, together):
        alone = score.score_outputs(runner, [row], list(WORDS))[0]
        assert got == alone, (row[0].features, got, alone)
    assert [sorted(g["concept"]) for g in together] == [["0", "1", "2", "3"], ["0"], ["1"], ["2"], ["3"]]


@pytest.fixture(scope="module")
def sae_file(mirror) -> dict:
    """The demo SAE's own tensors, read from its file with safetensors (Gemma Scope 2's lowercase keys)."""
    from safetensors.numpy import load_file

    return load_file(str(mirror / demo.ENTRY.repo_id / demo.ENTRY.folder / "params.safetensors"))


def reference_scores(lm, params: dict, prompt: list[int], generated: list[int], features: list[int]) -> dict:
    """NLL and concept of one generation without saejobs: one unpadded forward of the plain transformers
    model; the NLL is the mean of ``-log_softmax`` at every generated token, the EOS that ended it included
    (README, Scores: "the completion given the prompt (the EOS that ended it included)"); the concept is
    the JumpReLU of the file's own tensors (``pre = x @ W_enc + b_enc; relu(pre) * (pre > threshold)``) on
    the output of decoder layer ``demo.LAYER`` (a plain forward hook), over the completion's tokens
    without that EOS."""
    import numpy as np
    import torch

    seen = []
    handle = lm.model.model.layers[demo.LAYER].register_forward_hook(
        lambda module, args, out: seen.append(out[0] if isinstance(out, tuple) else out))
    try:
        with torch.no_grad():
            # the logits at the last prompt token and every generated one but the last
            logits = lm.model(input_ids=torch.tensor([prompt + generated]),
                              logits_to_keep=len(generated) + 1).logits[0, :-1].double()
    finally:
        handle.remove()
    p = len(prompt)
    logp = torch.log_softmax(logits, dim=-1)
    per_token = -logp[torch.arange(len(generated)), torch.tensor(generated)]
    nll = float(per_token.mean())
    # nll_novel: over the tokens whose bigram with the one before is not already in the completion
    bigrams = [tuple(generated[i - 1:i + 1]) for i in range(1, len(generated))]
    novel = [0] + [i for i in range(1, len(generated)) if bigrams[i - 1] not in bigrams[:i - 1]]
    nll_novel = float(per_token[novel].mean())
    stopped = generated[-1] == lm.tokenizer.eos_token_id
    x = seen[0][0, p:len(prompt) + len(generated) - stopped].double().numpy()
    concept = {}
    for f in features:
        pre = x @ params["w_enc"][:, f].astype(np.float64) + float(params["b_enc"][f])
        acts = np.maximum(pre, 0) * (pre > float(params["threshold"][f]))
        n = max(len(acts), 1)  # a row that stopped at once has no completion tokens: 0
        concept[str(f)] = {"mean": float(acts.sum()) / n, "fire_rate": float((acts > 0).sum()) / n}
    return {"nll": nll, "nll_novel": nll_novel, "concept": concept, "stopped_at_eos": stopped,
            "completion_tokens": len(x)}


@pytest.fixture(scope="module")
def read_on_all(gemma3, grid) -> tuple[list, list[dict]]:
    """Every row of the grid and three rows that stopped at EOS (a completion cut and ended with EOS, as the
    generator hands such a row over: after 10, 5 and 0 tokens) and two rows with " dog" at the edges of
    the completion's window, each read on all four word features, scored as one batch (left-padded):
    (items, scores)."""
    runner, outs = grid
    eos = gemma3.tokenizer.eos_token_id
    items = [score.Item(runner.ids(c), g.token_ids, list(WORDS)) for c, g, _ in outs]
    items += [score.Item(items[i].prompt_ids, list(items[i].token_ids[:k]) + [eos], list(WORDS))
              for i, k in ((1, 10), (2, 5), (3, 0))]
    tok = gemma3.tokenizer
    # the window's edges: " dog" as the completion's last token before its EOS, and as the prompt's last token
    dog_last, dog_before = (tok(t, add_special_tokens=False)["input_ids"]
                            for t in (" there was a little dog", " in the park and then went home."))
    items += [score.Item(tok("Once upon a time")["input_ids"], dog_last + [eos], list(WORDS)),
              score.Item(tok("I walked my dog")["input_ids"], dog_before, list(WORDS))]
    return items, score.score(gemma3, runner.sae, demo.ENTRY.hook_name, items)


@pytest.mark.model
def test_scores_equal_an_independent_computation_eos_included(gemma3, grid, read_on_all, sae_file):
    """``read_on_all``'s DEFAULT rows, rows steered at 200 and 400 on two prompts, its EOS rows and its two
    window-edge rows equal ``reference_scores`` (each reader also on rows that other features steered)."""
    runner, outs = grid
    items, got = read_on_all
    tok = gemma3.tokenizer
    assert all(it.prompt_ids == tok(c.prompt)["input_ids"] for it, (c, _, _) in zip(items, outs))
    checked = [i for i, (c, _, _) in enumerate(outs) if c.type == "DEFAULT" or (
        c.prompt in PROMPTS[:2] and c.features[0]["strength"] in (200, 400))] + list(range(len(outs), len(items)))
    assert len(checked) == 4 + 4 * 2 * 2 + 3 + 2
    refs = {}
    for i in checked:
        it, mine = items[i], got[i]
        ref = refs[i] = reference_scores(gemma3, sae_file, list(it.prompt_ids), list(it.token_ids), list(WORDS))
        where = (tok.decode(it.token_ids), mine, ref)
        assert mine["nll"] == pytest.approx(ref["nll"], rel=1e-4, abs=1e-4), where
        assert mine["nll_novel"] == pytest.approx(ref["nll_novel"], rel=1e-4, abs=1e-4), where
        assert mine["perplexity"] == pytest.approx(math.exp(ref["nll"]), rel=1e-3), where
        assert mine["stopped_at_eos"] is ref["stopped_at_eos"], where
        assert mine["completion_tokens"] == ref["completion_tokens"], where
        assert mine["concept"].keys() == ref["concept"].keys(), where
        for f, c in ref["concept"].items():
            assert mine["concept"][f]["mean"] == pytest.approx(c["mean"], rel=1e-3, abs=1e-3), (f, where)
            assert mine["concept"][f]["fire_rate"] == pytest.approx(c["fire_rate"], abs=1e-9), (f, where)
    assert [got[i]["stopped_at_eos"] for i in checked[-5:]] == [True] * 4 + [False]
    edges = [refs[i]["concept"]["0"] for i in checked[-2:]]
    assert edges[0]["fire_rate"] > 0 and edges[1]["fire_rate"] == 0, edges  # " dog" read at the end, not before
    assert sum(got[i]["concept_mean"] > 0 for i in checked) >= 8, "the readers fired on too few rows to test anything"


@pytest.mark.model
def test_concept_is_specific_to_the_steered_feature(grid, read_on_all):
    """Reader f on the rows steering f (mean over the 4 prompts, at f's best strength) is far above reader
    f on the rows steering any other feature g, at any strength (``read_on_all``'s scores, whose values
    the test above checks against the reference)."""
    _, outs = grid
    _, got = read_on_all
    reading: dict[tuple[int, int, float], list[float]] = {}  # (reader, steered, strength) -> per prompt
    for (c, _, _), sc in zip(outs, got):
        if c.type == "STEERED":
            (steered,) = c.features
            for f in WORDS:
                reading.setdefault((f, steered["index"], steered["strength"]), []).append(sc["concept"][str(f)]["mean"])
    mean = {k: sum(v) / len(v) for k, v in reading.items()}
    for f in WORDS:
        own = max(mean[(f, f, s)] for s in STRENGTHS)
        other = max(mean[(f, g, s)] for g in WORDS if g != f for s in STRENGTHS)
        assert own > 10 and own > 5 * other, (WORDS[f], own, other,
                                             {g: [round(mean[(f, g, s)], 2) for s in STRENGTHS] for g in WORDS})


def _cli(*args):
    from click.testing import CliRunner

    from saejobs.cli.main import cli

    return CliRunner().invoke(cli, list(args))


def _ok(r) -> dict:
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


@pytest.mark.model
def test_sweep_scores_backfill_results_parquet_and_report(home, gemma3, mirror, tmp_path):
    """A sweep stores scores with its chunks; erased, ``saejobs score`` puts the same ones back; the
    DataFrame and the Parquet file carry them; the report renders in Chromium, one plot per feature,
    with a generation's markup shown as text."""
    import pandas as pd

    import saejobs
    from saejobs.db.models import Generation
    from saejobs.db.session import session
    from saejobs.engine.registry import custom

    custom.write([demo.ENTRY], "demo")
    _ok(_cli("download", demo.ENTRY.id, "--source", str(mirror), "--local", "--json"))
    job = _ok(_cli("sweep", "--sae", demo.ENTRY.id, "--feature", "0,3", "--strength", "0,150,300", "--prompt",
                   "Once upon a time", "--n-tokens", "12", "--model", "gemma-3-270m-gguf", "--batch-size", "3",
                   "--local", "--json"))
    rows = json.loads(_cli("results", job["id"], "--json").stdout)
    assert len(rows) == 7 and all(r["scores"] and r["scores"]["nll"] > 0 for r in rows)
    default = next(r for r in rows if r["type"] == "DEFAULT")
    assert set(default["scores"]["concept"]) == {"0", "3"}  # the baseline on every feature the sweep steers
    before = {r["id"]: r["scores"] for r in rows}

    with session() as s:  # as if stored before scoring existed; and one output carrying markup
        for g in s.query(Generation).all():
            g.scores = None
        s.query(Generation).filter(Generation.id == default["id"]).one().output = \
            'Once upon a time<script>alert(1)</script><b id="injected">x</b>'
    assert _cli("score", "nope-not-a-job").exit_code == 2
    done = _ok(_cli("score", job["id"][:8], "--local", "--json"))
    assert done["state"] == "succeeded" and done["result"]["scored"] == 7
    after = {r["id"]: r["scores"] for r in json.loads(_cli("results", job["id"], "--json").stdout)}
    for gid, sc in before.items():
        assert after[gid]["nll"] == pytest.approx(sc["nll"], abs=1e-4)
        assert after[gid]["concept_mean"] == pytest.approx(sc["concept_mean"], abs=1e-2)
    assert _ok(_cli("score", job["id"], "--local", "--json"))["result"]["scored"] == 0  # nothing left to do

    df = saejobs.results(job["id"])
    assert isinstance(df, pd.DataFrame) and len(df) == 7
    assert {"concept_mean", "nll", "perplexity", "distinct_2", "stopped_at_eos", "strength"} <= set(df.columns)
    assert df[df.type == "STEERED"].groupby("feature").strength.nunique().to_dict() == {"0": 3, "3": 3}
    out = tmp_path / "sweep.parquet"
    r = _cli("results", job["id"], "--format", "parquet", "--out", str(out))
    assert r.exit_code == 0, r.output
    back = pd.read_parquet(out)
    assert list(back.nll) == pytest.approx(list(df.nll)) and list(back.output) == list(df.output)
    assert _cli("results", job["id"], "--format", "parquet").exit_code == 2  # --out is required

    page = tmp_path / "report.html"
    info = _ok(_cli("report", job["id"], "--html", str(page), "--json"))
    assert info["features"] == [0, 3] and info["unscored"] == 0
    text = page.read_text()
    assert_self_contained_and_linked(text, points=2 * 3)  # 3 strengths × 2 features
    dom = _chromium(page, "score-report.png")
    assert dom.count('class="plot"') == 2 and 'data-feature="0"' in dom and 'data-feature="3"' in dom
    assert '<b id="injected">' not in dom and '&lt;b id="injected"&gt;' in dom  # shown as text, not markup
    assert dom.count('class="point"') == 2 * 3 * 2 + 1  # 3 strengths × 2 features, links and sections; DEFAULT
    assert _cli("report", job["id"], "--html", str(tmp_path / "no" / "dir.html")).exit_code == 2


@pytest.mark.model
def test_search_finds_a_strength_where_the_word_appears_within_the_bound_twice_the_same(home, gemma3, mirror, tmp_path):
    import saejobs
    from saejobs.engine.registry import custom

    custom.write([demo.ENTRY], "demo")
    _ok(_cli("download", demo.ENTRY.id, "--source", str(mirror), "--local", "--json"))
    args = ["search", "--sae", demo.ENTRY.id, "--feature", "0", "--prompt", "Once upon a time", "--range", "0:400",
            "--max-nll-increase", "1.5", "--n-tokens", "16", "--model", "gemma-3-270m-gguf", "--local", "--json"]
    first, second = _ok(_cli(*args)), _ok(_cli(*args))
    (pick,) = first["result"]["chosen"]
    assert pick == second["result"]["chosen"][0] and first["result"]["curves"] == second["result"]["curves"]
    assert " dog" in pick["output"].removeprefix("Once upon a time"), pick
    # the README's figures (strength search section): 300 chosen, concept 24.2, NLL 2.26 within 2.72 (DEFAULT
    # 1.22); 200 scores higher on concept (26.3) but its NLL (3.26) is over the bound, 400 too (5.12)
    assert pick["strength"] == 300 and pick["concept"] == pytest.approx(24.2, abs=0.05), pick
    assert pick["nll"] == pytest.approx(2.26, abs=0.005) and pick["default_nll"] == pytest.approx(1.22, abs=0.005)
    assert pick["default_concept"] == 0 and pick["output"] == ("Once upon a time when I was a child, I was a dog "
                                                                "that I didn't do")
    by_strength = {p["strength"]: p for p in first["result"]["curves"][0]["points"]}
    assert by_strength[200]["concept"] == pytest.approx(26.3, abs=0.05) and by_strength[200]["concept"] > pick["concept"]
    assert by_strength[200]["nll"] == pytest.approx(3.26, abs=0.005) and by_strength[400]["nll"] == pytest.approx(5.12, abs=0.005)
    assert sorted(by_strength) == [0, 100, 200, 250, 300, 350, 400]  # 2 rounds: the coarse grid, then 250/350
    assert pick["nll"] <= pick["default_nll"] + 1.5 and pick["concept"] > pick["default_concept"] + 1
    assert len(first["result"]["rounds"]) == 2  # a coarse grid, then one refinement, each one sweep job
    strengths = {p["strength"] for p in first["result"]["curves"][0]["points"]}
    assert {0, 100, 200, 300, 400} < strengths
    assert json.loads(_cli("results", first["id"], "--json").stdout) == [  # with each feature's label (none cached)
        {**c, "label": None} for c in first["result"]["chosen"]]
    df = saejobs.results(first["id"])  # every round's generations, with the round's sweep job
    assert df["round"].nunique() == 2 and len(df) == 2 * 1 + len(strengths)
    page = tmp_path / "search.html"
    assert _ok(_cli("report", first["id"], "--html", str(page), "--json"))["features"] == [0]
    assert f"chosen {pick['strength']:g}" in page.read_text()
    assert_self_contained_and_linked(page.read_text(), points=len(strengths))
    bad = _cli("search", "--sae", demo.ENTRY.id, "--feature", "0", "--prompt", "x", "--range", "5:1", "--local")
    assert bad.exit_code == 2 and "LO < HI" in bad.output


@pytest.mark.model
def test_the_search_chooses_no_degenerate_text_and_reports_on_held_out_prompts(home, gemma3, mirror):
    """The demo's degenerate cases (issue 30): feature 1 at 300 ("<strong>" looped) and feature 2 at 100 ("I
    was a kid." looped) have a plain NLL under the DEFAULT's, so the NLL-only rule admitted them; the search
    marks both inadmissible and chooses neither. Then feature 1 chosen on one prompt, reported on another."""
    from saejobs.engine.registry import custom

    custom.write([demo.ENTRY], "demo")
    _ok(_cli("download", demo.ENTRY.id, "--source", str(mirror), "--local", "--json"))
    got = _ok(_cli("search", "--sae", demo.ENTRY.id, "--feature", "1,2", "--prompt", "Once upon a time", "--range",
                   "0:400", "--rounds", "0", "--model", "gemma-3-270m-gguf", "--local", "--json"))["result"]
    points = {(c["feature"], p["strength"]): p for c in got["curves"] for p in c["points"]}
    default_nll = got["chosen"][0]["default_nll"]
    for key, text in (((1, 300.0), "<strong><strong><strong>"), ((2, 100.0), "I was a kid.\n\nI was a kid.")):
        p = points[key]
        assert p["nll"] < default_nll and not p["admissible"] and p["combined"] == 0, (key, p)  # the old rule's pick
        assert p["longest_repeat"] > 20 and p["distinct_2"] < 0.3, (key, p)
        rows = [r for r in saejobs_rows(got["rounds"]) if r["type"] == "STEERED"
                and (r["features"][0]["index"], r["features"][0]["strength"]) == key]
        assert text in rows[0]["output"], rows[0]["output"]
    for c in got["chosen"]:
        assert (c["feature"], c["strength"]) not in {(1, 300.0), (2, 100.0)}, c
        if c["strength"] is not None:
            assert points[(c["feature"], c["strength"])]["admissible"]

    held = _ok(_cli("search", "--sae", demo.ENTRY.id, "--feature", "1", "--prompt", "Once upon a time",
                    "--holdout-prompts", "The weather today is", "--range", "0:100", "--points", "3", "--rounds", "0",
                    "--model", "gemma-3-270m-gguf", "--local", "--json"))["result"]
    (pick,) = held["chosen"]
    assert pick["prompt"] is None and [h["prompt"] for h in pick["held_out"]] == ["The weather today is"]
    # on the training prompt 50 is the one strength both admissible and firing (the sea story above)
    assert pick["strength"] == 50 and len(held["rounds"]) == 1 and len(held["holdout_jobs"]) == 1
    (h,) = pick["held_out"]
    assert h["output"].startswith("The weather today is") and pick["combined"] == h["combined"]
    train = {p["strength"]: p["combined"] for c in held["curves"] for p in c["points"]}
    assert pick["train_combined"] == pytest.approx(train[50]) and train[50] == max(train.values()) > 0


def saejobs_rows(jobs: list[str]) -> list[dict]:
    from saejobs.db import results

    return [r for j in jobs for r in results.generation_rows(j)]


SVG_NS = 'xmlns="http://www.w3.org/2000/svg"'


def assert_self_contained_and_linked(text: str, points: int) -> None:
    """A report page runs nothing and fetches nothing: no ``<script`` element in any case or spacing, no
    ``http://`` or ``https://`` anywhere but the inline SVG's namespace, no event-handler attribute, no
    ``url(``/``@import`` in its style; and its ``points`` plot points each link to an element of the page
    (every ``href`` is a fragment whose id exists)."""
    from html.parser import HTMLParser

    assert not re.search(r"<\s*script\b", text, re.I), "a script element"
    bare = text.replace(SVG_NS, "")
    assert not re.search(r"https?://", bare, re.I), re.findall(r".{0,40}https?://.{0,40}", bare, re.I)

    class Page(HTMLParser):
        def __init__(self):
            super().__init__()
            self.ids: list[str] = []
            self.links: list[tuple[str, str]] = []  # (class, href or src)
            self.style, self._in_style = "", False

        def handle_starttag(self, tag, attrs):
            a = dict(attrs)
            assert tag != "script" and not [k for k in a if k.startswith("on")], (tag, a)
            if "id" in a:
                self.ids.append(a["id"])
            if "href" in a or "src" in a:
                self.links.append((a.get("class", ""), a.get("href") or a.get("src")))
            self._in_style = tag == "style"

        def handle_data(self, data):
            if self._in_style:
                self.style += data

    page = Page()
    page.feed(text)
    assert "url(" not in page.style and "@import" not in page.style
    assert len(page.ids) == len(set(page.ids)), "duplicate ids"
    assert sum(cls == "point" for cls, _ in page.links) == points, page.links
    dangling = [h for _, h in page.links if not (h.startswith("#") and h[1:] in page.ids)]
    assert not dangling, (dangling, page.ids)


def test_report_page_links_every_point_to_its_generations_and_is_inert():
    """``score_report.html`` on hand-made scored rows (negative, fractional and large strengths; a search's
    chosen strengths; generated text carrying markup and a URL-like script): the page passes
    ``assert_self_contained_and_linked`` with one link per plot point."""
    from saejobs.engine import score_report

    strengths = [-50.0, 0.0, 12.5, 150.0, 300.0]

    def sc(concept: float, nll: float) -> dict:
        return {"concept": {}, "concept_mean": concept, "concept_fire_rate": 0.1, "nll": nll, "distinct_2": 1.0,
                "longest_repeat": 0, "stopped_at_eos": False}
    rows = [{"type": "STEERED", "features": [{"index": f, "strength": s}], "prompt": p, "seed": 42,
             "output": f"{p} <SCRIPT src=//x.example/a.js></SCRIPT> at {s}", "scores": sc(s / 10, 1 + s / 100)}
            for f in (0, 3) for s in strengths for p in ("a", "b")]
    rows += [{"type": "DEFAULT", "features": [], "prompt": p, "seed": 42, "output": p + '<img src=x onerror="1">',
              "scores": {**sc(0.0, 1.2), "concept": {"0": {"mean": 0.0}, "3": {"mean": 0.0}}}} for p in ("a", "b")]
    for chosen in (None, {0: 150.0, 3: 12.5}):  # a sweep's report, a search's
        page = score_report.html(rows, "t", 1.0, chosen)
        assert_self_contained_and_linked(page, points=2 * len(strengths))
        assert "&lt;SCRIPT" in page and "onerror" not in page.replace("onerror=&quot;", "")


def _chromium(page: Path, shot_name: str) -> str:
    """Render ``page`` in headless Chromium: keep a screenshot in test-artifacts/, return the DOM."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("Debian's chromium package is not installed (.ci/run installs it)")
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / shot_name
    shot.unlink(missing_ok=True)
    subprocess.run(flags + [f"--screenshot={shot}", "--window-size=1280,1600", page.as_uri()],
                   check=True, capture_output=True, timeout=120)
    assert shot.is_file() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    return subprocess.run(flags + ["--dump-dom", page.as_uri()], check=True, capture_output=True, text=True,
                          timeout=120).stdout
