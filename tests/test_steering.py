"""Steering arithmetic against hand computation (Neuronpedia's formulas, docs/reference.md)."""

from __future__ import annotations

import pytest
import torch

from saejobs.engine.errors import UsageError
from saejobs.engine.steering import BatchSteering, Steer, apply, coefficient, prepare_vector


def test_simple_additive_with_and_without_normalisation():
    act = torch.tensor([[[1.0, 2.0, 3.0]]])
    v = torch.tensor([3.0, 0.0, 4.0])  # norm 5
    coeff = coefficient(strength=10.0, strength_multiplier=2.0)
    assert coeff == 20.0
    raw = BatchSteering([[Steer(prepare_vector(v, False), coeff)]], 3, "SIMPLE_ADDITIVE")(act)
    assert raw.tolist() == [[[61.0, 2.0, 83.0]]]  # act + 20 * (3, 0, 4)
    unit = BatchSteering([[Steer(prepare_vector(v, True), coeff)]], 3, "SIMPLE_ADDITIVE")(act)
    torch.testing.assert_close(unit, torch.tensor([[[13.0, 2.0, 19.0]]]))  # act + 20 * (0.6, 0, 0.8)


def test_orthogonal_decomp():
    act = torch.tensor([[[1.0, 2.0, 3.0], [0.0, 1.0, 0.0]]])
    v = torch.tensor([0.0, 0.0, 2.0])
    # P = v v^T / |v|^2 projects on the z axis; act @ (I-P)^T + coeff * act @ P^T
    got = BatchSteering([[Steer(v, 4.0, "ORTHOGONAL_DECOMP")]], 3, "ORTHOGONAL_DECOMP")(act)
    assert got.tolist() == [[[1.0, 2.0, 12.0], [0.0, 1.0, 0.0]]]
    P = torch.outer(v, v) / (v @ v)
    ref = act @ (torch.eye(3) - P).T + 4.0 * act @ P.T
    torch.testing.assert_close(got, ref)
    torch.testing.assert_close(apply(act, [Steer(v, 4.0, "ORTHOGONAL_DECOMP")]), ref)


def test_rows_steer_independently_and_empty_rows_are_untouched():
    torch.manual_seed(0)
    act = torch.randn(3, 5, 8)
    a, b = torch.randn(8), torch.randn(8)
    rows = [[Steer(a, 2.0)], [], [Steer(a, 1.0), Steer(b, -3.0)]]
    got = BatchSteering(rows, 8, "SIMPLE_ADDITIVE")(act)
    assert torch.equal(got[1], act[1])
    for i in (0, 2):
        torch.testing.assert_close(got[i], apply(act[i], rows[i]))


def test_several_features_apply_one_after_another_for_orthogonal():
    torch.manual_seed(1)
    act = torch.randn(1, 4, 6)
    a, b = torch.randn(6), torch.randn(6)
    steers = [Steer(a, 3.0, "ORTHOGONAL_DECOMP"), Steer(b, 0.5, "ORTHOGONAL_DECOMP")]
    got = BatchSteering([steers], 6, "ORTHOGONAL_DECOMP")(act)
    step1 = act + (3.0 - 1) * ((act @ a) / (a @ a)).unsqueeze(-1) * a
    step2 = step1 + (0.5 - 1) * ((step1 @ b) / (b @ b)).unsqueeze(-1) * b
    torch.testing.assert_close(got, step2)


def test_bad_vectors():
    with pytest.raises(UsageError, match="zero norm"):
        prepare_vector(torch.zeros(4), True)
    with pytest.raises(UsageError, match="non-finite"):
        prepare_vector(torch.tensor([1.0, float("nan")]), False)
    with pytest.raises(UsageError, match="width 8"):
        BatchSteering([[Steer(torch.ones(4), 1.0)]], 8, "SIMPLE_ADDITIVE")
    with pytest.raises(UsageError, match="unknown steering method"):
        BatchSteering([[]], 8, "PROJECTION")


def test_config_keys_survive_new_settings_at_their_defaults():
    """A sweep stored before the sampling/special-token settings existed keeps its keys (no re-run, no duplicates)."""
    import hashlib
    import json

    from saejobs.engine.request import SweepConfig, Settings, config_key

    cfg = SweepConfig("STEERED", ({"index": 1, "strength": 2.0},), "p", 42)
    before = {"method": "SIMPLE_ADDITIVE", "normalize": False, "strength_multiplier": 1.0, "n_tokens": 32,
              "temperature": 0.0, "freq_penalty": 0.0, "n_logprobs": 0}
    key = hashlib.sha256(json.dumps({**cfg.to_json(), "settings": before, "steering": "s"},
                                    sort_keys=True).encode()).hexdigest()[:32]
    assert config_key(cfg, Settings(), "s") == key
    assert config_key(cfg, Settings(steer_special_tokens=False), "s") != key
    assert config_key(cfg, Settings(sampling_semantics="interp-engine"), "s") != key


def test_mixing_the_two_sampling_semantics_is_refused():
    from saejobs.engine.request import Settings

    with pytest.raises(UsageError, match="--sampling interp-engine"):
        Settings(presence_penalty=1.0)
    with pytest.raises(UsageError, match="presence-penalty"):
        Settings(sampling_semantics="interp-engine", freq_penalty=2.0)


# ---- every interp-engine operation, against interp-engine's own delta functions (fast; the model-level
# equality is tests/fidelity/test_steer_operations.py) ------------------------------------------------

def _ie(method: str, act, v, coeff=0.0, **kw):
    """What interp-engine 1.14's ``steer_delta`` adds for one spec (its code, not saejobs')."""
    from interp_engine.steer import SteerSpec, steer_delta

    spec = SteerSpec(v, 0, coeff, {"SIMPLE_ADDITIVE": "additive", "ORTHOGONAL_DECOMP": "orthogonal",
                                   "PROJECTION_CAP": "projection_cap", "NORM_SCALED_ADD": "norm_scaled_add",
                                   "ABLATE": "ablate", "SWAP": "swap"}[method], **kw)
    return steer_delta(spec, act, v.to(act))


OPS = [("SIMPLE_ADDITIVE", 3.5, {}), ("ORTHOGONAL_DECOMP", -2.0, {}), ("PROJECTION_CAP", 0.0, {"min": -0.3, "max": 0.4}),
       ("PROJECTION_CAP", 0.0, {"max": -1.0}), ("PROJECTION_CAP", 0.0, {"min": 2.0}),
       ("NORM_SCALED_ADD", 0.7, {}), ("NORM_SCALED_ADD", 4.0, {"max_fraction": 0.25}), ("ABLATE", 0.0, {}),
       ("SWAP", 0.0, {"target": "t"})]


@pytest.mark.parametrize("method, coeff, kw", OPS, ids=[f"{m}-{i}" for i, (m, _, _) in enumerate(OPS)])
def test_each_operation_adds_what_interp_engine_adds(method, coeff, kw):
    g = torch.Generator().manual_seed(len(method))
    act, v, t = torch.randn(1, 5, 16, generator=g) * 3, torch.randn(16, generator=g), torch.randn(16, generator=g)
    kw = {k: (t if x == "t" else x) for k, x in kw.items()}
    ours = BatchSteering([[Steer(v, coeff, method, **kw)]], 16)(act)
    assert torch.equal(ours, act + _ie(method, act, v, coeff, **kw))
    assert not torch.equal(ours, act)  # the case moves something


def test_rows_of_different_operations_in_one_batch_each_equal_to_the_row_alone():
    g = torch.Generator().manual_seed(9)
    act = torch.randn(len(OPS) + 1, 3, 16, generator=g) * 3
    rows = []
    for m, c, kw in OPS:
        v, t = torch.randn(16, generator=g), torch.randn(16, generator=g)
        rows.append([Steer(v, c, m, **{k: (t if x == "t" else x) for k, x in kw.items()}),
                     Steer(torch.randn(16, generator=g), 1.5)])  # then an additive term: composition in order
    rows.append([])  # a DEFAULT row
    batch = BatchSteering(rows, 16)
    out = batch(act)
    for b, row in enumerate(rows):
        alone = BatchSteering([row], 16)(act[b:b + 1]) if row else act[b:b + 1]
        assert torch.equal(out[b:b + 1], alone), b
        if row:
            first = act[b:b + 1] + _ie(row[0].method, act[b:b + 1], row[0].vector, row[0].coeff,
                                       **{k: getattr(row[0], k) for k in ("min", "max", "target") if getattr(row[0], k) is not None},
                                       **({"max_fraction": row[0].max_fraction} if row[0].method == "NORM_SCALED_ADD" else {}))
            assert torch.equal(out[b:b + 1], first + 1.5 * row[1].vector)
    assert batch.active and not BatchSteering([[], []], 16).active


def test_swap_without_a_target_and_a_zero_target_are_refused():
    with pytest.raises(UsageError, match="SWAP needs a target vector"):
        BatchSteering([[Steer(torch.ones(4), 0.0, "SWAP")]], 4)
    with pytest.raises(UsageError, match="swap target has zero norm"):
        BatchSteering([[Steer(torch.ones(4), 0.0, "SWAP", target=torch.zeros(4))]], 4)
    with pytest.raises(UsageError, match="width 4"):
        BatchSteering([[Steer(torch.ones(4), 0.0, "SWAP", target=torch.ones(5))]], 4)


def test_deferred_checks_raise_the_first_failure_once_for_a_whole_chunk():
    from saejobs.engine.steering import Checks, unit_vector

    checks = Checks()
    prepare_vector(torch.ones(3), True, "a", checks)
    prepare_vector(torch.tensor([1.0, float("nan")]), False, "b", checks)
    unit_vector(torch.zeros(3), "c", checks)
    with pytest.raises(UsageError) as e:
        checks.verify()
    assert str(e.value) == "b has non-finite values"
    fine = Checks()
    prepare_vector(torch.ones(3), True, "a", fine)
    fine.verify()
    Checks().verify()  # nothing to check
