"""How far two generations of the same request agree, at the token level.

Both texts are tokenised with the model's tokenizer (so an implementation that returns text, as
Neuronpedia does, is compared on the same footing as one that stores ids). Agreement is positional:
the share of positions, over the longer output, where both have the same token; the first
divergence is the first such position that differs; the edit distance is Levenshtein over tokens,
divided by the longer length.
"""

from __future__ import annotations


def agreement(ours: list[int], theirs: list[int]) -> dict:
    n = max(len(ours), len(theirs))
    first = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), None)
    if first is None and len(ours) != len(theirs):
        first = min(len(ours), len(theirs))
    same = sum(a == b for a, b in zip(ours, theirs))
    return {"exact": ours == theirs, "token_agreement": same / n if n else 1.0, "first_divergence": first,
            "edit_distance": levenshtein(ours, theirs) / n if n else 0.0, "tokens": n}


def levenshtein(a: list, b: list) -> int:
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def common_prefix(a: str, b: str) -> int:
    """Characters the two texts share from the start (where a report's highlighting begins)."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


SCORE_DELTAS = ("concept_mean", "concept_fire_rate", "nll", "nll_novel", "distinct_2", "longest_repeat")
SAMPLING_KEYS = ("n_tokens", "temperature", "freq_penalty", "sampling_semantics", "presence_penalty", "top_k", "top_p",
                 "method", "normalize", "strength_multiplier", "steer_special_tokens")


def configuration(row: dict) -> tuple:
    """What a generation asked for, whatever ran it: its kind, features (each with its strength and
    parameters), prompt or conversation, seed and named steer. Two sweeps' rows with one configuration are
    the same request (the SAE's version, the model, its dtype or the sampling may differ: that is what a
    comparison of two sweeps looks at)."""
    import json

    sampling = row.get("sampling") or {}
    return (row["type"], json.dumps(row["features"], sort_keys=True), row["prompt"] if not row.get("messages") else
            json.dumps(row["messages"], sort_keys=True), row["seed"], sampling.get("steer"),
            sampling.get("strength_multiplier") if sampling.get("steer") else None)


def sweeps(a_rows: list[dict], b_rows: list[dict], ids_a=None, ids_b=None) -> dict:
    """Two sweeps' generations matched by ``configuration``: per match the token agreement (``agreement``
    over token ids, or over ``ids_a``/``ids_b(row)`` when the sweeps' tokenizers differ) and the score
    deltas (B − A); the configurations only one side has; and a summary."""
    ids_a = ids_a or (lambda r: r["token_ids"])
    ids_b = ids_b or (lambda r: r["token_ids"])
    by_config = {configuration(r): r for r in b_rows}
    matched, only_a = [], []
    for a in a_rows:
        b = by_config.pop(configuration(a), None)
        if b is None:
            only_a.append(a)
            continue
        m = agreement(ids_a(a), ids_b(b))
        sa, sb = a.get("scores") or {}, b.get("scores") or {}
        deltas = {k: sb[k] - sa[k] for k in SCORE_DELTAS if isinstance(sa.get(k), (int, float))
                  and isinstance(sb.get(k), (int, float)) and not isinstance(sa.get(k), bool)}
        matched.append({"type": a["type"], "features": a["features"], "labels": a.get("labels"),
                        "strength": a["features"][0]["strength"] if a["features"] else None,
                        "steer": (a.get("sampling") or {}).get("steer"), "prompt": a["prompt"], "seed": a["seed"],
                        "generation_a": a["id"], "generation_b": b["id"], **m, "deltas": deltas,
                        "a": a["output"], "b": b["output"], "diverge_at_char": common_prefix(a["output"], b["output"])})
    sampling_a = {k: (a_rows[0].get("sampling") or {}).get(k) for k in SAMPLING_KEYS} if a_rows else {}
    sampling_b = {k: (b_rows[0].get("sampling") or {}).get(k) for k in SAMPLING_KEYS} if b_rows else {}
    n = len(matched)
    summary = {"matched": n, "only_a": len(only_a), "only_b": len(by_config),
               "exact": sum(m["exact"] for m in matched),
               "mean_token_agreement": sum(m["token_agreement"] for m in matched) / n if n else None,
               "mean_deltas": {k: sum(d) / len(d) for k in SCORE_DELTAS
                               if (d := [m["deltas"][k] for m in matched if k in m["deltas"]])},
               "sampling_differs": {k: [sampling_a[k], sampling_b[k]] for k in SAMPLING_KEYS
                                    if sampling_a.get(k) != sampling_b.get(k)}}
    return {"summary": summary, "rows": matched,
            "only_a": [configuration(r)[:4] for r in only_a], "only_b": [c[:4] for c in by_config]}
