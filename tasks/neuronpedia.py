"""Neuronpedia round trips: export a stored configuration as requests, import (or fetch) answers,
match them to configurations, compare. Plain functions the CLI calls; nothing here is queued."""

from __future__ import annotations

import ipaddress
import json
import os
import urllib.error
import urllib.request
from urllib.parse import urlsplit

from saejobs.db import explanations as explanation_cache
from saejobs.db import neuronpedia as store
from saejobs.engine import neuronpedia as np_api
from saejobs.engine import registry
from saejobs.engine.compare import agreement, common_prefix
from saejobs.engine.errors import NotFoundError, TransientError, UsageError

MAX_ANSWER_BYTES = 16 * 2**20  # a steer or feature answer is kB to a few MB; SAEJOBS_NEURONPEDIA_MAX_BYTES
KEY_HEADER, SECRET_HEADER = "X-Api-Key", "X-SECRET-KEY"


def _generation(ref: str) -> dict:
    gen = store.generation(ref)
    if gen is None:
        raise NotFoundError(f"no stored generation '{ref}' (give an id or a config key prefix from `saejobs results`)")
    if "ambiguous" in gen:
        raise UsageError(f"'{ref}' matches {gen['ambiguous']} configurations; give more of the config key")
    if gen["type"] != "STEERED":
        raise UsageError(f"generation {gen['id']} is a DEFAULT control; export its STEERED configurations")
    return gen


def bodies(gen: dict, inference_url: str | None = None) -> dict:
    """Both request bodies for one stored configuration, their curl lines and what they cannot express."""
    entry = registry.get(gen["sae_id"])
    features, s = gen["features"], gen["sampling"]
    if any("index" not in f for f in features):
        raise UsageError(f"generation {gen['id']} steers with a raw vector, which no Neuronpedia feature id names")
    entries = [registry.get(f["sae"]) if "sae" in f else entry for f in features]
    methods = {f.get("method", s["method"]) for f in features}
    if len(methods) > 1 or methods - {"SIMPLE_ADDITIVE", "ORTHOGONAL_DECOMP", "PROJECTION_CAP"}:
        raise UsageError(f"generation {gen['id']} steers with {', '.join(sorted(methods))}; a Neuronpedia request "
                         "has one steer_method, SIMPLE_ADDITIVE, ORTHOGONAL_DECOMP or PROJECTION_CAP")
    if any(k in f for f in features for k in ("min", "max", "target", "max_fraction")):
        raise UsageError(f"generation {gen['id']} sets an operation's parameters, which a Neuronpedia request "
                         "cannot carry (its PROJECTION_CAP caps at the strength)")
    s = {**s, "method": methods.pop()}
    chat = gen.get("messages") is not None  # a chat generation: the steer-chat endpoints, its conversation
    if chat:
        public = np_api.public_chat_body(entries, features, gen["messages"], gen["seed"], s)
        inference = np_api.inference_chat_body(entries, features, gen["messages"], gen["seed"], s)
    else:
        public = np_api.public_body(entries, features, gen["prompt"], gen["seed"], s)
        inference = np_api.inference_body(entries, features, gen["prompt"], gen["seed"], s)
    return {"generation": gen["id"], "config_key": gen["config_key"], "sae": gen["sae_id"], "chat": chat,
            "public": {"url": np_api.PUBLIC_CHAT_URL if chat else np_api.PUBLIC_URL, "body": public,
                       "curl": np_api.curl("public", public)},
            "inference": {"body": inference, "curl": np_api.curl("inference", inference, inference_url)},
            "caveats": np_api.caveats(features, s, gen.get("chat_template"), chat)}


def request(ref: str, inference_url: str | None = None) -> dict:
    return bodies(_generation(ref), inference_url)


def _key(canonical: dict) -> str:
    return json.dumps(canonical, sort_keys=True)


def _canonical(gen: dict, api: str) -> dict | None:
    try:
        return np_api.parse_request(bodies(gen)[api]["body"])[1]
    except (UsageError, NotFoundError):
        return None


def import_saved(doc) -> list[dict]:
    """Store every exchange of a saved file (one transaction); returns what matched which configuration.

    Each stored STEERED generation's export is built once per API, into an index by canonical request,
    so matching a file of n answers against m generations costs n + m, not n × m.
    """
    parsed = np_api.parse_saved(doc)
    candidates = store.steered()
    index: dict[str, dict[str, int]] = {}  # api → canonical request (JSON) → generation id, last stored wins

    def matching(api: str, canonical: dict) -> int | None:
        if api not in index:
            index[api] = {_key(c): g["id"] for g in candidates if (c := _canonical(g, api)) is not None}
        return index[api].get(_key(canonical))

    rows = [(api, req, outputs, matching(api, canonical)) for api, req, canonical, outputs in parsed]
    ids = store.store_runs(rows)
    return [{"run": rid, "api": api, "generation": gid, "matched": gid is not None}
            for rid, (api, _, _, gid) in zip(ids, rows)]


def fetch(ref: str, api: str, inference_url: str | None = None, timeout: float = 120) -> dict:
    """Send the exported request to Neuronpedia (or a self-hosted inference server), store the answer."""
    exported = request(ref, inference_url)
    body = exported[api]["body"]
    if api == "public":
        key = os.environ.get("NEURONPEDIA_API_KEY")
        if not key:
            raise UsageError("--fetch from the public API needs NEURONPEDIA_API_KEY (or use --inference-url)")
        url, headers = os.environ.get("NEURONPEDIA_API_URL", np_api.PUBLIC_URL), {KEY_HEADER: key}
        check_key_transport(url)
        if exported["chat"]:  # NEURONPEDIA_API_URL names /api/steer; steer-chat is beside it
            url = url.rstrip("/").rsplit("/", 1)[0] + "/steer-chat"
    else:
        if not inference_url:
            raise UsageError("--api inference needs --inference-url (e.g. http://localhost:5002/v1)")
        url = inference_url.rstrip("/") + np_api.INFERENCE_PATHS[exported["chat"]]
        secret = os.environ.get("NEURONPEDIA_INFERENCE_SECRET")
        headers = {SECRET_HEADER: secret} if secret else {}
    answer = _json_call(urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                               headers={"Content-Type": "application/json", **headers}), timeout)
    return import_saved({"request": body, "response": answer})[0]


def same_origin(a: str, b: str) -> bool:
    """Whether two URLs share an origin (scheme, host, port; RFC 6454): where a secret header may follow."""
    def origin(url: str) -> tuple[str, str, int | None]:
        u = urlsplit(url)
        try:
            port = u.port or {"http": 80, "https": 443}.get(u.scheme.lower())
        except ValueError:  # a port that is not a number: no origin matches it
            port = -1
        return u.scheme.lower(), (u.hostname or "").lower(), port
    return origin(a) == origin(b)


def loopback(host: str | None) -> bool:
    """Whether a host name is this machine: ``localhost`` or a loopback address (an IPv6 one bracketed or not)."""
    if host is None:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_key_transport(url: str, key: str = "NEURONPEDIA_API_KEY", where: str = "NEURONPEDIA_API_URL") -> None:
    """A secret (``key``, by its variable's name) travels over https only, or over plain http to this machine (a
    local stand-in or a tunnel): refused before anything is sent otherwise. ``where`` names what gave ``url``."""
    u = urlsplit(url)
    if u.scheme.lower() == "https" or (u.scheme.lower() == "http" and loopback(u.hostname)):
        return
    raise UsageError(f"{key} is sent only over https (or plain http to this machine), and "
                     f"{where} is {u.scheme or 'no'}://{u.hostname or ''}: use https://")


class _KeepSecretsHome(urllib.request.HTTPRedirectHandler):
    """Follows redirects as urllib does, but the secret headers (the API key, the inference secret) go
    only to the origin the request was first sent to: a redirect anywhere else (another host, port or
    scheme, plain http included) is followed without them — as ``engine.hub`` keeps HF_TOKEN from the CDN."""

    def __init__(self, origin_url: str):
        self.origin_url = origin_url

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and not same_origin(self.origin_url, newurl):
            for name in (KEY_HEADER, SECRET_HEADER):
                new.remove_header(name.capitalize())  # urllib keys headers as str.capitalize() spells them
        return new


def max_answer_bytes() -> int:
    raw = os.environ.get("SAEJOBS_NEURONPEDIA_MAX_BYTES")
    try:
        return int(raw) if raw else MAX_ANSWER_BYTES
    except ValueError:
        raise UsageError(f"SAEJOBS_NEURONPEDIA_MAX_BYTES must be a number of bytes, not {raw!r}") from None


def _read_capped(r, url: str) -> bytes:
    """The answer's bytes, at most ``max_answer_bytes()``: a longer one is refused whole (never stored)."""
    cap = max_answer_bytes()
    too_big = np_api.SchemaError(f"{url} answered more than {cap} bytes (SAEJOBS_NEURONPEDIA_MAX_BYTES); "
                                 "nothing stored")
    length = r.headers.get("Content-Length", "")
    if length.isdigit() and int(length) > cap:
        raise too_big
    data = r.read(cap + 1)
    if len(data) > cap:
        raise too_big
    return data


def _json_call(req: urllib.request.Request, timeout: float):
    """One call to Neuronpedia, its JSON answer; 5xx/429 and network errors are transient, other HTTP
    errors the request's fault, anything but JSON a schema error. Secrets stay with ``req``'s origin
    across redirects; the answer is size-limited."""
    url = req.full_url
    opener = urllib.request.build_opener(_KeepSecretsHome(url))
    try:
        with opener.open(req, timeout=timeout) as r:
            return json.loads(_read_capped(r, url).decode())
    except urllib.error.HTTPError as e:
        kind = TransientError if e.code >= 500 or e.code == 429 else UsageError
        raise kind(f"Neuronpedia answered HTTP {e.code} for {url}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as e:
        raise TransientError(f"cannot reach {url}: {getattr(e, 'reason', e)}") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise np_api.SchemaError(f"{url} did not answer JSON") from None


def feature(sae: str, index: int, fetch: bool = False, timeout: float = 60) -> dict:
    """Where Neuronpedia shows an SAE's feature (its page, its API URL) and, with ``fetch``, what it says
    about it: explanations, ``maxActApprox`` (the steering strength its UI starts from) and top logits."""
    entry = registry.get(sae)
    if not 0 <= index < entry.d_sae:
        raise UsageError(f"feature {index} is out of range for {entry.id} (d_sae {entry.d_sae})")
    model, source = np_api.model_and_source(entry)
    if entry.neuronpedia_id is None:
        raise UsageError(f"{entry.id} has no Neuronpedia id: Neuronpedia does not host this SAE")
    base = os.environ.get("NEURONPEDIA_API_URL", np_api.PUBLIC_URL).rstrip("/").rsplit("/", 1)[0]
    url = f"{base}/feature/{model}/{source}/{index}"
    out = {"sae": entry.id, "model": model, "source": source, "index": index, "url": url,
           "page": f"https://neuronpedia.org/{model}/{source}/{index}"}
    if not fetch:  # offline: what the cache holds (an earlier --fetch, or `saejobs features import`)
        return {**out, "cached": explanation_cache.explanations(entry.id, index)}
    key = os.environ.get("NEURONPEDIA_API_KEY")
    if key:
        check_key_transport(url)
    body = _json_call(urllib.request.Request(
        url, headers={"Accept": "application/json", **({KEY_HEADER: key} if key else {})}), timeout)
    got = np_api.parse_feature(body)
    if (got["model"], got["source"], got["index"]) != (model, source, index):
        raise np_api.SchemaError(f"{url} answered for {got['model']}/{got['source']}/{got['index']}")
    from saejobs.engine.explanations import from_feature_answer

    stored = explanation_cache.store(lambda: from_feature_answer(body, entry.id, index))  # labels work offline now
    return {**out, **got, "cached_new": stored["new"], "cached": explanation_cache.explanations(entry.id, index)}


def compare(sweep_job: str, run: int | None = None, store_rows: bool = True) -> dict:
    """Per configuration with a Neuronpedia answer: exact match, token agreement, first divergence,
    edit distance, and whether the DEFAULT texts agree (the model/precision control)."""
    from saejobs.db import jobs
    from saejobs.engine.models import load_tokenizer

    found = jobs.get(sweep_job)
    sweep_job = found.parent_id or found.id  # a shard's id (or a prefix) names its sweep
    pairs = store.runs_for_sweep(sweep_job, run)
    if not pairs:
        raise NotFoundError(f"no Neuronpedia answer is matched to sweep {sweep_job}"
                            + (f" as run {run}" if run is not None else "") + "; import one first")
    tok = load_tokenizer(pairs[0]["steered"]["model_source"])
    ids = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    rows = []
    for p in pairs:
        ours, theirs = p["steered"]["output"], p["outputs"]["STEERED"]
        m = agreement(ids(ours), ids(theirs))
        default = p["default"]
        if default is not None and "DEFAULT" in p["outputs"]:
            d = agreement(ids(default["output"]), ids(p["outputs"]["DEFAULT"]))
            m.update(default_exact=d["exact"], default_token_agreement=d["token_agreement"])
        else:
            m.update(default_exact=None, default_token_agreement=None)
        g = p["steered"]
        rows.append({"run": p["run"], "api": p["api"], "generation": g["id"], "features": g["features"],
                     "strength": g["features"][0]["strength"], "prompt": g["prompt"], "seed": g["seed"],
                     "temperature": g["sampling"]["temperature"], **m, "ours": ours, "theirs": theirs,
                     "diverge_at_char": common_prefix(ours, theirs)})
    sae = pairs[0]["steered"]["sae_id"]
    known = explanation_cache.labels_of([(f.get("sae") or sae, f.get("index")) for r in rows for f in r["features"]])
    for r in rows:  # each feature's cached explanation, for the report (not stored with the comparison)
        r["labels"] = [known.get((f.get("sae") or sae, f.get("index"))) for f in r["features"]]
    if store_rows:
        store.record_comparisons(sweep_job, [(r["run"], {k: v for k, v in r.items() if k not in ("ours", "theirs",
                                                                                                 "labels")})
                                             for r in rows])
    sampled = any(r["temperature"] > 0 for r in rows)
    summary = {"configurations": len(rows), "mean_token_agreement": sum(r["token_agreement"] for r in rows) / len(rows),
               "sampled": sampled}
    if not sampled:
        summary["exact"] = sum(r["exact"] for r in rows)
        summary["default_exact"] = sum(bool(r["default_exact"]) for r in rows)
    else:
        summary["note"] = "temperature > 0: exact agreement is not expected; only distribution-level figures"
    return {"sweep": sweep_job, "summary": summary, "rows": rows}
