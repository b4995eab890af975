"""Strength search: the strength that maximises the concept score while fluency stays within a bound.

Pure arithmetic over scored rows (no torch, no database), so the search job, the report and the tests
choose by one rule. Per feature × prompt: the curve is concept and NLL against strength (means over
seeds); a strength is *admissible* when its NLL is at most the DEFAULT's plus ``max_nll_increase``;
the choice is the admissible strength with the highest concept score (ties: the weaker strength).
Rounds: a coarse grid over ``[lo, hi]``, then grids of half the previous step around each curve's
best so far, all strengths of a round in one sweep. Every step is a function of the scores, and the
scores of greedy generations are deterministic, so the same call gives the same answer.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

COARSE_POINTS = 5
REFINE_ROUNDS = 1
DEFAULT_MAX_NLL_INCREASE = 1.0  # nats per token over the DEFAULT's


@dataclass(frozen=True)
class Point:
    strength: float
    concept: float
    nll: float | None
    n: int  # rows (seeds) averaged


def round3(x: float) -> float:
    return round(float(x), 3)


def coarse_grid(lo: float, hi: float, points: int = COARSE_POINTS) -> list[float]:
    if points < 2 or hi <= lo:
        return [round3(lo)]
    return [round3(lo + (hi - lo) * i / (points - 1)) for i in range(points)]


def refine(best: list[float], step: float, lo: float, hi: float, done: set[float]) -> list[float]:
    """Strengths at ± step/2 around each best strength, inside ``[lo, hi]``, not already run."""
    out = set()
    for b in best:
        for d in (-step / 2, step / 2):
            s = round3(min(max(b + d, lo), hi))
            if s not in done:
                out.add(s)
    return sorted(out)


def curves(rows: list[dict]) -> tuple[dict[tuple[int, str], list[Point]], dict[tuple[int, str], float | None]]:
    """From scored rows (``generation_rows`` dicts): per (feature, prompt) the curve, sorted by strength,
    and the DEFAULT's concept score for that feature (its baseline); also the DEFAULT's NLL per prompt
    (key (-1, prompt)). Rows steering several features at once, named steers' rows and rows without
    scores are left out."""
    acc: dict[tuple[int, str, float], list[tuple[float, float | None]]] = defaultdict(list)
    base: dict[tuple[int, str], list[float]] = defaultdict(list)
    for r in rows:
        sc = r.get("scores")
        if not sc:
            continue
        if r["type"] == "DEFAULT":
            base[(-1, r["prompt"])].append(sc["nll"])
            for f, c in (sc.get("concept") or {}).items():
                base[(int(f), r["prompt"])].append(c["mean"])
        elif len(r["features"]) == 1 and "index" in r["features"][0] and not (r.get("sampling") or {}).get("steer"):
            f = r["features"][0]
            acc[(int(f["index"]), r["prompt"], float(f["strength"]))].append((sc["concept_mean"], sc["nll"]))
    out: dict[tuple[int, str], list[Point]] = defaultdict(list)
    for (f, prompt, s), vals in sorted(acc.items()):
        nlls = [v[1] for v in vals if v[1] is not None]
        out[(f, prompt)].append(Point(s, _mean([v[0] for v in vals]), _mean(nlls) if nlls else None, len(vals)))
    return dict(out), {k: _mean([v for v in vs if v is not None]) if any(v is not None for v in vs) else None
                       for k, vs in base.items()}


def choose(points: list[Point], default_nll: float | None, max_nll_increase: float) -> Point | None:
    """The admissible point with the highest concept score (ties: the weaker strength)."""
    bound = None if default_nll is None else default_nll + max_nll_increase
    ok = [p for p in points if p.nll is not None and (bound is None or p.nll <= bound)]
    if not ok:
        return None
    return max(ok, key=lambda p: (p.concept, -abs(p.strength)))


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0
