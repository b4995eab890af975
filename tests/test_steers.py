"""Named steers (issue 28): interventions across SAEs, layers and operations, validated once in the typed
request, planned as steers × strength multipliers × prompts × seeds, and run through the CLI — each row
token for token what interp-engine generates for that steer, with the decoder rows read from the SAE
files by numpy (not by saejobs' loader). Bad input is one line, exit 2, nothing queued."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from saejobs.engine.errors import UsageError
from saejobs.engine.interventions import Direction, Intervention, NamedSteer
from saejobs.engine.request import SweepRequest
from tests.dbfixtures import home  # noqa: F401
from tests.synthetic_saes import make
from tests.test_queue import saejobs

ROOT = Path(__file__).resolve().parents[1]


def test_building_a_steer_request_needs_no_torch():
    code = ("import sys; from saejobs.engine.interventions import Intervention, Direction, NamedSteer;"
            "from saejobs.engine.request import SweepRequest;"
            "r = SweepRequest(sae='a', steers=(NamedSteer('n', (Intervention(Direction('a', 1), 2.0, 'SWAP', "
            "target=Direction('a', 2)),)),), prompts=('p',)); r.configs('x'); r.to_params();"
            "assert 'torch' not in sys.modules, 'torch was imported'")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("steer, says", [
    ({"x": [{"sae": "gemma-2-2b/20-gemmascope-res-16k", "index": 1},
            {"sae": "gemma-3-1b/7-gemmascope-2-res-16k", "index": 1}]},
     "is an SAE of gemma-3-1b; the sweep steers gemma-2-2b (gemma-2-2b/20-gemmascope-res-16k)"),
    ({"x": [{"sae": "gemma-2-2b/20-gemmascope-res-16k", "index": 99999}]}, "feature 99999 is out of range"),
    ({"x": [{"sae": "gemma-2-2b/20-gemmascope-res-16k", "index": 1, "method": "MOVE"}]}, "unknown steering method 'MOVE'"),
    ({"x": [{"sae": "gemma-2-2b/20-gemmascope-res-16k", "index": 1, "method": "SWAP"}]}, "SWAP needs a 'target'"),
    ({"x": [{"sae": "gemma-2-2b/20-gemmascope-res-16k", "index": 1, "method": "PROJECTION_CAP", "min": 2, "max": 1}]},
     "projection cap min 2.0 is above its max 1.0"),
    ({"x": [{"sae": "gemma-2-2b/20-gemmascope-res-16k", "index": 1},
            {"vector": "v.npy", "hook": "blocks.26.hook_resid_pre"}]},
     "hook blocks.26.hook_resid_pre is past gemma-2-2b's layers (0..25)"),
    ({"x": [{"vector": "v.npy", "hook": "blocks.3.hook_resid_mid"}]}, "unknown hook 'blocks.3.hook_resid_mid'"),
])
def test_bad_steers_on_the_command_line_are_one_line_exit_2_nothing_queued(home, tmp_path, steer, says):  # noqa: F811
    np.save(tmp_path / "v.npy", np.ones(2304, np.float32))
    (tmp_path / "steers.json").write_text(json.dumps(steer))
    res = saejobs("sweep", "--sae", "gemma-2-2b/20-gemmascope-res-16k", "--steers", str(tmp_path / "steers.json"),
                  "--prompt", "p", "--json")
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and says in lines[0] and "Traceback" not in res.stderr, res.stderr
    assert json.loads(saejobs("jobs", "list", "--json").stdout) == []


def test_a_two_sae_sweep_through_the_cli_equals_interp_engine_row_for_row(home, tiny_gemma2_dir, tmp_path):  # noqa: F811
    """Two SAEs of the tiny Gemma 2 at layers 1 and 3, three named steers (one from --feature) × two
    multipliers, run with --local; every stored STEERED row equals interp-engine's generation for it."""
    import torch
    from interp_engine.model import EagerModel
    from interp_engine.steer import SteerSpec, generate_stream, steer
    from interp_engine.steer_specs import SteerMethod as IE

    from saejobs.db import results
    from saejobs.engine.models import load_model

    s1, s3 = make(home, d_model=64, d_sae=256, layer=1), make(home, d_model=64, d_sae=256, layer=3, seed=1)
    for s in (s1, s3):
        assert saejobs("download", s.id, "--source", str(s.mirror), "--local", "--quiet").returncode == 0
    np.save(tmp_path / "v.npy", np.random.default_rng(0).normal(size=64).astype(np.float32))
    steers = {"mix": [{"sae": s1.id, "index": 5, "strength": 30.0},
                      {"sae": s3.id, "index": 7, "method": "PROJECTION_CAP", "max": 0.0},
                      {"vector": "v.npy", "hook": "blocks.2.hook_resid_pre", "strength": 4.0}],
              "swap": [{"sae": s3.id, "index": 2, "method": "SWAP", "target": {"sae": s1.id, "index": 9}},
                       {"sae": s3.id, "index": 4, "method": "NORM_SCALED_ADD", "strength": 0.5, "max_fraction": 0.3}]}
    (tmp_path / "steers.yaml").write_text(json.dumps(steers))  # JSON is YAML
    res = saejobs("sweep", "--steers", str(tmp_path / "steers.yaml"), "--feature", f"{s3.id}:11@25",
                  "--strength", "1,3", "--prompt", "Hello there", "--n-tokens", "6", "--model", str(tiny_gemma2_dir),
                  "--local", "--json")
    assert res.returncode == 0, res.stderr
    job = json.loads(res.stdout)
    rows = results.generation_rows(job["id"])
    steered = [g for g in rows if g["type"] == "STEERED"]
    assert {g["feature"] for g in steered} == {"mix", "swap", "command line"}
    assert len(rows) == 1 + 3 * 2 and {(g["sampling"]["steer"], g["sampling"]["strength_multiplier"]) for g in steered} == {
        (n, m) for n in ("mix", "swap", "command line") for m in (1.0, 3.0)}

    lm = load_model(str(tiny_gemma2_dir))
    oracle = EagerModel(lm.model.config._name_or_path, hf_model=lm.model, tokenizer=lm.tokenizer)
    w = {s.id: torch.from_numpy(np.load(s.mirror_folder / "params.npz")["W_dec"]) for s in (s1, s3)}
    layer = {s1.id: 1, s3.id: 3}
    ops = {None: IE.ADDITIVE, "PROJECTION_CAP": IE.PROJECTION_CAP, "SWAP": IE.SWAP, "NORM_SCALED_ADD": IE.NORM_SCALED_ADD}
    vector = torch.from_numpy(np.load(tmp_path / "v.npy"))
    outputs = set()
    for g in steered:
        specs = []
        for f in g["features"]:
            if "sae" in f:
                v, at, point = w[f["sae"]][f["index"]], layer[f["sae"]], "resid_post"
            else:
                v, at, point = vector, 2, "resid_pre"
            extra = {k: f[k] for k in ("min", "max", "max_fraction") if k in f}
            if "target" in f:
                extra["target"] = w[f["target"]["sae"]][f["target"]["index"]]
            specs.append(SteerSpec(v.clone(), at, g["sampling"]["strength_multiplier"] * f["strength"],
                                   ops[f.get("method")], point=point, **extra))
        ids = torch.tensor([g["prompt_token_ids"]])
        with steer(oracle, specs, prompt_token_ids=ids[0]):
            theirs = [s.token_id for s in generate_stream(oracle, ids, max_tokens=6, temperature=0.0, top_k=0,
                                                          top_p=1.0, presence_penalty=0.0, seed=g["seed"])]
        assert g["token_ids"] == theirs, (g["sampling"]["steer"], g["sampling"]["strength_multiplier"])
        outputs.add(tuple(g["token_ids"]))
    assert len(outputs) > 3  # the steers differ from one another

    # scores: each steered feature read by its own SAE at its own hook (issue 28 item 6), against plain torch
    # (a forward hook on the layer, JumpReLU from the file's arrays)
    g = next(r for r in steered if r["sampling"]["steer"] == "mix" and r["sampling"]["strength_multiplier"] == 3.0)
    assert set(g["scores"]["concept"]) == {"5", f"{s3.id}:7"}  # the sweep's SAE (the first named) keeps plain keys
    seen = []
    handle = lm.model.model.layers[3].register_forward_hook(lambda m, i, o: seen.append(o[0] if isinstance(o, tuple) else o))
    body = [t for t in g["token_ids"] if t != lm.tokenizer.eos_token_id]
    with torch.no_grad():
        lm.model(input_ids=torch.tensor([g["prompt_token_ids"] + body]))
    handle.remove()
    p3 = np.load(s3.mirror_folder / "params.npz")
    x = seen[0][0, len(g["prompt_token_ids"]):].double().numpy()
    pre = x @ p3["W_enc"][:, 7] + p3["b_enc"][7]
    expected = float(np.where(pre > p3["threshold"][7], pre, 0.0).mean())
    assert expected > 0 and g["scores"]["concept"][f"{s3.id}:7"]["mean"] == pytest.approx(expected, rel=1e-3)

    # erased, `saejobs score` puts the same scores back: the DEFAULT row's baseline on the steers' features of
    # the sweep's SAE, and the other SAE's features read by it at its hook
    from saejobs.db.models import Generation
    from saejobs.db.session import session

    default = next(r for r in rows if r["type"] == "DEFAULT")
    assert set(default["scores"]["concept"]) == {"5"}  # the steered features of the sweep's SAE (s1): mix's 5
    with session() as ses:
        for row in ses.query(Generation).all():
            row.scores = None
    res = saejobs("score", job["id"], "--local", "--json")
    assert res.returncode == 0 and json.loads(res.stdout)["result"]["scored"] == len(rows), res.stderr
    again = {r["id"]: r["scores"] for r in results.generation_rows(job["id"])}
    for r in rows:
        assert again[r["id"]]["concept"].keys() == r["scores"]["concept"].keys(), r["sampling"]
        assert again[r["id"]]["nll"] == pytest.approx(r["scores"]["nll"], abs=1e-5)
        for k, c in r["scores"]["concept"].items():
            assert again[r["id"]]["concept"][k]["mean"] == pytest.approx(c["mean"], rel=1e-4, abs=1e-4)


def _submitted(args: list[str]):
    """The typed request ``saejobs sweep ARGS`` would queue (nothing is queued)."""
    from unittest import mock

    from click.testing import CliRunner

    import saejobs.cli.submit_cmd as submit_cmd

    seen = []
    with mock.patch.object(submit_cmd, "enqueue", lambda request, **kw: seen.append(request)):
        r = CliRunner().invoke(submit_cmd.sweep, args)
    assert r.exit_code == 0, r.output
    return seen[0]


BASE = ["--sae", "gemma-2-2b/20-gemmascope-res-16k", "--feature", "1", "--strength", "2", "--prompt", "p"]


def test_the_python_client_preset_is_what_its_steer_completion_sends_by_default():
    """Checked against the published client itself (PyPI neuronpedia 1.2.1), not against a copy of its numbers."""
    import inspect

    from neuronpedia.requests.steer_request import SteerCompletionRequest

    sent = {k: p.default for k, p in inspect.signature(SteerCompletionRequest.steer).parameters.items()}
    r = _submitted(BASE + ["--preset", "neuronpedia-python"])
    assert (r.settings.temperature, r.settings.n_tokens, r.seeds, r.settings.strength_multiplier) == (
        sent["temperature"], sent["n_tokens"], (sent["seed"],), sent["strength_multiplier"])
    assert r.settings.sampling_semantics == "interp-engine" and r.settings.freq_penalty == 0.0


def test_the_steer_page_preset_and_explicit_options_winning_over_it():
    # apps/webapp/lib/utils/steer.ts at ebb8426: STEER_TEMPERATURE 0.5, STEER_N_COMPLETION_TOKENS 256,
    # STEER_STRENGTH_MULTIPLIER 1, STEER_SEED 16, STEER_METHOD SIMPLE_ADDITIVE, STEER_SPECIAL_TOKENS true
    r = _submitted(BASE + ["--preset", "neuronpedia"])
    s = r.settings
    assert (s.temperature, s.n_tokens, s.strength_multiplier, r.seeds, s.method, s.steer_special_tokens, s.normalize) == (
        0.5, 256, 1.0, (16,), "SIMPLE_ADDITIVE", True, False)
    mine = _submitted(BASE + ["--n-tokens", "12", "--seed", "3", "--preset", "neuronpedia", "--temperature", "0"])
    assert (mine.settings.n_tokens, mine.seeds, mine.settings.temperature, mine.settings.sampling_semantics) == (
        12, (3,), 0.0, "interp-engine")


# ---- Neuronpedia steers as sweeps (issue 28 item 5) ---------------------------------------------------

PUBLIC = {"modelId": "gemma-2-9b-it", "prompt": "Tell me a story",  # the "Pirate" preset's two layers, as /api/steer takes it
          "features": [{"modelId": "gemma-2-9b-it", "layer": "31-gemmascope-res-131k", "index": 77558, "strength": 66},
                       {"modelId": "gemma-2-9b-it", "layer": "9-gemmascope-res-131k", "index": 29917, "strength": 166}],
          "temperature": 0.5, "n_tokens": 48, "freq_penalty": 1.0, "seed": 16, "strength_multiplier": 2}


def test_a_public_api_body_becomes_a_two_layer_steer_with_its_settings():
    from saejobs.engine.neuronpedia_import import read

    got = read(PUBLIC, "pirate")
    assert [(i.direction.sae, i.direction.index, i.strength) for i in got.steers[0].interventions] == [
        ("gemma-2-9b-it/31-gemmascope-res-131k", 77558, 66.0), ("gemma-2-9b-it/9-gemmascope-res-131k", 29917, 166.0)]
    assert got.defaults == {"sampling_semantics": "interp-engine", "freq_penalty": 0.0, "temperature": 0.5,
                            "n_tokens": 48, "seeds": [16], "strengths": [2.0], "prompts": ["Tell me a story"]}
    assert got.notes == ["freq_penalty 1.0 left out: Neuronpedia's server does not apply it (interp-engine sampling)"]


def test_the_inference_servers_camel_case_body_and_its_chat():
    from saejobs.engine.neuronpedia_import import read

    body = {"prompt": [{"role": "user", "content": "Hi"}], "model": "gemma-2-2b", "steerMethod": "ORTHOGONAL_DECOMP",
            "normalizeSteering": True, "types": ["STEERED", "DEFAULT"], "nCompletionTokens": 20, "temperature": 0.0,
            "strengthMultiplier": 1.0, "freqPenalty": 0.0, "seed": 3, "steerSpecialTokens": False,
            "features": [{"model": "gemma-2-2b", "source": "20-gemmascope-res-16k", "index": 12082, "strength": 4.0}]}
    got = read(body)
    assert got.chats == [[{"role": "user", "content": "Hi"}]] and got.notes == []
    assert got.defaults["normalize"] is True and got.defaults["steer_special_tokens"] is False
    assert got.steers[0].interventions[0].method == "ORTHOGONAL_DECOMP"


@pytest.mark.parametrize("doc, says", [
    ({**PUBLIC, "features": [{"modelId": "m", "layer": "", "index": 1, "strength": 1, "steering_vector": [1.0]}]},
     "$.features[0]: an inline steering vector; save it as .npy"),
    ({"model": "m", "steer_method": "SIMPLE_ADDITIVE", "vectors": [{"steering_vector": [1.0], "strength": 1,
                                                                    "hook": "blocks.0.hook_resid_pre"}]},
     "$.vectors: inline steering vectors"),
    ({**{k: v for k, v in PUBLIC.items() if k != "prompt"}, "steeredChatMessages": [{"role": "user", "content": "a"}],
      "defaultChatMessages": [{"role": "user", "content": "b"}]}, "its STEERED and DEFAULT conversations differ"),
    ({**PUBLIC, "features": []}, "$.features: empty"),
    ({"hello": 1}, "neither a steer request body"),
    ([{"name": "Mine", "isUserVector": True, "features": []}], "a user's own vector preset"),
])
def test_what_cannot_be_reproduced_is_refused_with_the_reason(doc, says):
    from saejobs.engine.neuronpedia_import import read

    with pytest.raises(UsageError) as e:
        read(doc)
    assert says in str(e.value)


def test_presets_and_a_saved_steer():
    from saejobs.engine.neuronpedia_import import read

    # FEATURE_PRESETS["gemma-2-9b-it"] of hijohnnylin/neuronpedia@ebb8426 apps/webapp/app/api/steer/presets/route.tsx,
    # the TypeScript constant evaluated by node and written as JSON
    presets = json.loads((ROOT / "tests" / "data" / "neuronpedia-presets-gemma-2-9b-it.json").read_text())
    got = read({"featurePresets": presets})
    assert [s.name.split(" ", 1)[1] for s in got.steers][:3] == ["Cats", "Chinese", "Pirate"]
    pirate = got.steers[2].interventions
    assert [(i.direction.sae, i.direction.index, i.strength) for i in pirate] == [
        ("gemma-2-9b-it/31-gemmascope-res-131k", 77558, 66.0), ("gemma-2-9b-it/9-gemmascope-res-131k", 29917, 166.0)]
    assert got.defaults["seeds"] == [16] and got.defaults["n_tokens"] == 256  # the steer page's own defaults
    saved = {"id": "cm7cp78b900k51q95qdn01q1l", "inputText": "Hello", "settings": {
        "temperature": 0.5, "n_tokens": 64, "freq_penalty": 1, "seed": 16, "strength_multiplier": 1,
        "steer_special_tokens": True, "steer_method": "SIMPLE_ADDITIVE"},
        "features": [{"modelId": "gemma-2-9b-it", "layer": "9-gemmascope-res-131k", "index": "29917", "strength": 166}],
        "STEERED": {"raw": "x", "chatTemplate": [{"role": "user", "content": "Hello"},
                                                 {"role": "model", "content": "Arr"}]}}
    got = read(saved)
    assert got.steers[0].name == "cm7cp78b900k51q95qdn01q1l" and got.chats == [[{"role": "user", "content": "Hello"}]]
    assert got.steers[0].interventions[0].direction.index == 29917


def test_a_two_sae_steer_exports_as_the_published_clients_send_it_and_imports_back():
    from neuronpedia.np_feature import SteerFeature as F
    from neuronpedia.requests.steer_request import SteerCompletionRequest as PublicCompletion

    from saejobs.engine.neuronpedia_import import read
    from saejobs.engine.request import Settings
    from saejobs.tasks.neuronpedia import bodies
    from tests.test_neuronpedia_clients import SteerCompletionRequest, conforms

    a, b = "gemma-2-2b/20-gemmascope-res-16k", "gemma-2-2b/6-gemmascope-res-16k"
    features = [{"sae": a, "index": 12082, "strength": 40.0}, {"sae": b, "index": 100, "strength": -20.0}]
    s = {**Settings(temperature=0.5, n_tokens=24, sampling_semantics="interp-engine").to_json(), "steer": "x",
         "strength_multiplier": 2.0}
    gen = {"id": 1, "config_key": "k", "sae_id": a, "features": features, "sampling": s, "seed": 16,
           "prompt": "Once upon a time", "messages": None, "chat_template": None}
    out = bodies(gen)
    conforms(SteerCompletionRequest, out["inference"]["body"])
    assert [(f["source"], f["index"], f["strength"]) for f in out["inference"]["body"]["features"]] == [
        ("20-gemmascope-res-16k", 12082, 40.0), ("6-gemmascope-res-16k", 100, -20.0)]
    sent = []
    client = PublicCompletion(api_key="unused")
    client.send_request = lambda method, json: sent.append(json)
    client.steer_features("gemma-2-2b", [F(modelId="gemma-2-2b", source=f["sae"].split("/")[1], index=f["index"],
                                           strength=f["strength"]) for f in features], prompt="Once upon a time",
                          temperature=0.5, n_tokens=24, freq_penalty=0.0, seed=16, strength_multiplier=2.0)
    assert out["public"]["body"] == sent[0]
    back = read(out["public"]["body"], "x")  # and the body reads back as the same steer and multiplier
    assert [i.to_json() for i in back.steers[0].interventions] == features and back.defaults["strengths"] == [2.0]
    mixed = {**gen, "features": [features[0], {**features[1], "method": "ABLATE"}]}
    with pytest.raises(UsageError, match="a Neuronpedia request has one steer_method"):
        bodies(mixed)


def test_a_neuronpedia_body_runs_as_a_sweep_and_exports_back(home, tiny_gemma2_dir, tmp_path):  # noqa: F811
    a = make(home, d_model=64, d_sae=256, layer=1, sae_id="tiny-gemma-2/1-npres")
    b = make(home, d_model=64, d_sae=256, layer=3, seed=1, sae_id="tiny-gemma-2/3-npres")
    for s in (a, b):
        assert saejobs("download", s.id, "--source", str(s.mirror), "--local", "--quiet").returncode == 0
    body = {"modelId": "tiny-gemma-2", "prompt": "Hello there", "temperature": 0.0, "n_tokens": 48, "freq_penalty": 1.0,
            "seed": 7, "strength_multiplier": 3.0,
            "features": [{"modelId": "tiny-gemma-2", "layer": "1-npres", "index": 5, "strength": 10.0},
                         {"modelId": "tiny-gemma-2", "layer": "3-npres", "index": 9, "strength": -6.0}]}
    (tmp_path / "body.json").write_text(json.dumps(body))
    res = saejobs("sweep", "--from", str(tmp_path / "body.json"), "--n-tokens", "5", "--model", str(tiny_gemma2_dir),
                  "--local", "--json")
    assert res.returncode == 0, res.stderr
    assert "note: freq_penalty 1.0 left out" in res.stderr
    from saejobs.db import results

    rows = results.generation_rows(json.loads(res.stdout)["id"])
    steered = [r for r in rows if r["type"] == "STEERED"]
    assert len(rows) == 2 and steered[0]["seed"] == 7 and steered[0]["n_tokens"] <= 5
    out = json.loads(saejobs("neuronpedia", "request", steered[0]["config_key"][:12], "--json").stdout)
    sent = out["public"]["body"]
    assert sent["features"] == body["features"] and sent["prompt"] == "Hello there" and sent["seed"] == 7
    assert (sent["strength_multiplier"], sent["temperature"], sent["n_tokens"]) == (3.0, 0.0, 5)
