"""Neuronpedia's two steering APIs as data: the request bodies for a configuration, and their answers.

Field names and defaults are those of Neuronpedia's published clients (checked, not guessed):

- the public web API, ``POST https://neuronpedia.org/api/steer`` with header ``X-Api-Key`` (PyPI
  ``neuronpedia`` 1.2.1, ``requests/steer_request.py``, ``SteerCompletionRequest.steer_features``):
  ``modelId, features [{modelId, layer (the source id), index, strength}], prompt, temperature,
  n_tokens, freq_penalty, seed, strength_multiplier``; answer ``{"STEERED": text, "DEFAULT": text}``
  (``types/inference/steer.py``: ``NPSteerCompletionResponse``). The completion client sends no
  method, normalisation or ``steer_special_tokens`` (only its chat endpoint has the latter);
- the inference server, ``POST {url}/steer/completion`` with header ``X-SECRET-KEY`` (PyPI
  ``neuronpedia-inference-client`` 1.10.1, ``SteerCompletionRequest``): ``prompt, model,
  steer_method, normalize_steering, types, features [{model, source, index, strength}],
  n_completion_tokens, temperature, strength_multiplier, freq_penalty, seed[, n_logprobs]``; answer
  ``{"outputs": [{"type": "STEERED"|"DEFAULT", "output": text, "logprobs"?}]}``.

Each ``output`` is the prompt followed by the completion, as saejobs stores its own.
"""

from __future__ import annotations

import json
import shlex
from typing import Any

from engine.errors import UsageError

PUBLIC_URL = "https://neuronpedia.org/api/steer"
APIS = ("public", "inference")
TYPES = ("STEERED", "DEFAULT")


class SchemaError(UsageError):
    """A Neuronpedia JSON that does not have the published shape; the message names the field."""


def model_and_source(sae_entry) -> tuple[str, str]:
    """Neuronpedia's model id and source id for an SAE (``gemma-2-2b``, ``20-gemmascope-res-16k``)."""
    return sae_entry.model, (sae_entry.neuronpedia_id or sae_entry.id).rsplit("/", 1)[-1]


def public_body(sae_entry, features: list[dict], prompt: str, seed: int, s: dict) -> dict:
    model, source = model_and_source(sae_entry)
    return {"modelId": model,
            "features": [{"modelId": model, "layer": source, "index": int(f["index"]), "strength": f["strength"]}
                         for f in features],
            "prompt": prompt, "temperature": s["temperature"], "n_tokens": s["n_tokens"],
            "freq_penalty": s["freq_penalty"], "seed": seed, "strength_multiplier": s["strength_multiplier"]}


def inference_body(sae_entry, features: list[dict], prompt: str, seed: int, s: dict) -> dict:
    model, source = model_and_source(sae_entry)
    body = {"prompt": prompt, "model": model, "steer_method": s["method"], "normalize_steering": s["normalize"],
            "types": list(TYPES),
            "features": [{"model": model, "source": source, "index": int(f["index"]), "strength": f["strength"]}
                         for f in features],
            "n_completion_tokens": s["n_tokens"], "temperature": s["temperature"],
            "strength_multiplier": s["strength_multiplier"], "freq_penalty": s["freq_penalty"], "seed": seed}
    if s.get("n_logprobs"):
        body["n_logprobs"] = min(int(s["n_logprobs"]), 10)
    return body


def caveats(features: list[dict], s: dict) -> list[str]:
    """What the bodies cannot say about this configuration, so a reader knows when not to expect a match."""
    out = []
    if any("index" not in f for f in features):
        out.append("a raw vector has no Neuronpedia feature id; only the inference body's 'vectors' could carry it")
    if s.get("method", "SIMPLE_ADDITIVE") != "SIMPLE_ADDITIVE" or s.get("normalize"):
        out.append("the public API body has no steering method or normalisation field; use the inference body")
    if not s.get("steer_special_tokens", True):
        out.append("steer_special_tokens=false: neither completion body has the field (only the chat endpoints)")
    if s.get("sampling_semantics") == "interp-engine" and (s.get("presence_penalty") or s.get("top_k")
                                                            or s.get("top_p", 1.0) != 1.0):
        out.append("presence_penalty/top_k/top_p have no field in either body; the server uses its own")
    if s.get("temperature", 0) > 0:
        out.append("temperature > 0: exact agreement is not expected across implementations")
    return out


def curl(api: str, body: dict, inference_url: str | None = None) -> str:
    data = shlex.quote(json.dumps(body, separators=(",", ":")))
    if api == "public":
        return (f"curl -sS -X POST {PUBLIC_URL} -H 'Content-Type: application/json' "
                f"-H \"X-Api-Key: $NEURONPEDIA_API_KEY\" -d {data}")
    url = (inference_url or "http://localhost:5002/v1").rstrip("/")
    return (f"curl -sS -X POST {url}/steer/completion -H 'Content-Type: application/json' "
            f"-H \"X-SECRET-KEY: $NEURONPEDIA_INFERENCE_SECRET\" -d {data}")


# ---- reading what comes back -------------------------------------------------------------------

def _need(obj: Any, key: str, kinds: type | tuple, where: str) -> Any:
    if not isinstance(obj, dict):
        raise SchemaError(f"{where}: expected an object")
    if key not in obj:
        raise SchemaError(f"{where}.{key}: missing")
    value = obj[key]
    if isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)):
        raise SchemaError(f"{where}.{key}: expected {_kind(kinds)}, got a boolean")
    if not isinstance(value, kinds):
        raise SchemaError(f"{where}.{key}: expected {_kind(kinds)}, got {type(value).__name__}")
    return value


def _kind(kinds) -> str:
    names = {str: "a string", int: "an integer", float: "a number", list: "a list", dict: "an object", bool: "a boolean"}
    return " or ".join(names.get(k, k.__name__) for k in (kinds if isinstance(kinds, tuple) else (kinds,)))


NUMBER = (int, float)


def parse_request(body: Any, where: str = "request") -> tuple[str, dict]:
    """(api, canonical settings) of either body; the canonical form is what matching compares."""
    if isinstance(body, dict) and "modelId" in body:
        model = _need(body, "modelId", str, where)
        feats = _need(body, "features", list, where)
        features = [(_need(f, "layer", str, f"{where}.features[{i}]"), _need(f, "index", int, f"{where}.features[{i}]"),
                     float(_need(f, "strength", NUMBER, f"{where}.features[{i}]"))) for i, f in enumerate(feats)]
        n_tokens, method, normalize = _need(body, "n_tokens", int, where), None, None
        api = "public"
    elif isinstance(body, dict) and "steer_method" in body:
        model = _need(body, "model", str, where)
        feats = _need(body, "features", list, where)
        features = [(_need(f, "source", str, f"{where}.features[{i}]"), _need(f, "index", int, f"{where}.features[{i}]"),
                     float(_need(f, "strength", NUMBER, f"{where}.features[{i}]"))) for i, f in enumerate(feats)]
        n_tokens = _need(body, "n_completion_tokens", int, where)
        method, normalize = _need(body, "steer_method", str, where), _need(body, "normalize_steering", bool, where)
        api = "inference"
    else:
        raise SchemaError(f"{where}: neither a public API body (modelId, ...) nor an inference-server body "
                          "(model, steer_method, ...)")
    if not features:
        raise SchemaError(f"{where}.features: empty")
    return api, {"model": model, "features": features, "prompt": _need(body, "prompt", str, where),
                 "seed": int(_need(body, "seed", NUMBER, where)), "n_tokens": n_tokens,
                 "temperature": float(_need(body, "temperature", NUMBER, where)),
                 "freq_penalty": float(_need(body, "freq_penalty", NUMBER, where)),
                 "strength_multiplier": float(_need(body, "strength_multiplier", NUMBER, where)),
                 "method": method, "normalize": normalize}


def parse_response(body: Any, where: str = "response") -> dict[str, str]:
    """``{"STEERED": text, "DEFAULT": text}`` (whichever came) from either API's answer."""
    if isinstance(body, dict) and "outputs" in body:
        out = {}
        for i, o in enumerate(_need(body, "outputs", list, where)):
            kind = _need(o, "type", str, f"{where}.outputs[{i}]")
            if kind not in TYPES:
                raise SchemaError(f"{where}.outputs[{i}].type: '{kind}' is not STEERED or DEFAULT")
            out[kind] = _need(o, "output", str, f"{where}.outputs[{i}]")
    elif isinstance(body, dict) and any(t in body for t in TYPES):
        out = {t: _need(body, t, str, where) for t in TYPES if t in body and body[t] is not None}
    else:
        raise SchemaError(f"{where}: expected 'outputs' (inference server) or 'STEERED'/'DEFAULT' (public API)")
    if "STEERED" not in out:
        raise SchemaError(f"{where}: no STEERED output")
    return out


def parse_saved(doc: Any) -> list[tuple[str, dict, dict, dict]]:
    """A saved exchange ``{"request": ..., "response": ...}`` or a list of them: (api, request, canonical, outputs)."""
    items = doc if isinstance(doc, list) else [doc]
    if not items:
        raise SchemaError("the file holds an empty list")
    out = []
    for i, item in enumerate(items):
        where = f"[{i}]" if isinstance(doc, list) else "$"
        request = _need(item, "request", dict, where)
        response = _need(item, "response", dict, where)
        api, canonical = parse_request(request, f"{where}.request")
        out.append((api, request, canonical, parse_response(response, f"{where}.response")))
    return out
