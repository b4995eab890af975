"""Neuronpedia steers as saejobs sweeps (``saejobs sweep --from FILE``), read from what Neuronpedia's
clients and pages hand a user (field names: docs/reference.md and ``engine/neuronpedia.py``'s sources):

- a request body of the public ``/api/steer`` or ``/api/steer-chat`` (PyPI ``neuronpedia`` 1.2.1) or
  of the inference server's ``/v1/steer/completion`` or ``-chat`` (``neuronpedia-inference-client``
  1.10.1; the server's camelCase wire is read too);
- a saved or shared steer: the answer of ``POST /api/steer-load {steerOutputId}`` (webapp
  ``app/api/steer-load/route.tsx``: ``settings``, ``features`` (``toNeurons`` rows), ``inputText``; a
  chat's conversation is ``STEERED.chatTemplate`` less its generated turn);
- steer presets: ``POST /api/steer/presets``'s answer or its ``featurePresets`` list (webapp
  ``app/api/steer/presets/route.tsx``: ``{name, features: [{modelId, layer, index, strength}],
  steerMethod?}``), one named steer each; prompts come from ``--prompt``.

Features become interventions of the SAEs Neuronpedia names ``{modelId}/{layer}`` (saejobs' registry
ids). Settings become the sweep's defaults (explicit options win), sampled with interp-engine semantics
as Neuronpedia's server runs them today; the strength multiplier becomes the steer's ``--strength``.
What saejobs cannot reproduce is refused with the reason: inline steering vectors (save them as .npy and
name them in a steer file), different STEERED and DEFAULT conversations, a DEFAULT-only request.
torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from saejobs.engine.errors import UsageError
from saejobs.engine.interventions import Direction, Intervention, NamedSteer
from saejobs.engine.neuronpedia import NUMBER, SchemaError, need


@dataclass
class Imported:
    steers: list[NamedSteer]
    defaults: dict = field(default_factory=dict)  # ``saejobs sweep`` option values (parameter names)
    chats: list[list[dict]] = field(default_factory=list)  # conversations, as --chat files hold them
    notes: list[str] = field(default_factory=list)  # what differs from the source, said once each


def _camel(body: dict) -> dict:
    """The inference server's camelCase wire as its snake_case names (pydantic ``to_camel`` aliases)."""
    names = {"steerMethod": "steer_method", "normalizeSteering": "normalize_steering", "nCompletionTokens":
             "n_completion_tokens", "strengthMultiplier": "strength_multiplier", "freqPenalty": "freq_penalty",
             "nLogprobs": "n_logprobs", "steerSpecialTokens": "steer_special_tokens"}
    return {names.get(k, k): v for k, v in body.items()}


def _features(items: Any, model_key: str, source_key: str, where: str, method: str | None) -> tuple[Intervention, ...]:
    out = []
    for i, f in enumerate(need({"features": items}, "features", list, where)):
        w = f"{where}.features[{i}]"
        if isinstance(f, dict) and (f.get("steering_vector") or f.get("steeringVector")) and not f.get(source_key):
            raise SchemaError(f"{w}: an inline steering vector; save it as .npy and name it in a steer file (--steers)")
        index = need(f, "index", (int, str), w)
        if not str(index).isdigit():
            raise SchemaError(f"{w}.index: '{index}' is not a feature index")
        sae = f"{need(f, model_key, str, w)}/{need(f, source_key, str, w)}"
        out.append(Intervention(Direction(sae, int(index)), float(need(f, "strength", NUMBER, w)), method))
    if not out:
        raise SchemaError(f"{where}.features: empty")
    return tuple(out)


def _settings(s: dict, where: str, n_tokens_key: str) -> tuple[dict, list[str]]:
    defaults = {"sampling_semantics": "interp-engine", "freq_penalty": 0.0,
                "temperature": float(need(s, "temperature", NUMBER, where)),
                "n_tokens": int(need(s, n_tokens_key, NUMBER, where)),
                "seeds": [int(need(s, "seed", NUMBER, where))],
                "strengths": [float(need(s, "strength_multiplier", NUMBER, where))]}
    notes = []
    if s.get("freq_penalty"):
        notes.append(f"freq_penalty {s['freq_penalty']} left out: Neuronpedia's server does not apply it "
                     "(interp-engine sampling)")
    if "steer_special_tokens" in s:
        defaults["steer_special_tokens"] = bool(need(s, "steer_special_tokens", bool, where))
    if s.get("normalize_steering") is not None:
        defaults["normalize"] = bool(need(s, "normalize_steering", bool, where))
    return defaults, notes


def _conversation(messages: Any, where: str) -> list[dict]:
    return [{"role": need(m, "role", str, f"{where}[{i}]"), "content": need(m, "content", str, f"{where}[{i}]")}
            for i, m in enumerate(need({"m": messages}, "m", list, where))]


def read(doc: Any, name: str = "imported") -> Imported:
    """Whatever of the three kinds ``doc`` is (JSON already parsed)."""
    if isinstance(doc, list) or (isinstance(doc, dict) and "featurePresets" in doc):
        return _presets(doc["featurePresets"] if isinstance(doc, dict) else doc)
    if not isinstance(doc, dict):
        raise SchemaError("$: expected a Neuronpedia steer request, a saved steer or steer presets")
    if "settings" in doc and "features" in doc:
        return _saved(doc, name)
    body = _camel(doc)
    if "modelId" in body:  # public API
        defaults, notes = _settings(body, "$", "n_tokens")
        steer = NamedSteer(name, _features(body["features"] if "features" in body else None, "modelId", "layer", "$",
                                           None))
        if "steeredChatMessages" in body:
            steered = _conversation(body["steeredChatMessages"], "$.steeredChatMessages")
            if "defaultChatMessages" in body and _conversation(body["defaultChatMessages"], "$.defaultChatMessages") != steered:
                raise SchemaError("$: its STEERED and DEFAULT conversations differ; a sweep compares one "
                                  "conversation steered and not: import each conversation as its own request")
            return Imported([steer], defaults, [steered], notes)
        return Imported([steer], {**defaults, "prompts": [need(body, "prompt", str, "$")]}, [], notes)
    if "steer_method" in body:  # inference server
        if body.get("vectors"):
            raise SchemaError("$.vectors: inline steering vectors; save each as .npy and name it with its hook "
                              "in a steer file (--steers)")
        defaults, notes = _settings(body, "$", "n_completion_tokens")
        types = body.get("types") or ["STEERED", "DEFAULT"]
        if "STEERED" not in types:
            raise SchemaError("$.types: no STEERED; there is nothing to steer")
        method = need(body, "steer_method", str, "$")
        steer = NamedSteer(name, _features(body.get("features"), "model", "source", "$", method))
        if isinstance(body.get("prompt"), list):
            return Imported([steer], defaults, [_conversation(body["prompt"], "$.prompt")], notes)
        return Imported([steer], {**defaults, "prompts": [need(body, "prompt", str, "$")]}, [], notes)
    raise SchemaError("$: neither a steer request body (modelId or steer_method), a saved steer (settings, "
                      "features) nor steer presets (featurePresets)")


def _saved(doc: dict, name: str) -> Imported:
    s = need(doc, "settings", dict, "$")
    defaults, notes = _settings(s, "$.settings", "n_tokens")
    method = s.get("steer_method")
    steer = NamedSteer(str(doc.get("id") or name), _features(doc["features"], "modelId", "layer", "$", method))
    template = (doc.get("STEERED") or {}).get("chatTemplate") if isinstance(doc.get("STEERED"), dict) else None
    if template:
        conv = _conversation(template, "$.STEERED.chatTemplate")
        if conv and conv[-1]["role"] in ("assistant", "model"):
            conv = conv[:-1]  # the generated turn
        return Imported([steer], defaults, [conv], notes)
    return Imported([steer], {**defaults, "prompts": [need(doc, "inputText", str, "$")]}, [], notes)


def _presets(items: Any) -> Imported:
    steers = []
    for i, p in enumerate(need({"p": items}, "p", list, "$")):
        w = f"$[{i}]"
        if p.get("isUserVector"):
            raise SchemaError(f"{w}: a user's own vector preset; save the vector as .npy and use a steer file")
        steers.append(NamedSteer(need(p, "name", str, w), _features(p.get("features"), "modelId", "layer", w,
                                                                      p.get("steerMethod"))))
    if not steers:
        raise SchemaError("$: no presets")
    from saejobs.engine.presets import Preset

    return Imported(steers, dict(Preset.NEURONPEDIA.values), [], [])


def check(imported: Imported) -> None:
    """Names are unique (presets of one page may repeat one)."""
    names = [s.name for s in imported.steers]
    if len(set(names)) != len(names):
        raise UsageError(f"two imported steers are named '{next(n for n in names if names.count(n) > 1)}'")
