"""Steering sweeps on the real Gemma 3 270M: effect, controls, batching, seeds, storage."""

from __future__ import annotations

import csv
import io
import json

import pytest
import torch

from saejobs.engine import demo
from saejobs.engine.generate import Row, Sampling, generate, prompt_ids
from saejobs.engine.sae import load_sae
from saejobs.engine.steering import SteerMethod
from saejobs.engine.request import Settings, plan_configs
from saejobs.engine.sweep import SweepGenerator
from tests.dbfixtures import home  # noqa: F401

pytestmark = pytest.mark.model
PROMPTS = ["Once upon a time", "The weather today is", "My favourite thing about", "In the beginning"]


@pytest.fixture(scope="module")
def demo_sae(demo_mirror):
    return load_sae(demo.ENTRY, demo_mirror / demo.ENTRY.repo_id / demo.ENTRY.folder)


def run(gemma3, sae, configs, settings=Settings(n_tokens=24), batch=None):
    runner = SweepGenerator(gemma3, sae, demo.ENTRY.hook_name, settings)
    if batch is None:
        return runner.run(configs)
    return [o for i in range(0, len(configs), batch) for o in runner.run(configs[i:i + batch])]


def grid(features, strengths, prompts=PROMPTS, seeds=(42,), settings=Settings(n_tokens=24), combine=False):
    return plan_configs(features, [], strengths, list(prompts), list(seeds), combine, settings, "demo")


def completion(out):
    c, g, text = out
    return text[len(c.prompt):]


def test_steering_toward_a_word_raises_its_frequency_monotonically(gemma3, demo_sae):
    strengths = [0, 100, 200, 300]
    outs = run(gemma3, demo_sae, grid([0], strengths))
    counts = {s: sum(completion(o).lower().count("dog") for o in outs
                     if o[0].type == "STEERED" and o[0].features[0]["strength"] == s) for s in strengths}
    ordered = [counts[s] for s in strengths]
    assert ordered == sorted(ordered) and ordered[-1] >= ordered[0] + 4, counts


def test_strength_zero_equals_default_token_for_token(gemma3, demo_sae):
    outs = run(gemma3, demo_sae, grid([0, 1], [0]))
    default = {(o[0].prompt, o[0].seed): o[1].token_ids for o in outs if o[0].type == "DEFAULT"}
    steered = [o for o in outs if o[0].type == "STEERED"]
    assert len(steered) == 2 * len(PROMPTS)
    for c, g, _ in steered:
        assert g.token_ids == default[(c.prompt, c.seed)]


@pytest.mark.parametrize("method", [SteerMethod.SIMPLE_ADDITIVE, SteerMethod.ORTHOGONAL_DECOMP])
def test_batched_equals_one_by_one_with_prompts_of_different_lengths(gemma3, demo_sae, method):
    # Two features (rows steer with different vectors) and four prompts of different lengths (padding); strength 0
    # against DEFAULT has its own test. The other operations, mixed in one batch: tests/fidelity/test_steer_operations.py. 12 configurations × 12 tokens, batched and then one at a time.
    settings = Settings(method=method, n_tokens=12)
    configs = grid([0, 2], [150] if method == "SIMPLE_ADDITIVE" else [3.0], settings=settings)
    assert len({len(prompt_ids(gemma3.tokenizer, p)) for p in PROMPTS}) > 1  # padding is exercised
    batched = run(gemma3, demo_sae, configs, settings)
    alone = run(gemma3, demo_sae, configs, settings, batch=1)
    assert [o[1].token_ids for o in batched] == [o[1].token_ids for o in alone]
    assert len({tuple(o[1].token_ids) for o in batched}) > len(PROMPTS)  # steering changed something


def test_same_seed_same_text_at_temperature(gemma3, demo_sae):
    settings = Settings(n_tokens=12, temperature=0.9, freq_penalty=1.0)
    configs = grid([1], [100], prompts=PROMPTS[:2], seeds=(1, 2), settings=settings)
    a = run(gemma3, demo_sae, configs, settings)
    b = run(gemma3, demo_sae, configs, settings, batch=1)
    assert [o[2] for o in a] == [o[2] for o in b]
    by_seed = {o[0].seed: o[2] for o in a if o[0].type == "DEFAULT" and o[0].prompt == PROMPTS[0]}
    assert by_seed[1] != by_seed[2]


def test_seeded_sampling_matches_torch_manual_seed(gemma3):
    """A row's generator draws what torch.manual_seed(seed) + Categorical(logits).sample() would."""
    p = prompt_ids(gemma3.tokenizer, "Once upon a time")
    ours = generate(gemma3, [Row(p, 7)], Sampling(n_tokens=6, temperature=1.0))[0].token_ids
    torch.manual_seed(7)
    ids = torch.tensor([p])
    ref = []
    with torch.no_grad():
        for _ in range(6):
            logits = gemma3.model(input_ids=ids).logits[0, -1].float()
            t = int(torch.distributions.Categorical(logits=logits / 1.0).sample())
            ref.append(t)
            ids = torch.cat([ids, torch.tensor([[t]])], dim=1)
    assert ours == ref


def test_logprobs_of_chosen_and_top_k(gemma3, demo_sae):
    settings = Settings(n_tokens=5, n_logprobs=3)
    (c, g, _), = run(gemma3, demo_sae, grid([0], [0], prompts=PROMPTS[:1], settings=settings)[:1], settings)
    assert len(g.logprobs) == 5
    for t, lp in zip(g.token_ids, g.logprobs):
        assert lp["token"] == t and len(lp["top"]) == 3 and lp["top"][0][0] == t  # greedy picks the top token
        assert lp["logprob"] == pytest.approx(lp["top"][0][1]) and lp["logprob"] <= 0


def test_sweep_job_end_to_end_and_results_views(home, demo_mirror, tmp_path):
    """saejobs sweep --local on the demo SAE; the grid as a table, JSON and CSV."""
    from click.testing import CliRunner

    from saejobs.cli.main import cli
    from saejobs.engine.registry import custom

    mirror = demo_mirror
    custom.write([demo.ENTRY], "demo")
    cli_ = CliRunner()
    r = cli_.invoke(cli, ["download", demo.ENTRY.id, "--source", str(mirror), "--local", "--json"])
    assert r.exit_code == 0, r.output
    r = cli_.invoke(cli, ["sweep", "--sae", demo.ENTRY.id, "--feature", "0,1", "--strength", "0,200", "--prompt",
                          "Once upon a time", "--n-tokens", "12", "--model", "gemma-3-270m-gguf", "--local", "--json"])
    assert r.exit_code == 0, r.output
    job = json.loads(r.stdout)
    assert job["result"]["generations"] == 1 + 2 * 2
    rows = json.loads(cli_.invoke(cli, ["results", job["id"], "--json"]).stdout)
    assert [r["type"] for r in rows].count("DEFAULT") == 1 and all(r["prompt_token_ids"][0] == 2 for r in rows)
    assert all(r["output"].startswith("Once upon a time") for r in rows)
    parsed = list(csv.DictReader(io.StringIO(cli_.invoke(cli, ["results", job["id"][:8], "--csv"]).stdout)))
    assert [(r["type"], r["output"]) for r in parsed] == [(r["type"], r["output"]) for r in rows]
    table = cli_.invoke(cli, ["results", job["id"]]).output
    assert "strength" in table and "DEFAULT" in table
    r = cli_.invoke(cli, ["sweep", "--sae", demo.ENTRY.id, "--feature", "5000", "--strength", "1", "--prompt", "x"])
    assert r.exit_code == 2 and "out of range" in r.output


def test_combined_rows_steer_with_every_feature_at_once(gemma3, demo_sae):
    """--combine: one row per strength steering features 0 and 1 together. Its tokens differ from either
    feature's own row at that strength and from the DEFAULT (not a single-feature row relabelled); the
    DEFAULT is the single-feature grid's, token for token."""
    prompts = PROMPTS[:2]
    single = run(gemma3, demo_sae, grid([0, 1], [200], prompts=prompts))
    both = run(gemma3, demo_sae, grid([0, 1], [200], prompts=prompts, combine=True))
    default = {o[0].prompt: o[1].token_ids for o in single if o[0].type == "DEFAULT"}
    alone = {(o[0].prompt, o[0].features[0]["index"]): o[1].token_ids for o in single if o[0].type == "STEERED"}
    assert len(alone) == 2 * len(prompts) and all(alone[(p, 0)] != alone[(p, 1)] for p in prompts)
    assert {o[0].prompt: o[1].token_ids for o in both if o[0].type == "DEFAULT"} == default
    combined = [o for o in both if o[0].type == "STEERED"]
    assert [(c.prompt, [(f["index"], f["strength"]) for f in c.features]) for c, _, _ in combined] == \
        [(p, [(0, 200), (1, 200)]) for p in prompts]
    for c, g, _ in combined:
        assert g.token_ids != alone[(c.prompt, 0)] and g.token_ids != alone[(c.prompt, 1)], c.prompt
        assert g.token_ids != default[c.prompt], c.prompt


def test_plan_grid_and_combine():
    s = Settings()
    one = plan_configs([1, 2], [], [0, 5, 10], ["a", "b"], [1, 2], False, s, "x")
    assert len(one) == 2 * 2 + 2 * 3 * 2 * 2 and sum(c.type == "DEFAULT" for c in one) == 4
    both = plan_configs([1, 2], [], [0, 5, 10], ["a"], [1], True, s, "x")
    assert [len(c.features) for c in both] == [0, 2, 2, 2]
    assert len({c.key for c in one}) == len(one)
    assert plan_configs([1], [], [5], ["a"], [1], False, s, "x")[1].key != plan_configs([1], [], [5], ["a"], [1], False, s, "y")[1].key


def test_a_raw_vector_steers_like_the_feature_it_copies(gemma3, demo_sae, tmp_path):
    import numpy as np

    from saejobs.engine.request import Vector
    from saejobs.engine.sweep import load_vector

    path = tmp_path / "dog.npy"
    np.save(path, demo_sae.W_dec[0].numpy())
    vector = Vector.of(path)
    settings = Settings(n_tokens=16)
    runner = SweepGenerator(gemma3, demo_sae, demo.ENTRY.hook_name, settings, {vector.label: load_vector(path)})
    configs = plan_configs([0], [vector.label], [200], PROMPTS[:2], [42], False, settings, "v")
    out = runner.run(configs)
    by_prompt = {}
    for c, g, _ in out:
        by_prompt.setdefault((c.prompt, c.type), []).append(g.token_ids)
    for prompt in PROMPTS[:2]:
        (default,), (feature, vec) = by_prompt[(prompt, "DEFAULT")], by_prompt[(prompt, "STEERED")]
        assert vec == feature and vec != default  # it steers, and exactly as the feature it copies


@pytest.mark.parametrize("site, hook, width", [("mlp", "blocks.4.hook_mlp_out", 640), ("att", "blocks.4.attn.hook_z", 1024)])
def test_steering_at_mlp_out_and_attn_z(gemma3, tmp_path, site, hook, width):
    from saejobs.engine.registry.entry import SaeEntry
    from saejobs.engine.synthetic import random_params, write_sae

    entry = SaeEntry(id=f"t/{site}", model="gemma-3-270m", model_hf="google/gemma-3-270m", repo_id="t/r", folder=site,
                     files=("params.npz",), format="gemma-scope", site=site, hook_name=hook, layer=4, d_model=width,
                     d_sae=32, l0=None, architecture="jumprelu", width="32", neuronpedia_id=None)
    sae = load_sae(entry, write_sae(tmp_path / site, "gemma-scope", random_params(width, 32)))
    settings = Settings(n_tokens=12)
    outs = SweepGenerator(gemma3, sae, hook, settings).run(plan_configs([3], [], [0, 400], PROMPTS[:1], [42], False, settings, "s"))
    default, zero, strong = (o[1].token_ids for o in outs)
    assert zero == default and strong != default
