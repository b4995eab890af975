"""Named steers in the typed request (issue 28), torch-free and fast: interventions validated once, steer
files, the command line's terms, the grid of steers × strength multipliers × prompts × seeds and its round
trip through the job row, and what the SAEs a steer names must satisfy (checked against the registry).
These are ``engine/request.py``'s and ``engine/interventions.py``'s mutation tests too (.ci/mutation)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from saejobs.engine.errors import UsageError
from saejobs.engine.interventions import Direction, Intervention, NamedSteer, load_steers, parse_feature
from saejobs.engine.request import Settings, SweepRequest


@pytest.mark.parametrize("bad, says", [
    ({"sae": "s", "index": 1, "method": "PUSH"}, "unknown steering method 'PUSH'; expected one of SIMPLE_ADDITIVE, "
                                                 "ORTHOGONAL_DECOMP, PROJECTION_CAP, NORM_SCALED_ADD, ABLATE, SWAP"),
    ({"sae": "s", "index": 1, "method": "SWAP"}, "SWAP needs a 'target' ({\"sae\", \"index\"} or {\"vector\"}) to "
                                                 "move the component onto"),
    ({"sae": "s", "index": 1, "method": "PROJECTION_CAP", "min": 5, "max": 1},
     "projection cap min 5.0 is above its max 1.0"),
    ({"sae": "s", "index": 1, "min": 0}, "'min' and 'max' are PROJECTION_CAP's bounds; give \"method\": \"PROJECTION_CAP\""),
    ({"sae": "s", "index": 1, "method": "NORM_SCALED_ADD", "max_fraction": 0}, "max_fraction must be above 0, not 0.0"),
    ({"sae": "s", "index": 1, "target": {"sae": "s", "index": 2}}, "'target' is SWAP's; give \"method\": \"SWAP\""),
    ({"sae": "s", "index": 1, "hook": "blocks.1.hook_resid_pre"}, "a feature steers at its SAE's hook; 'hook' goes "
                                                                  "with a 'vector'"),
    ({"vector": "v@1", "hook": "blocks.1.hook_resid_mid"}, "unknown hook 'blocks.1.hook_resid_mid'"),
    ({"sae": "s", "index": 1, "vector": "v@1"}, "an intervention names a feature ('sae' and 'index') or a 'vector', "
                                                "exactly one"),
    ({"sae": "s", "index": -1}, "feature index must be an integer >= 0, not -1"),
    ({"sae": "s", "index": 1, "strength": float("inf")}, "strength must be a finite number, not inf"),
    ({"sae": "s", "index": 1, "scale": 2}, "unknown key 'scale'"),
])
def test_a_bad_intervention_says_what_is_wrong(bad, says):
    with pytest.raises(UsageError) as e:
        Intervention.from_json(bad, "steer 'x'")
    assert str(e.value).startswith(f"steer 'x': {says}"), str(e.value)


def test_command_line_terms_and_their_mistakes():
    it = parse_feature("gemma-2-2b/20-gemmascope-res-16k:1234@-40.5")
    assert it == Intervention(Direction("gemma-2-2b/20-gemmascope-res-16k", 1234), -40.5)
    for bad in ("gemma-2-2b/20-gemmascope-res-16k@4", "1234@5", "s:x@1", "s:1@big"):
        with pytest.raises(UsageError):
            parse_feature(bad)


def test_steer_files_in_json_and_yaml_name_vectors_by_content(tmp_path):
    np.save(tmp_path / "v.npy", np.ones(4, np.float32))
    seen = []

    def label(p):
        seen.append(Path(p).resolve())
        return f"{Path(p).name}@abc"

    body = {"pirate": [{"sae": "a", "index": 3, "strength": 66}, {"sae": "b", "index": 9, "strength": 166.0}],
            "capped": [{"vector": "v.npy", "hook": "blocks.2.hook_resid_pre", "method": "PROJECTION_CAP", "max": 1},
                       {"sae": "a", "index": 1, "method": "SWAP", "target": {"vector": "v.npy"}}]}
    (tmp_path / "s.json").write_text(json.dumps(body))
    (tmp_path / "s.yaml").write_text("pirate:\n  - {sae: a, index: 3, strength: 66}\n  - {sae: b, index: 9, strength: 166.0}\n"
                                     "capped:\n  - {vector: v.npy, hook: blocks.2.hook_resid_pre, method: PROJECTION_CAP, max: 1}\n"
                                     "  - {sae: a, index: 1, method: SWAP, target: {vector: v.npy}}\n")
    a, b = load_steers(tmp_path / "s.json", label), load_steers(tmp_path / "s.yaml", label)
    assert a == b and [s.name for s in a] == ["pirate", "capped"]
    assert a[1].interventions[0].direction.vector == "v.npy@abc" and a[1].interventions[1].target.vector == "v.npy@abc"
    assert set(seen) == {(tmp_path / "v.npy").resolve()}
    (tmp_path / "bad.yaml").write_text("pirate: [\n")
    with pytest.raises(UsageError, match=r"bad.yaml: not readable as YAML"):
        load_steers(tmp_path / "bad.yaml", label)


def steers_request(**kw) -> SweepRequest:
    st = (NamedSteer("two", (Intervention(Direction("a", 1), 10.0), Intervention(Direction("b", 2), -4.0, "ABLATE"))),
          NamedSteer("one", (Intervention(Direction("a", 5), 3.0),)))
    return SweepRequest(**{"sae": "a", "steers": st, "strengths": (1.0, 2.5), "prompts": ("p", "q"), "seeds": (1, 2),
                           **kw})


def test_the_grid_is_steers_by_multipliers_by_inputs_by_seeds_and_round_trips():
    r = steers_request()
    configs = r.configs("x")
    assert r.size() == len(configs) == 2 * 2 * (1 + 2 * 2)
    steered = [c for c in configs if c.type == "STEERED"]
    assert [(c.steer, c.multiplier) for c in steered[::4]] == [("two", 1.0), ("two", 2.5), ("one", 1.0), ("one", 2.5)]
    assert steered[0].features == ({"sae": "a", "index": 1, "strength": 10.0},
                                   {"sae": "b", "index": 2, "strength": -4.0, "method": "ABLATE"})
    assert len({c.key for c in configs}) == len(configs)
    again = SweepRequest.from_params(json.loads(json.dumps(r.to_params())))
    assert again == r and [c.key for c in again.configs("x")] == [c.key for c in configs]
    assert [c.key for c in r.configs("x", 3, 9)] == [c.key for c in configs[3:9]]  # a shard plans its slice alone
    assert SweepRequest(sae="a", steers=r.steers, prompts=("p",)).strengths == (1.0,)  # multiplier 1 by default


@pytest.mark.parametrize("kw, says", [
    ({"settings": Settings(strength_multiplier=2.0)},
     "with named steers --strength gives the strength multipliers; leave --strength-multiplier at 1"),
    ({"steers": (NamedSteer("a", (Intervention(Direction("a", 1)),)),) * 2}, "two steers have one name"),
    ({"steers": (NamedSteer("a", (Intervention(Direction(vector="v@1"), hook="blocks.1.hook_resid_post"),)),)},
     "steer 'a' names vector v@1, which the sweep does not carry"),
])
def test_bad_steer_requests(kw, says):
    with pytest.raises(UsageError) as e:
        steers_request(**kw)
    assert str(e.value).startswith(says)




def test_the_saes_a_steer_names_are_checked_against_the_registry():
    from saejobs.engine import registry

    a, b, other = "gemma-2-2b/20-gemmascope-res-16k", "gemma-2-2b/6-gemmascope-res-16k", "gemma-3-1b/7-gemmascope-2-res-16k"

    def req(*its, vectors=()):
        return SweepRequest(sae=a, steers=(NamedSteer("x", its),), prompts=("p",), steer_vectors=vectors)

    good = req(Intervention(Direction(b, 16383), 1.0), Intervention(Direction(a, 0), 1.0, "SWAP", target=Direction(b, 3)),
               Intervention(Direction(None, 5)))
    good.check_steers(registry.get)
    assert good.steer_saes() == [b]
    for bad, says in [
        (req(Intervention(Direction(other, 1))), f"steer 'x': {other} is an SAE of gemma-3-1b; the sweep steers "
                                                 f"gemma-2-2b ({a})"),
        (req(Intervention(Direction(b, 16384))), f"steer 'x': feature 16384 is out of range for {b} (d_sae 16384)"),
        (req(Intervention(Direction(a, 1), 1.0, "SWAP", target=Direction(b, 20000))),
         f"steer 'x': feature 20000 is out of range for {b} (d_sae 16384)"),
    ]:
        with pytest.raises(UsageError) as e:
            bad.check_steers(registry.get)
        assert str(e.value) == says


def test_a_vector_hook_past_the_models_layers_and_one_of_an_unlisted_model():
    from saejobs.engine.request import Vector

    v = Vector("/nowhere/v.npy", "ab" * 32)
    it = Intervention(Direction(vector=v.label), 1.0, hook="blocks.26.hook_resid_pre")
    r = SweepRequest(sae="gemma-2-2b/20-gemmascope-res-16k", steers=(NamedSteer("x", (it,)),), prompts=("p",),
                     steer_vectors=(v,))
    from saejobs.engine import registry

    with pytest.raises(UsageError) as e:
        r.check_steers(registry.get)
    assert str(e.value) == "steer 'x': hook blocks.26.hook_resid_pre is past gemma-2-2b's layers (0..25)"
    ok = SweepRequest(sae="gemma-2-2b/20-gemmascope-res-16k", prompts=("p",), steer_vectors=(v,),
                      steers=(NamedSteer("x", (Intervention(Direction(vector=v.label), 1.0, hook="blocks.25.hook_resid_pre"),)),))
    ok.check_steers(registry.get)
    from saejobs.engine.request import _model_layers

    assert _model_layers("gemma-2-2b") == 26 and _model_layers("no-such-model") is None


def test_vector_steers_round_trip_and_the_smaller_rules(tmp_path):
    from saejobs.engine.request import Vector

    np.save(tmp_path / "v.npy", np.ones(4, np.float32))
    v = Vector.of(tmp_path / "v.npy")
    it = Intervention(Direction(vector=v.label), 2.0, "PROJECTION_CAP", hook="blocks.3.hook_resid_pre", min=-1.0)
    r = SweepRequest(sae="a", steers=[NamedSteer("v", (it,))], prompts=("p",), steer_vectors=[v, v], combine=True)
    assert isinstance(r.steers, tuple) and r.steer_vectors == (v,)
    params = json.loads(json.dumps(r.to_params()))
    assert params["steer_vectors"] == [{"path": v.path, "sha256": v.sha256}]
    again = SweepRequest.from_params(params)
    assert again == r and again.steer_vectors[0].path == v.path
    configs = r.configs("x")  # --combine groups the classic features only; a steer is its own group
    assert r.size() == len(configs) == 2 and configs[1].steer == "v" and configs[1].multiplier == 1.0
    assert "steers" not in SweepRequest(sae="a", features=(1,), strengths=(1.0,), prompts=("p",)).to_params()
    with pytest.raises(UsageError) as e:
        Settings(method="SWAP")
    assert str(e.value) == ("SWAP moves a direction onto a target, which each intervention names: give it in a steer "
                            "file (--steers FILE), not as the sweep's --method")
