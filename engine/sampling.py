"""How each next token is chosen: torch-free, so a request can be validated where torch is not loaded.

``engine.request.Settings`` extends ``Sampling`` with the steering fields, and ``engine.generate``
executes it: one field list, validated once, shared by the request and its executor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

from saejobs.engine.errors import UsageError

MAX_TOKENS = 4096
MAX_LOGPROBS = 100


class SamplingSemantics(StrEnum):
    """Whose sampling a sweep reproduces (``engine.generate`` implements each, and cites its source).

    To add one: a member, its ``description`` (recorded with every run) and its branch in
    ``engine.generate.TokenSampler``.
    """

    TRANSFORMERLENS = "transformerlens"  # Neuronpedia's TransformerLens-era server
    INTERP_ENGINE = "interp-engine"  # Neuronpedia's server today

    @property
    def description(self) -> str:
        return {
            SamplingSemantics.TRANSFORMERLENS: "transformerlens-4.3 sample_logits (temperature, freq_penalty); "
                                               "per-row torch.Generator(seed) on the model's device",
            SamplingSemantics.INTERP_ENGINE: "interp-engine-1.14 _sample_next (presence_penalty, temperature, top_k, "
                                             "top_p); per-row torch.Generator(seed) on the model's device",
        }[self]


@dataclass(frozen=True)
class Sampling:
    """Length, temperature and penalties of a generation, in the semantics they are computed with."""

    n_tokens: int = 32
    temperature: float = 0.0
    freq_penalty: float = 0.0  # TransformerLens semantics only
    n_logprobs: int = 0
    sampling_semantics: SamplingSemantics = SamplingSemantics.TRANSFORMERLENS
    presence_penalty: float = 0.0  # interp-engine semantics only
    top_k: int = 0  # interp-engine semantics only; 0 = off
    top_p: float = 1.0  # interp-engine semantics only; 1 = off

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "sampling_semantics", SamplingSemantics(self.sampling_semantics))
        except ValueError:
            raise UsageError(f"unknown sampling semantics '{self.sampling_semantics}'; expected one of "
                             f"{', '.join(SamplingSemantics)}") from None
        for name in ("temperature", "freq_penalty", "presence_penalty", "top_p"):
            if not math.isfinite(getattr(self, name)):
                raise UsageError(f"{name} must be a finite number, not {getattr(self, name)}")
        if not 1 <= self.n_tokens <= MAX_TOKENS:
            raise UsageError(f"n_tokens must be between 1 and {MAX_TOKENS}, not {self.n_tokens}")
        if not 0 <= self.n_logprobs <= MAX_LOGPROBS:
            raise UsageError(f"n_logprobs must be between 0 and {MAX_LOGPROBS}, not {self.n_logprobs}")
        if self.temperature < 0 or self.top_k < 0 or not 0 < self.top_p <= 1:
            raise UsageError("temperature and top_k must not be negative, and top_p must be in (0, 1]")
        if self.sampling_semantics == SamplingSemantics.TRANSFORMERLENS and (
                self.presence_penalty or self.top_k or self.top_p != 1.0):
            raise UsageError("presence_penalty, top_k and top_p belong to interp-engine sampling; "
                             "add --sampling interp-engine")
        if self.sampling_semantics == SamplingSemantics.INTERP_ENGINE and self.freq_penalty:
            raise UsageError("freq_penalty is TransformerLens-era sampling (interp-engine ignores it); "
                             "use --presence-penalty with --sampling interp-engine")
