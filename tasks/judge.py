"""``saejobs judge``: a sweep's generations rated by a chat model behind any OpenAI-compatible endpoint (a vLLM
or llama.cpp server, OpenAI's API), off unless asked for. Runs where it is called: it is network-bound, not
GPU-bound, and resumable — each batch is stored as it completes, and a re-run rates only what is left.

The concept a row is rated on is its feature's description: ``concepts`` (``--concept F=TEXT``) first, else the
cached Neuronpedia explanation; a row with none (a DEFAULT, a vector, a feature with no description) is rated on
instruction and fluency only, and its harmonic mean stays empty."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Callable
from urllib.parse import urlsplit, urlunsplit

from saejobs.db import judgements, results
from saejobs.engine import judge as rules
from saejobs.engine.errors import TransientError, UsageError
from saejobs.tasks.neuronpedia import check_key_transport

BATCH = 16  # rows rated, then stored in one transaction
MAX_ANSWER_BYTES = 1 << 20


def endpoint_url(base: str) -> str:
    """``BASE/chat/completions`` (BASE as OpenAI clients take it, e.g. http://localhost:8000/v1)."""
    u = urlsplit(base)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise UsageError(f"--endpoint must be an http(s) URL such as http://localhost:8000/v1, not '{base}'")
    return urlunsplit((u.scheme, u.netloc, u.path.rstrip("/") + "/chat/completions", "", ""))


def run(ref: str, base: str, model: str, *, concepts: dict[int, str] | None = None, key_env: str = "OPENAI_API_KEY",
        concurrency: int = 4, timeout: float = 120, progress: Callable[[int, int], None] = lambda n, total: None) -> dict:
    job, sweep = results.named_sweep(ref, "judge rates a sweep's generations")
    url = endpoint_url(base)
    key = os.environ.get(key_env) or None
    if key is not None:
        check_key_transport(url, key_env, "the judge endpoint")
    done = judgements.rated(sweep.id, model, rules.PROMPTS)
    rows = [r for r in results.iter_generation_rows(job.id) if r["id"] not in done]
    total, stored, unrated = len(rows), 0, 0
    progress(0, total)

    def ask(content: str) -> str:
        req = urllib.request.Request(url, data=json.dumps(rules.request_body(model, content)).encode(), method="POST",
                                     headers={"Content-Type": "application/json", "Accept": "application/json",
                                              **({"Authorization": f"Bearer {key}"} if key else {})})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                body = r.read(MAX_ANSWER_BYTES + 1)
        except urllib.error.HTTPError as e:
            if e.code >= 500 or e.code == 429:
                raise TransientError(f"the judge endpoint answered {e.code} {e.reason}; run judge again to go on") from None
            raise UsageError(f"the judge endpoint answered {e.code} {e.reason} ({url}, model '{model}')") from None
        except (urllib.error.URLError, OSError) as e:
            why = getattr(e, "reason", None) or e
            raise TransientError(f"cannot reach the judge endpoint {url}: {why}") from None
        if len(body) > MAX_ANSWER_BYTES:
            raise UsageError(f"the judge endpoint's answer is over {MAX_ANSWER_BYTES} bytes; refused")
        try:
            return rules.reply_text(json.loads(body))
        except (ValueError, UnicodeDecodeError) as e:
            raise UsageError(f"the judge endpoint's answer is not a chat completion: {e}") from None

    def rate(row: dict) -> dict:
        text = results.completion_text(row)
        asked = {rules.Criterion.INSTRUCTION: rules.prompt(rules.Criterion.INSTRUCTION, text, instruction=_instruction(row)),
                 rules.Criterion.FLUENCY: rules.prompt(rules.Criterion.FLUENCY, text)}
        if (concept := _concept(row, concepts or {})) is not None:
            asked[rules.Criterion.CONCEPT] = rules.prompt(rules.Criterion.CONCEPT, text, concept=concept)
        replies = {c.value: ask(p) for c, p in asked.items()}
        ratings = {c.value: rules.rating(replies[c.value]) if c.value in replies else None for c in rules.Criterion}
        return {"generation_id": row["id"], "judge": model, "prompts": rules.PROMPTS, "endpoint": url,
                "ratings": {**ratings, "harmonic": rules.harmonic(ratings)}, "replies": replies}

    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        for start in range(0, total, BATCH):
            rated = list(pool.map(rate, rows[start:start + BATCH]))
            unrated += sum(r["ratings"][k] is None for r in rated for k in r["replies"])
            stored += judgements.record(rated)
            progress(start + len(rated), total)
    return {"job": job.id, "judge": model, "prompts": rules.PROMPTS, "endpoint": url, "rated": stored,
            "already_rated": len(done), "unparsed_replies": unrated}


def _instruction(row: dict) -> str:
    """What the completion answers: the prompt, or a chat's last user turn."""
    users = [m["content"] for m in row.get("messages") or [] if m.get("role") == "user"]
    return users[-1] if users else row["prompt"]


def _concept(row: dict, given: dict[int, str]) -> str | None:
    """The description the row's steered features are rated on (" and "-joined for several); None when any
    lacks one, and for DEFAULT rows."""
    if row["type"] != "STEERED" or not row["features"]:
        return None
    out = []
    for f, label in zip(row["features"], row.get("labels") or [None] * len(row["features"])):
        text = given.get(f.get("index")) if "index" in f and "sae" not in f else None
        text = text or label
        if not text:
            return None
        out.append(text)
    return " and ".join(out)
