"""A stored sweep of any size for export tests and ``bench/export.py``: scored rows written straight to
the database (no model), every shape an export meets (DEFAULT, steered, a chat row, unscored rows)."""

from __future__ import annotations

import random


def scores(rng: random.Random, features: list[int]) -> dict:
    nll = rng.uniform(1, 4)
    return {"concept_mean": rng.uniform(0, 50), "concept_fire_rate": rng.random(), "nll": nll, "perplexity": 2.718 ** nll,
            "distinct_1": rng.random(), "distinct_2": rng.random(), "longest_repeat": rng.randint(0, 9),
            "stopped_at_eos": rng.random() < 0.5, "completion_tokens": 32,
            "concept": {str(f): {"mean": rng.uniform(0, 5), "fire_rate": rng.random()} for f in features}}


def stored_sweep(n: int, *, features: int = 20, text_chars: int = 400, page: int = 2_000, seed: int = 0,
                 job_id: str | None = None) -> str:
    """A succeeded sweep job with ``n`` generations (prompts × strengths × features, DEFAULTs first)."""
    from saejobs.db import jobs, results

    rng = random.Random(seed)
    job = jobs.create("sweep", {"sae": "x"}, sae_id="test/sae", job_id=job_id)
    sweep = results.ensure_sweep(job.id, "test/sae", "m", {}, {})
    feats = list(range(features))
    rows = []
    for i in range(n):
        default = i % 50 == 0
        feature, strength = feats[i % features], float((i // features) % 10 * 10)
        rows.append({"config_key": f"k{i:08d}", "type": "DEFAULT" if default else "STEERED",
                     "features": [] if default else [{"index": feature, "strength": strength}],
                     "prompt": f"prompt {i % 7}, with \"quotes\" and, commas", "prompt_token_ids": list(range(8)),
                     "seed": 40 + i % 3, "sampling": {"temperature": 0.0}, "output": f"out {i} " + "x" * text_chars,
                     "token_ids": list(range(32)), "logprobs": [-0.5] * 32,
                     "messages": [{"role": "user", "content": "hi"}] if i == 3 else None,
                     "scores": None if i % 97 == 5 else scores(rng, feats if default else [feature])})
        if len(rows) == page:
            results.add_generations(sweep, rows)
            rows = []
    if rows:
        results.add_generations(sweep, rows)
    assert jobs.claim(job.id, worker="w", host="h", gpu=None)
    assert jobs.finish(job.id, "succeeded", worker="w", result={"sweep_id": sweep})
    return job.id


def stored_search(rounds: list[str]) -> str:
    """A succeeded search job whose rounds are these sweep jobs."""
    from saejobs.db import jobs

    job = jobs.create("search", {"sae": "x"}, sae_id="test/sae")
    assert jobs.claim(job.id, worker="w", host="h", gpu=None)
    assert jobs.finish(job.id, "succeeded", worker="w", result={"rounds": rounds, "chosen": [], "max_nll_increase": 1.0})
    return job.id
