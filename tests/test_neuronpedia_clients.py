"""Every exported Neuronpedia body, checked by Neuronpedia's own published clients, not by saejobs.

- Inference server (PyPI ``neuronpedia-inference-client`` 1.10.1, generated from the server's OpenAPI
  spec): ``SteerCompletionRequest`` and ``SteerCompletionChatPostRequest`` (its name for the chat
  request) must accept the body (``from_dict``: pydantic, strict types, required fields) and give every
  field back unchanged (``to_dict``), and the body may hold no field the model does not declare —
  ``from_dict`` would silently drop a misspelled optional field, the round trip does not.
- Public web API (PyPI ``neuronpedia`` 1.2.1): it has no request model for ``/api/steer`` or
  ``/api/steer-chat``; its ``SteerCompletionRequest.steer_features`` and ``SteerChatRequest.steer_features``
  build the payload they POST, so the exported body must equal the payload the client itself builds
  for the same configuration (captured, not sent). Its ``types/inference/steer.py`` models answer shapes
  (``NPSteerCompletionResponse``, ``NPSteerCompletionChatResponse``), used for the sample answers.

Sample answers are parsed by the clients' response models and by saejobs' importer, which must read the
same texts from them.
"""

from __future__ import annotations

import copy
import json

import pytest
from neuronpedia.np_feature import SteerFeature
from neuronpedia.requests.steer_request import SteerChatRequest, SteerCompletionRequest as PublicCompletion
from neuronpedia.types.inference.steer import NPSteerCompletionChatResponse, NPSteerCompletionResponse
from neuronpedia_inference_client.models.steer_completion_chat_post200_response import (
    SteerCompletionChatPost200Response,
)
from neuronpedia_inference_client.models.steer_completion_chat_post_request import SteerCompletionChatPostRequest
from neuronpedia_inference_client.models.steer_completion_post200_response import SteerCompletionPost200Response
from neuronpedia_inference_client.models.steer_completion_request import SteerCompletionRequest
from pydantic import ValidationError

from saejobs.engine import neuronpedia as np_api
from saejobs.engine.request import Settings
from saejobs.tasks.neuronpedia import bodies

SAE = "gemma-2-2b/20-gemmascope-res-16k"
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Write one sentence."}]
REQUESTS = {  # every body-relevant setting away from its default somewhere
    "default": dict(n_tokens=16),
    "orthogonal, normalized, logprobs": dict(method="ORTHOGONAL_DECOMP", normalize=True, strength_multiplier=4.0,
                                             n_tokens=24, temperature=0.5, freq_penalty=1.0, n_logprobs=5),
    "special tokens off": dict(n_tokens=8, steer_special_tokens=False),
}
SETTINGS = {name: Settings(**kw) for name, kw in REQUESTS.items()}
# what a request leaves out means (the request's own defaults, written out here rather than read from Settings)
UNSET = dict(method="SIMPLE_ADDITIVE", normalize=False, strength_multiplier=1.0, temperature=0.0, freq_penalty=0.0,
             n_logprobs=0, steer_special_tokens=True)
FEATURES = {"one": [{"index": 7650, "strength": 50.0}],
            "two": [{"index": 7650, "strength": -20.0}, {"index": 12, "strength": 3.5}]}


def generation(settings: Settings, features: list[dict], chat: bool) -> dict:
    """A stored generation as ``db.neuronpedia`` hands it to the export."""
    return {"id": 1, "config_key": "k", "sae_id": SAE, "features": features, "sampling": settings.to_json(),
            "seed": 16, "prompt": "<bos><start_of_turn>user\n..." if chat else "Once upon a time",
            "messages": copy.deepcopy(MESSAGES) if chat else None, "chat_template": None}


CASES = [(f"{s} / {f} / {'chat' if c else 'completion'}", SETTINGS[s], FEATURES[f], c)
         for s in SETTINGS for f in FEATURES for c in (False, True)]


def conforms(model, body: dict) -> None:
    """The client model accepts ``body`` and gives every field back as sent; no field is unknown to it."""
    obj = model.from_dict(body)
    unknown = set(body) - set(model.model_fields)
    assert not unknown, f"{model.__name__} has no field {sorted(unknown)}"
    back = obj.to_dict()
    for key, value in body.items():
        assert _plain(back[key]) == value, (key, back[key], value)


def _plain(v):
    if isinstance(v, list):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return getattr(v, "value", v)  # the client's enums (NPSteerType, NPSteerMethod) are str enums


def client_payload(chat: bool, settings: Settings, features: list[dict], seed: int) -> dict:
    """What the published public client would POST for this configuration (captured, not sent)."""
    sent = []
    req = SteerChatRequest(api_key="unused") if chat else PublicCompletion(api_key="unused")
    req.send_request = lambda method, json: sent.append((method, json))
    model, source = "gemma-2-2b", "20-gemmascope-res-16k"
    feats = [SteerFeature(modelId=model, source=source, index=f["index"], strength=f["strength"]) for f in features]
    common = dict(temperature=settings.temperature, n_tokens=settings.n_tokens, freq_penalty=settings.freq_penalty,
                  seed=seed, strength_multiplier=settings.strength_multiplier)
    if chat:
        req.steer_features(model, feats, default_chat_messages=MESSAGES, steered_chat_messages=MESSAGES,
                           steer_special_tokens=settings.steer_special_tokens, **common)
    else:
        req.steer_features(model, feats, prompt="Once upon a time", **common)
    assert len(sent) == 1 and sent[0][0] == "POST" and req.endpoint == ("steer-chat" if chat else "steer")
    return sent[0][1]


@pytest.mark.parametrize("name, settings, features, chat", CASES, ids=[c[0] for c in CASES])
def test_every_exported_body_passes_the_published_clients(name, settings, features, chat):
    out = bodies(generation(settings, features, chat))
    assert out["chat"] is chat
    conforms(SteerCompletionChatPostRequest if chat else SteerCompletionRequest, out["inference"]["body"])
    assert out["public"]["body"] == client_payload(chat, settings, features, 16)
    assert out["public"]["url"] == "https://neuronpedia.org/api/" + ("steer-chat" if chat else "steer")


@pytest.mark.parametrize("name, settings, features, chat", CASES, ids=[c[0] for c in CASES])
def test_every_exported_body_carries_the_values_of_its_request(name, settings, features, chat):
    """The bodies' values, field by field, against the request that produced the generation (the
    ``REQUESTS`` keywords, the features, seed 16, the prompt or conversation), not against saejobs'
    own export: a body that hard-codes the method or normalisation, drops the multiplier or swaps a
    feature's strength would still pass the clients' type checks above."""
    want = {**UNSET, **REQUESTS[name.split(" / ")[0]]}
    out = bodies(generation(settings, features, chat))
    model, source = "gemma-2-2b", "20-gemmascope-res-16k"  # SAE's Neuronpedia model and source ids
    inference = {"model": model, "steer_method": want["method"], "normalize_steering": want["normalize"],
                 "types": ["STEERED", "DEFAULT"],
                 "features": [{"model": model, "source": source, "index": f["index"], "strength": f["strength"]}
                              for f in features],
                 "n_completion_tokens": want["n_tokens"], "temperature": want["temperature"],
                 "strength_multiplier": want["strength_multiplier"], "freq_penalty": want["freq_penalty"], "seed": 16}
    inference.update({"prompt": MESSAGES, "steer_special_tokens": want["steer_special_tokens"]} if chat
                     else {"prompt": "Once upon a time"})
    if want["n_logprobs"]:
        inference["n_logprobs"] = want["n_logprobs"]
    assert _plain(out["inference"]["body"]) == inference
    public = {"modelId": model,
              "features": [{"modelId": model, "layer": source, "index": f["index"], "strength": f["strength"]}
                           for f in features],
              "temperature": want["temperature"], "n_tokens": want["n_tokens"], "freq_penalty": want["freq_penalty"],
              "seed": 16, "strength_multiplier": want["strength_multiplier"]}
    public.update({"defaultChatMessages": MESSAGES, "steeredChatMessages": MESSAGES,
                   "steer_special_tokens": want["steer_special_tokens"]} if chat else {"prompt": "Once upon a time"})
    assert out["public"]["body"] == public
    assert json.loads(out["inference"]["curl"].split(" -d ", 1)[1].strip("'")) == out["inference"]["body"]
    assert json.loads(out["public"]["curl"].split(" -d ", 1)[1].strip("'")) == public


MISSPELLED = [  # (api, chat, path to rename, new name)
    ("inference", False, ["n_completion_tokens"], "n_completion_token"),  # required
    ("inference", False, ["strength_multiplier"], "strengthMultiplier"),
    ("inference", False, ["n_logprobs"], "n_logprob"),  # optional: from_dict alone would drop it silently
    ("inference", True, ["steer_special_tokens"], "steer_special_token"),
    ("inference", True, ["features", 0, "source"], "layer"),  # nested
    ("inference", True, ["prompt", 1, "content"], "text"),
    ("public", False, ["n_tokens"], "n_completion_tokens"),
    ("public", True, ["steeredChatMessages"], "steered_chat_messages"),
    ("public", True, ["features", 0, "layer"], "source"),
]


@pytest.mark.parametrize("api, chat, path, new", MISSPELLED, ids=[f"{a}-{'chat' if c else 'completion'}-{n}"
                                                                  for a, c, _, n in MISSPELLED])
def test_a_misspelled_field_fails_the_check(api, chat, path, new):
    settings = SETTINGS["orthogonal, normalized, logprobs"]
    body = copy.deepcopy(bodies(generation(settings, FEATURES["one"], chat))[api]["body"])
    holder = body
    for step in path[:-1]:
        holder = holder[step]
    holder[new] = holder.pop(path[-1])
    with pytest.raises((AssertionError, ValidationError)):
        if api == "inference":
            conforms(SteerCompletionChatPostRequest if chat else SteerCompletionRequest, body)
        else:
            assert body == client_payload(chat, settings, FEATURES["one"], 16)


def test_sample_answers_parse_with_the_clients_response_models_and_the_importer():
    steered, default = "Once upon a time the sea", "Once upon a time there"
    completion = {"outputs": [{"type": "STEERED", "output": steered}, {"type": "DEFAULT", "output": default}]}
    parsed = SteerCompletionPost200Response.from_dict(completion)
    assert [(o.type.value, o.output) for o in parsed.outputs] == [("STEERED", steered), ("DEFAULT", default)]
    assert np_api.parse_response(completion) == {"STEERED": steered, "DEFAULT": default}

    public = {"STEERED": steered, "DEFAULT": default}
    assert NPSteerCompletionResponse.model_validate(public).STEERED == steered
    assert np_api.parse_response(public) == public

    def result(text: str, kind: str | None = None) -> dict:
        return {**({"type": kind} if kind else {}), "raw": "<bos>...<start_of_turn>model\n" + text,
                "chat_template": MESSAGES + [{"role": "assistant", "content": text}]}

    chat = {"outputs": [result("Waves.", "STEERED"), result("Hello.", "DEFAULT")],
            "input": {"raw": "<bos>...", "chat_template": MESSAGES}}
    parsed = SteerCompletionChatPost200Response.from_dict(chat)
    assert [o.chat_template[-1].content for o in parsed.outputs] == ["Waves.", "Hello."]
    assert np_api.parse_response(chat, chat=True) == {"STEERED": "Waves.", "DEFAULT": "Hello."}

    public_chat = {"STEERED": result("Waves."), "DEFAULT": result("Hello.")}
    assert NPSteerCompletionChatResponse.model_validate(public_chat).STEERED.chat_template[-1].content == "Waves."
    assert np_api.parse_response(public_chat, chat=True) == {"STEERED": "Waves.", "DEFAULT": "Hello."}
    nothing = {"STEERED": {"raw": "<bos>...", "chat_template": MESSAGES}}  # nothing generated: no assistant turn
    assert np_api.parse_response(nothing, chat=True) == {"STEERED": ""}
    with pytest.raises(np_api.SchemaError, match=r"outputs\[0\].chat_template\[2\].content: expected a string"):
        bad = copy.deepcopy(chat)
        bad["outputs"][0]["chat_template"][2]["content"] = None
        np_api.parse_response(bad, chat=True)
