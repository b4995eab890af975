"""Settings other tools send by default, so a sweep can be compared with their results without typing them.

Each preset is what a Neuronpedia client puts in a steer request when its user changes nothing, read
from its source (hijohnnylin/neuronpedia at ebb8426, 2026-08-20; PyPI ``neuronpedia`` 1.2.1) and
translated to saejobs' settings. Explicit options override a preset. Both are run with interp-engine
sampling, as Neuronpedia's server runs every steer today (``apps/inference`` ``completion.py``:
``generate_stream``), which is also why neither carries a frequency penalty: the server does not pass
the ``freq_penalty`` the clients send (1.0 from the UI), so it has no effect there. What the server takes
from the checkpoint instead — ``top_k``/``top_p`` from the model's ``generation_config`` where it has
them (interp-engine ``sampling.resolve_sampling``) — is the model's, not the client's: add
``--top-k``/``--top-p`` as the model's ``generation_config.json`` gives them.

To add a preset: a member, its ``values`` and its ``source``; ``saejobs sweep --preset`` lists them.
"""

from __future__ import annotations

from enum import StrEnum


class Preset(StrEnum):
    NEURONPEDIA = "neuronpedia"  # the steer page of neuronpedia.org with nothing changed
    NEURONPEDIA_PYTHON = "neuronpedia-python"  # the public Python client's steer_completion defaults

    @property
    def values(self) -> dict:
        """``saejobs sweep`` option values (their parameter names), applied where the user gave none."""
        common = {"sampling_semantics": "interp-engine", "freq_penalty": 0.0, "method": "SIMPLE_ADDITIVE",
                  "normalize": False, "steer_special_tokens": True}
        match self:
            case Preset.NEURONPEDIA:
                return {**common, "temperature": 0.5, "n_tokens": 256, "strength_multiplier": 1.0, "seeds": [16]}
            case Preset.NEURONPEDIA_PYTHON:
                return {**common, "temperature": 0.5, "n_tokens": 32, "strength_multiplier": 4.0, "seeds": [42]}
        raise AssertionError(self)

    @property
    def source(self) -> str:
        match self:
            case Preset.NEURONPEDIA:
                return ("apps/webapp/lib/utils/steer.ts: STEER_TEMPERATURE 0.5, STEER_N_COMPLETION_TOKENS 256, "
                        "STEER_STRENGTH_MULTIPLIER 1, STEER_SEED 16, STEER_METHOD SIMPLE_ADDITIVE, "
                        "STEER_SPECIAL_TOKENS true; the webapp sends normalizeSteering false")
            case Preset.NEURONPEDIA_PYTHON:
                return ("neuronpedia 1.2.1 neuronpedia/requests/steer_request.py SteerCompletionRequest: "
                        "temperature 0.5, n_tokens 32, seed 42, strength_multiplier 4")
        raise AssertionError(self)
