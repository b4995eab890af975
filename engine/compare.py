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
