"""What the mutation check of ``engine/steering.py`` found untested (issue 25 item 4): the prompt's special
positions left unsteered in its forward pass only (``steer_special_tokens=False``), steering that follows the
activation's dtype and device, an additive delta computed once per batch, the precision of ``unit_vector``
(float32, then the input's dtype, as interp-engine), overflowing norms, and the messages word for word.
Expected values are worked out by hand or with plain torch here. ``meta`` tensors stand in for another
device on a CPU-only run: an operand left on the CPU is refused there as it would be on a GPU."""

from __future__ import annotations

import pytest
import torch

from saejobs.engine import steering
from saejobs.engine.errors import UsageError
from saejobs.engine.steering import BatchSteering, Steer, apply, prepare_vector, steer_method, term, unit_vector

ZERO_NORM = "has zero norm (or a non-finite one): it has no direction to normalise"
ROWS = [[Steer(torch.tensor([1.0, 0.0]), 2.0)], [Steer(torch.tensor([0.0, 1.0]), 3.0)]]
KEEP = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])  # (B, T_prompt), float32 as engine.sweep builds it


def test_masked_prompt_positions_are_unsteered_in_the_prompt_pass_only():
    s = BatchSteering(ROWS, 2, "SIMPLE_ADDITIVE", prompt_keep=KEEP)
    prompt = s(torch.zeros(2, 3, 2))
    assert prompt.tolist() == [[[2.0, 0.0], [0.0, 0.0], [2.0, 0.0]],
                               [[0.0, 0.0], [0.0, 3.0], [0.0, 3.0]]]
    for _ in range(2):  # each generated token: every row steered
        assert s(torch.zeros(2, 1, 2)).tolist() == [[[2.0, 0.0]], [[0.0, 3.0]]]


def test_masked_prompt_positions_with_orthogonal_decomposition():
    # act · v̂ per position, times (coeff - 1) along v̂; masked positions keep their activation
    act = torch.tensor([[[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]], [[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]])
    s = BatchSteering(ROWS, 2, "ORTHOGONAL_DECOMP", prompt_keep=KEEP)
    assert s(act).tolist() == [[[2.0, 1.0], [2.0, 2.0], [6.0, 3.0]],
                               [[1.0, 1.0], [2.0, 6.0], [3.0, 9.0]]]
    assert s(torch.tensor([[[1.0, 1.0]], [[1.0, 1.0]]])).tolist() == [[[2.0, 1.0]], [[1.0, 3.0]]]


def test_a_bfloat16_activation_stays_bfloat16_with_a_float32_mask():
    act = torch.ones(2, 3, 2, dtype=torch.bfloat16)
    s = BatchSteering(ROWS, 2, "SIMPLE_ADDITIVE", prompt_keep=KEEP)
    first, then = s(act), s(act[:, :1])
    assert first.dtype == then.dtype == torch.bfloat16
    assert first.tolist() == [[[3.0, 1.0], [1.0, 1.0], [3.0, 1.0]], [[1.0, 1.0], [1.0, 4.0], [1.0, 4.0]]]
    assert then.tolist() == [[[3.0, 1.0]], [[1.0, 4.0]]]


def test_one_steering_serves_activations_of_two_dtypes_each_in_its_own():
    s = BatchSteering(ROWS, 2, "SIMPLE_ADDITIVE")
    assert s(torch.zeros(2, 1, 2)).dtype == torch.float32
    half = s(torch.zeros(2, 1, 2, dtype=torch.bfloat16))
    assert half.dtype == torch.bfloat16 and half.tolist() == [[[2.0, 0.0]], [[0.0, 3.0]]]


@pytest.mark.parametrize("method", ["SIMPLE_ADDITIVE", "ORTHOGONAL_DECOMP"])
def test_steering_runs_on_the_activations_device(method):
    s = BatchSteering(ROWS, 2, method, prompt_keep=KEEP)  # built on the CPU, as engine.sweep builds it
    for t in (3, 1):
        out = s(torch.zeros(2, t, 2, device="meta"))
        assert out.device.type == "meta" and out.shape == (2, t, 2)


def test_an_additive_delta_is_computed_once_per_batch_and_an_orthogonal_one_per_pass(monkeypatch):
    calls = []
    real = steering.delta

    def counted(*a):
        calls.append(a[0])
        return real(*a)

    monkeypatch.setattr(steering, "delta", counted)
    rows = [[Steer(torch.tensor([1.0, 0.0]), 2.0), Steer(torch.tensor([0.0, 1.0]), 1.0)]]
    additive = BatchSteering(rows, 2, "SIMPLE_ADDITIVE")
    for _ in range(3):
        assert additive(torch.zeros(1, 1, 2)).tolist() == [[[2.0, 1.0]]]
    assert len(calls) == 2  # one per slot, at the first pass
    calls.clear()
    orthogonal = BatchSteering(rows, 2, "ORTHOGONAL_DECOMP")
    for _ in range(3):
        assert orthogonal(torch.ones(1, 1, 2)).tolist() == [[[2.0, 1.0]]]
    assert len(calls) == 6  # it reads the activation: every slot, every pass


def test_an_empty_batch_steers_nothing():
    s = BatchSteering([], 4, "SIMPLE_ADDITIVE")
    assert not s.active
    assert s(torch.zeros(0, 2, 4)).shape == (0, 2, 4)


def test_apply_keeps_the_activations_dtype():
    act = torch.ones(1, 2, dtype=torch.bfloat16)
    out = apply(act, [Steer(torch.tensor([0.5, 1.0]), 2.0)])
    assert out.dtype == torch.bfloat16 and out.tolist() == [[2.0, 3.0]]


def test_prepare_vector_gives_a_flat_float32_vector():
    got = prepare_vector(torch.tensor([[3.0, 0.0], [4.0, 0.0]], dtype=torch.float64), False)
    assert got.dtype == torch.float32 and got.tolist() == [3.0, 0.0, 4.0, 0.0]
    unit = prepare_vector(torch.tensor([3.0, 4.0], dtype=torch.bfloat16), True)
    assert unit.dtype == torch.float32 and torch.equal(unit, torch.tensor([0.6, 0.8]))


def test_unit_vector_divides_in_float32_and_returns_the_input_dtype():
    got = unit_vector(torch.ones(3, dtype=torch.float64))
    # the float32 quotient, widened: not float64's own 1/sqrt(3)
    expected = (torch.ones(3) / torch.tensor(3.0).sqrt()).to(torch.float64)
    assert got.dtype == torch.float64 and torch.equal(got, expected)
    assert got[0].item() != 3 ** -0.5
    half = unit_vector(torch.tensor([3.0, 0.0, 4.0], dtype=torch.bfloat16))
    assert half.dtype == torch.bfloat16 and torch.equal(half, torch.tensor([0.6, 0.0, 0.8]).to(torch.bfloat16))


def test_a_vector_whose_norm_overflows_float32_has_no_direction():
    big = torch.tensor([3e38, 3e38])  # each value finite in float32, the norm is not
    with pytest.raises(UsageError) as e:
        unit_vector(big)
    assert str(e.value) == f"steering vector {ZERO_NORM}"


def test_vector_messages_name_the_vector():
    for call in (lambda: prepare_vector(torch.zeros(3), True), lambda: unit_vector(torch.zeros(3)),
                 lambda: BatchSteering([[Steer(torch.zeros(3), 2.0)]], 3, "ORTHOGONAL_DECOMP")):
        with pytest.raises(UsageError) as e:
            call()
        assert str(e.value) == f"steering vector {ZERO_NORM}"
    with pytest.raises(UsageError) as e:
        prepare_vector(torch.zeros(3), True, "feature 7 of sae-x")
    assert str(e.value) == f"feature 7 of sae-x {ZERO_NORM}"
    with pytest.raises(UsageError) as e:
        prepare_vector(torch.tensor([1.0, float("inf")]), False)
    assert str(e.value) == "steering vector has non-finite values"


def test_an_unknown_method_lists_the_known_ones():
    with pytest.raises(UsageError) as e:
        steer_method("PROJECTION")
    assert str(e.value) == ("unknown steering method 'PROJECTION'; expected one of SIMPLE_ADDITIVE, "
                            "ORTHOGONAL_DECOMP, PROJECTION_CAP, NORM_SCALED_ADD, ABLATE, SWAP")


def test_every_method_has_its_case_in_term_and_delta():
    """A member added without its case in ``term`` or ``delta`` (SteerMethod's docstring) fails here."""
    v, act = torch.tensor([1.0, 0.0]), torch.ones(1, 1, 2)
    for m in steering.SteerMethod:
        p = term(m, Steer(v, 2.0, m, min=0.0, max=0.5, target=torch.tensor([0.0, 1.0])))
        assert steering.delta(m, act, p).shape[-1] == 2


@pytest.mark.parametrize("method, extra", [("ORTHOGONAL_DECOMP", {}), ("PROJECTION_CAP", {"max": 1.0}), ("ABLATE", {}),
                                           ("SWAP", {"target": torch.ones(2)})])
def test_a_chunk_defers_every_vector_check_to_one_verify(method, extra):
    """With a ``Checks`` collector nothing is read from the device while a chunk is prepared (a zero direction,
    a zero swap target, a vector to normalise): the first failure is raised by ``verify``, word for word."""
    from saejobs.engine.steering import Checks

    for source, target in ((torch.zeros(2), None), (torch.ones(2), torch.zeros(2))):
        if target is not None and method != "SWAP":
            continue
        checks = Checks()
        kw = {**extra, **({"target": target} if target is not None else {})}
        BatchSteering([[Steer(source, 2.0, method, **kw)]], 2, checks=checks)  # no raise here
        with pytest.raises(UsageError) as e:
            checks.verify()
        what = "swap target" if target is not None else "steering vector"
        assert str(e.value) == f"{what} {ZERO_NORM}"
    checks = Checks()
    assert prepare_vector(torch.zeros(2), True, "feature 3", checks).shape == (2,)  # deferred
    with pytest.raises(UsageError) as e:
        checks.verify()
    assert str(e.value) == f"feature 3 {ZERO_NORM}"


def test_swap_without_a_target_says_so_word_for_word():
    with pytest.raises(UsageError) as e:
        term("SWAP", Steer(torch.ones(2), 0.0, "SWAP"))
    assert str(e.value) == "SWAP needs a target vector to move the component onto"


@pytest.mark.parametrize("method", list(steering.SteerMethod))
def test_only_a_zero_strength_addition_adds_nothing(method):
    """``adds_nothing`` (a row generated unsteered, scored from its own generation): an additive term of
    coefficient 0, named or the batch's default, and nothing else; the batch adds exactly zero for it, every
    activation's value unchanged. The other methods change an activation along v at coefficient 0, except a
    norm-scaled addition, which adds 0·‖h‖·v (zero only while ‖h‖ is finite: not claimed)."""
    v = torch.tensor([0.6, 0.8])
    zero, named = Steer(v, 0.0), Steer(v, 0.0, method)
    assert zero.adds_nothing(method) is (method is steering.SteerMethod.SIMPLE_ADDITIVE)
    assert named.adds_nothing() is named.adds_nothing("ABLATE") is (method is steering.SteerMethod.SIMPLE_ADDITIVE)
    assert not Steer(v, 1e-30).adds_nothing() and not Steer(v, -1.0).adds_nothing()
    act = torch.tensor([[[3.0, 4.0], [-2.5, 1e-30]]])
    target = None if method is not steering.SteerMethod.SWAP else torch.tensor([1.0, 0.0])
    out = BatchSteering([[Steer(v, 0.0, method, max=0.0, target=target)]], 2)(act.clone())
    if named.adds_nothing():
        assert torch.equal(out, act)
    elif method is not steering.SteerMethod.NORM_SCALED_ADD:
        assert not torch.equal(out, act)


def test_a_chunks_checks_start_with_no_prepared_vector():
    """``Checks.prepared`` (each distinct vector of a chunk prepared once, ``engine.sweep``) starts empty and
    holds what the chunk puts there."""
    from saejobs.engine.steering import Checks

    checks = Checks()
    assert ("feature", None, 3, True) not in checks.prepared and len(checks.prepared) == 0
    checks.prepared[("feature", None, 3, True)] = ("blocks.6.hook_resid_post", torch.ones(2))
    assert list(checks.prepared) == [("feature", None, 3, True)]
