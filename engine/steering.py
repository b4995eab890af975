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
- ``steer_special_tokens=False`` leaves the prompt's special-token positions (BOS, ...) unsteered in
  the prompt's forward pass; generated tokens are steered.

The arithmetic is written as interp-engine 1.14 (``interp_engine/steer.py``: ``steer_delta``,
``OrthogonalProjector.delta``, ``unit_vector``), which Neuronpedia's server now runs, operation for
operation, so that greedy tokens agree exactly rather than to rounding (tests/fidelity).

Every method is a delta, so a batch whose rows steer differently (or not at all: DEFAULT rows) is
one tensor expression per feature slot, with a 0/1 mask for rows that have fewer features. This is
the shape interp-engine uses too.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.errors import UsageError

METHODS = ("SIMPLE_ADDITIVE", "ORTHOGONAL_DECOMP")


@dataclass(frozen=True)
class Steer:
    """One steering term: a direction and its coefficient (already multiplied out)."""

    vector: torch.Tensor  # (d,)
    coeff: float
    method: str = "SIMPLE_ADDITIVE"


def prepare_vector(vector: torch.Tensor, normalize: bool, what: str = "steering vector") -> torch.Tensor:
    v = vector.detach().to(torch.float32).flatten()
    if not torch.isfinite(v).all():
        raise UsageError(f"{what} has non-finite values")
    return unit_vector(v, what) if normalize else v


def coefficient(strength: float, strength_multiplier: float) -> float:
    return float(strength_multiplier) * float(strength)


def apply(act: torch.Tensor, steers: list[Steer]) -> torch.Tensor:
    """One row's (or a whole batch's) steering, in Neuronpedia's order. Reference for the batched path."""
    for s in steers:
        act = act + _delta(act, s.vector.to(act), s.coeff, s.method)
    return act


def _delta(act: torch.Tensor, v: torch.Tensor, coeff, method: str) -> torch.Tensor:
    if method == "SIMPLE_ADDITIVE":
        return coeff * v
    if method == "ORTHOGONAL_DECOMP":
        unit = unit_vector(v).to(act)
        return (coeff - 1.0) * (act * unit).sum(dim=-1, keepdim=True) * unit
    raise UsageError(f"unknown steering method '{method}'; expected one of {', '.join(METHODS)}")


def unit_vector(v: torch.Tensor, what: str = "steering vector") -> torch.Tensor:
    """``v / ‖v‖`` in float32, in ``v``'s dtype (interp-engine's ``unit_vector``)."""
    v32 = v.to(torch.float32)
    norm = torch.linalg.vector_norm(v32)
    if norm == 0 or not torch.isfinite(norm) or not torch.isfinite(v32).all():
        raise UsageError(f"{what} has zero norm (or a non-finite one): it has no direction to normalise")
    return (v32 / norm).to(v.dtype)


class BatchSteering:
    """Per-row steering for a batch: row b applies its own list of terms; rows with none are untouched.

    Terms are stacked into slots: ``vectors`` (slots, B, d), ``coeffs`` and ``mask`` (slots, B). A
    missing term has mask 0, so the update is ``act + mask * delta`` — exact zero for that row.
    """

    def __init__(self, rows: list[list[Steer]], d: int, method: str, prompt_keep: torch.Tensor | None = None):
        """``prompt_keep`` (B, T_prompt) of 0/1: positions of the prompt's forward pass to steer."""
        if method not in METHODS:
            raise UsageError(f"unknown steering method '{method}'; expected one of {', '.join(METHODS)}")
        self.method = method
        slots = max((len(r) for r in rows), default=0)
        self.vectors = torch.zeros(slots, len(rows), d)  # ORTHOGONAL_DECOMP: the unit vector
        self.coeffs = torch.zeros(slots, len(rows))  # ORTHOGONAL_DECOMP: coeff - 1
        self.mask = torch.zeros(slots, len(rows))
        for b, row in enumerate(rows):
            for k, s in enumerate(row):
                if s.vector.numel() != d:
                    raise UsageError(f"steering vector has {s.vector.numel()} values; the hook has width {d}")
                if method == "ORTHOGONAL_DECOMP":  # (coeff - 1) in double, then float32: as interp-engine rounds it
                    self.vectors[k, b], self.coeffs[k, b] = unit_vector(s.vector), s.coeff - 1.0
                else:
                    self.vectors[k, b], self.coeffs[k, b] = s.vector, s.coeff
                self.mask[k, b] = 1.0
        self.prompt_keep = prompt_keep
        self._prompt_done = False
        self._cache: dict = {}

    def _on(self, act: torch.Tensor):
        key = (act.device, act.dtype)
        if key not in self._cache:
            self._cache[key] = tuple(t.to(device=act.device, dtype=act.dtype) for t in (self.vectors, self.coeffs, self.mask))
        return self._cache[key]

    def __call__(self, act: torch.Tensor) -> torch.Tensor:
        """``act`` is (B, T, d); returns the steered activation. The first call is the prompt's pass."""
        vectors, coeffs, mask = self._on(act)
        keep = None
        if not self._prompt_done:
            self._prompt_done = True
            if self.prompt_keep is not None:
                keep = self.prompt_keep.to(device=act.device, dtype=act.dtype)[:, :, None]
        for k in range(vectors.shape[0]):
            v = vectors[k][:, None, :]  # (B, 1, d)
            c = coeffs[k][:, None, None]
            if self.method == "SIMPLE_ADDITIVE":
                delta = c * v
            else:
                delta = c * (act * v).sum(dim=-1, keepdim=True) * v
            delta = mask[k][:, None, None] * delta
            act = act + (delta * keep if keep is not None else delta)
        return act

    @property
    def active(self) -> bool:
        return bool(self.mask.any())
