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

Chat generations (``engine.chat``) export to the chat endpoints instead:

- public ``POST https://neuronpedia.org/api/steer-chat`` (PyPI ``neuronpedia`` 1.2.1,
  ``SteerChatRequest.steer_features``: ``modelId, features, defaultChatMessages, steeredChatMessages,
  temperature, n_tokens, freq_penalty, seed, strength_multiplier, steer_special_tokens``); the webapp
  (``apps/webapp/app/api/steer-chat/route.tsx``) answers ``{"STEERED": {raw, chatTemplate, logprobs},
  "DEFAULT": ..., id, shareUrl, ...}`` (the client's ``NPSteerCompletionChatResponse`` spells it
  ``chat_template``; both are read);
- inference ``POST {url}/steer/completion-chat`` (``neuronpedia-inference-client`` 1.10.1,
  ``SteerCompletionChatPostRequest``): the completion fields with ``prompt`` a list of ``{role, content}``
  and ``steer_special_tokens``; answer ``{"outputs": [{type, raw, chat_template, logprobs?}], "input"}``.

A chat answer's text is its assistant turn: the last message of ``chat_template`` when it is the
assistant's (the server composes it from the generation; none when nothing was generated).
"""

from __future__ import annotations

import json
import shlex
from typing import Any

from saejobs.engine.errors import UsageError

PUBLIC_URL = "https://neuronpedia.org/api/steer"
PUBLIC_CHAT_URL = "https://neuronpedia.org/api/steer-chat"
FEATURE_URL = "https://neuronpedia.org/api/feature"  # GET {FEATURE_URL}/{modelId}/{layer}/{index}
INFERENCE_PATHS = {False: "/steer/completion", True: "/steer/completion-chat"}  # by "is a chat"
APIS = ("public", "inference")
TYPES = ("STEERED", "DEFAULT")


class SchemaError(UsageError):
    """A Neuronpedia JSON that does not have the published shape; the message names the field."""


def model_and_source(sae_entry) -> tuple[str, str]:
    """Neuronpedia's model id and source id for an SAE (``gemma-2-2b``, ``20-gemmascope-res-16k``)."""
    return sae_entry.model, (sae_entry.neuronpedia_id or sae_entry.id).rsplit("/", 1)[-1]


def _ids(entries: list) -> tuple[str, list[tuple[str, str]]]:
    """The body's model id and each feature's (model, source); ``entries``: each feature's SAE entry."""
    pairs = [model_and_source(e) for e in entries]
    return pairs[0][0], pairs


def public_body(entries: list, features: list[dict], prompt: str, seed: int, s: dict) -> dict:
    """``entries``: each feature's SAE (a multi-SAE steer names several sources of one model)."""
    model, ids = _ids(entries)
    return {"modelId": model,
            "features": [{"modelId": m, "layer": source, "index": int(f["index"]), "strength": f["strength"]}
                         for (m, source), f in zip(ids, features)],
            "prompt": prompt, "temperature": s["temperature"], "n_tokens": s["n_tokens"],
            "freq_penalty": s["freq_penalty"], "seed": seed, "strength_multiplier": s["strength_multiplier"]}


def inference_body(entries: list, features: list[dict], prompt: str, seed: int, s: dict) -> dict:
    model, ids = _ids(entries)
    body = {"prompt": prompt, "model": model, "steer_method": s["method"], "normalize_steering": s["normalize"],
            "types": list(TYPES),
            "features": [{"model": m, "source": source, "index": int(f["index"]), "strength": f["strength"]}
                         for (m, source), f in zip(ids, features)],
            "n_completion_tokens": s["n_tokens"], "temperature": s["temperature"],
            "strength_multiplier": s["strength_multiplier"], "freq_penalty": s["freq_penalty"], "seed": seed}
    if s.get("n_logprobs"):
        body["n_logprobs"] = min(int(s["n_logprobs"]), 10)
    return body


def public_chat_body(entries: list, features: list[dict], messages: list[dict], seed: int, s: dict) -> dict:
    """``/api/steer-chat``: the published client's payload, the same conversation for both types."""
    model, ids = _ids(entries)
    return {"modelId": model,
            "features": [{"modelId": m, "layer": source, "index": int(f["index"]), "strength": f["strength"]}
                         for (m, source), f in zip(ids, features)],
            "defaultChatMessages": messages, "steeredChatMessages": messages, "temperature": s["temperature"],
            "n_tokens": s["n_tokens"], "freq_penalty": s["freq_penalty"], "seed": seed,
            "strength_multiplier": s["strength_multiplier"],
            "steer_special_tokens": s.get("steer_special_tokens", True)}


def inference_chat_body(entries: list, features: list[dict], messages: list[dict], seed: int, s: dict) -> dict:
    """``/v1/steer/completion-chat``: the completion body with the conversation as ``prompt``."""
    body = inference_body(entries, features, "", seed, s)
    body["prompt"] = messages
    body["steer_special_tokens"] = s.get("steer_special_tokens", True)
    return body


def caveats(features: list[dict], s: dict, chat_template: str | None = None, is_chat: bool = False) -> list[str]:
    """What the bodies cannot say about this configuration, so a reader knows when not to expect a match."""
    out = []
    if any("index" not in f for f in features):
        out.append("a raw vector has no Neuronpedia feature id; only the inference body's 'vectors' could carry it")
    if s.get("method", "SIMPLE_ADDITIVE") != "SIMPLE_ADDITIVE" or s.get("normalize"):
        out.append("the public API body has no steering method or normalisation field; use the inference body")
    if not s.get("steer_special_tokens", True) and not is_chat:
        out.append("steer_special_tokens=false: neither completion body has the field (only the chat endpoints)")
    if is_chat and chat_template is not None:
        out.append("rendered with a chat template from a file; Neuronpedia renders with its model's own template "
                   "(no body carries one): compare the prompt token ids before the outputs")
    if is_chat and s.get("freq_penalty"):
        out.append("freq_penalty: Neuronpedia's chat endpoint does not pass it to its interp-engine or vLLM generation")
    if s.get("sampling_semantics") == "interp-engine" and (s.get("presence_penalty") or s.get("top_k")
                                                            or s.get("top_p", 1.0) != 1.0):
        out.append("presence_penalty/top_k/top_p have no field in either body; the server uses its own")
    if s.get("temperature", 0) > 0:
        out.append("temperature > 0: exact agreement is not expected across implementations")
    return out


def curl(api: str, body: dict, inference_url: str | None = None) -> str:
    data = shlex.quote(json.dumps(body, separators=(",", ":")))
    chat = is_chat_body(body)
    if api == "public":
        return (f"curl -sS -X POST {PUBLIC_CHAT_URL if chat else PUBLIC_URL} -H 'Content-Type: application/json' "
                f"-H \"X-Api-Key: $NEURONPEDIA_API_KEY\" -d {data}")
    url = (inference_url or "http://localhost:5002/v1").rstrip("/")
    return (f"curl -sS -X POST {url}{INFERENCE_PATHS[chat]} -H 'Content-Type: application/json' "
            f"-H \"X-SECRET-KEY: $NEURONPEDIA_INFERENCE_SECRET\" -d {data}")


def is_chat_body(body: Any) -> bool:
    return isinstance(body, dict) and ("steeredChatMessages" in body or isinstance(body.get("prompt"), list))


# ---- reading what comes back -------------------------------------------------------------------

def need(obj: Any, key: str, kinds: type | tuple, where: str) -> Any:
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


def _messages(obj: Any, key: str, where: str) -> list[list[str]]:
    msgs = need(obj, key, list, where)
    return [[need(m, "role", str, f"{where}.{key}[{i}]"), need(m, "content", str, f"{where}.{key}[{i}]")]
            for i, m in enumerate(msgs)]


def parse_request(body: Any, where: str = "request") -> tuple[str, dict]:
    """(api, canonical settings) of any of the four bodies; the canonical form is what matching compares
    (a chat's conversation as ``chat``, with its ``steer_special_tokens``)."""
    chat = is_chat_body(body)
    if isinstance(body, dict) and "modelId" in body:
        model = need(body, "modelId", str, where)
        feats = need(body, "features", list, where)
        features = [(need(f, "layer", str, f"{where}.features[{i}]"), need(f, "index", int, f"{where}.features[{i}]"),
                     float(need(f, "strength", NUMBER, f"{where}.features[{i}]"))) for i, f in enumerate(feats)]
        n_tokens, method, normalize = need(body, "n_tokens", int, where), None, None
        api = "public"
    elif isinstance(body, dict) and "steer_method" in body:
        model = need(body, "model", str, where)
        feats = need(body, "features", list, where)
        features = [(need(f, "source", str, f"{where}.features[{i}]"), need(f, "index", int, f"{where}.features[{i}]"),
                     float(need(f, "strength", NUMBER, f"{where}.features[{i}]"))) for i, f in enumerate(feats)]
        n_tokens = need(body, "n_completion_tokens", int, where)
        method, normalize = need(body, "steer_method", str, where), need(body, "normalize_steering", bool, where)
        api = "inference"
    else:
        raise SchemaError(f"{where}: neither a public API body (modelId, ...) nor an inference-server body "
                          "(model, steer_method, ...)")
    if not features:
        raise SchemaError(f"{where}.features: empty")
    if chat:
        conversation = _messages(body, "steeredChatMessages" if api == "public" else "prompt", where)
        extra = {"prompt": None, "chat": conversation,
                 "steer_special_tokens": need(body, "steer_special_tokens", bool, where)}
    else:
        extra = {"prompt": need(body, "prompt", str, where)}
    return api, {"model": model, "features": features, **extra,
                 "seed": int(need(body, "seed", NUMBER, where)), "n_tokens": n_tokens,
                 "temperature": float(need(body, "temperature", NUMBER, where)),
                 "freq_penalty": float(need(body, "freq_penalty", NUMBER, where)),
                 "strength_multiplier": float(need(body, "strength_multiplier", NUMBER, where)),
                 "method": method, "normalize": normalize}


def _assistant_turn(result: Any, where: str) -> str:
    """A chat result's assistant turn: the last ``chat_template`` message if it is the assistant's."""
    key = "chat_template" if isinstance(result, dict) and "chat_template" in result else "chatTemplate"
    need(result, "raw", str, where)
    turns = _messages(result, key, where)
    return turns[-1][1] if turns and turns[-1][0] in ("assistant", "model") else ""


def parse_response(body: Any, where: str = "response", chat: bool = False) -> dict[str, str]:
    """``{"STEERED": text, "DEFAULT": text}`` (whichever came) from any API's answer; a chat answer's
    text is its assistant turn."""
    if isinstance(body, dict) and "outputs" in body:
        out = {}
        for i, o in enumerate(need(body, "outputs", list, where)):
            kind = need(o, "type", str, f"{where}.outputs[{i}]")
            if kind not in TYPES:
                raise SchemaError(f"{where}.outputs[{i}].type: '{kind}' is not STEERED or DEFAULT")
            out[kind] = (_assistant_turn(o, f"{where}.outputs[{i}]") if chat
                         else need(o, "output", str, f"{where}.outputs[{i}]"))
    elif isinstance(body, dict) and any(t in body for t in TYPES):
        out = {t: _assistant_turn(body[t], f"{where}.{t}") if chat else need(body, t, str, where)
               for t in TYPES if t in body and body[t] is not None}
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
        request = need(item, "request", dict, where)
        response = need(item, "response", dict, where)
        api, canonical = parse_request(request, f"{where}.request")
        out.append((api, request, canonical, parse_response(response, f"{where}.response", is_chat_body(request))))
    return out


def parse_feature(body: Any, where: str = "feature") -> dict:
    """A feature from ``GET /api/feature/{modelId}/{layer}/{index}``: the fields the published client's
    ``FeatureRequest.get`` reads (``modelId, layer, index, frac_nonzero, explanations[].description``,
    PyPI ``neuronpedia`` 1.2.1 ``requests/feature_request.py``, ``np_explanation.py``) and the webapp's
    ``maxActApprox`` and ``pos_str``/``neg_str`` (top logits), each checked; texts stay untrusted data."""
    index = need(body, "index", (str, int), where)
    if not str(index).isdigit():
        raise SchemaError(f"{where}.index: '{str(index)[:20]}' is not a feature index")
    explanations = [need(e, "description", str, f"{where}.explanations[{i}]")
                    for i, e in enumerate(need(body, "explanations", list, where))]
    optional = {}
    for key, kinds in (("maxActApprox", NUMBER), ("frac_nonzero", NUMBER), ("pos_str", list), ("neg_str", list)):
        if body.get(key) is not None:
            optional[key] = need(body, key, kinds, where)
    for key in ("pos_str", "neg_str"):
        if any(not isinstance(t, str) for t in optional.get(key, [])):
            raise SchemaError(f"{where}.{key}: expected a list of strings")
    return {"model": need(body, "modelId", str, where), "source": need(body, "layer", str, where),
            "index": int(index), "explanations": explanations, "max_act_approx": optional.get("maxActApprox"),
            "density": optional.get("frac_nonzero"), "pos_str": optional.get("pos_str", []),
            "neg_str": optional.get("neg_str", [])}
