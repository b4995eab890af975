"""Strength search: the strength that maximises the concept score while the text stays fluent and not
degenerate.

Pure arithmetic over scored rows (no torch, no database), so the search job, the report and the tests
choose by one rule. Per feature × prompt: the curve is concept, fluency and degeneration against
strength (means over seeds); a strength is *admissible* (``Rule``) when, against the prompt's DEFAULT:

- its fluency NLL is at most the DEFAULT's plus ``max_nll_increase`` — ``nll_novel``, the NLL of the
  tokens that repeat no earlier bigram, which repetition cannot lower (a phrase looped twenty times has a
  lower plain NLL than fluent text); rows scored before it existed fall back to the plain NLL;
- its longest repeated n-gram is at most the DEFAULT's plus ``max_repeat_increase`` tokens, and
- its distinct-2 is at most ``max_distinct2_drop`` below the DEFAULT's.

The choice is the admissible strength with the highest concept score (ties: the weaker strength). Each
point also gets a *combined* score, as AxBench combines its ratings: the harmonic mean of the concept
(the share of the completion's tokens where the feature fires) and the fluency (``exp(-excess NLL)``, 1
when as fluent as the DEFAULT), 0 when inadmissible. With held-out prompts the strength is chosen per
feature on the training prompts by the combined score averaged over them (``choose_across``) and
reported on the held-out ones. Rounds: a coarse grid over ``[lo, hi]``, then grids of half the previous
step around each best so far, all strengths of a round in one sweep. Every step is a function of the
scores, and the scores of greedy generations are deterministic, so the same call gives the same answer.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

COARSE_POINTS = 5
REFINE_ROUNDS = 1
DEFAULT_MAX_NLL_INCREASE = 1.0  # nats per token over the DEFAULT's
DEFAULT_MAX_REPEAT_INCREASE = 4  # tokens of the longest repeated n-gram over the DEFAULT's
DEFAULT_MAX_DISTINCT2_DROP = 0.2  # distinct-2 below the DEFAULT's


@dataclass(frozen=True)
class Point:
    strength: float
    concept: float
    nll: float | None
    n: int  # rows (seeds) averaged
    nll_novel: float | None = None  # None: rows scored before the measure existed
    distinct_2: float | None = None
    longest_repeat: float | None = None
    fire_rate: float | None = None


@dataclass(frozen=True)
class Baseline:
    """A prompt's DEFAULT generations (means over seeds): what a steered point is judged against."""

    nll: float | None
    nll_novel: float | None = None
    distinct_2: float | None = None
    longest_repeat: float | None = None


@dataclass(frozen=True)
class Rule:
    """When a point is admissible, and its combined score (module docstring)."""

    max_nll_increase: float = DEFAULT_MAX_NLL_INCREASE
    max_repeat_increase: float = DEFAULT_MAX_REPEAT_INCREASE
    max_distinct2_drop: float = DEFAULT_MAX_DISTINCT2_DROP

    def excess_nll(self, p: Point, base: Baseline | None) -> float | None:
        """The point's fluency NLL over the DEFAULT's (``nll_novel`` where both have it); None: unscored."""
        novel = p.nll_novel is not None and base is not None and base.nll_novel is not None
        mine = p.nll_novel if novel else p.nll
        if mine is None:
            return None
        ref = None if base is None else (base.nll_novel if novel else base.nll)
        return 0.0 if ref is None else mine - ref

    def admissible(self, p: Point, base: Baseline | None) -> bool:
        """No DEFAULT: only an unscored point is refused (nothing to judge against)."""
        excess = self.excess_nll(p, base)
        if excess is None or excess > self.max_nll_increase:
            return False
        if base is not None and p.longest_repeat is not None and base.longest_repeat is not None \
                and p.longest_repeat > base.longest_repeat + self.max_repeat_increase:
            return False
        if base is not None and p.distinct_2 is not None and base.distinct_2 is not None \
                and p.distinct_2 < base.distinct_2 - self.max_distinct2_drop:
            return False
        return True

    def combined(self, p: Point, base: Baseline | None) -> float:
        """Harmonic mean of concept (fire rate) and fluency (``exp(-excess NLL)``); 0 when inadmissible."""
        if not self.admissible(p, base) or not p.fire_rate:
            return 0.0
        fluency = math.exp(-max(0.0, self.excess_nll(p, base)))
        return 2 * p.fire_rate * fluency / (p.fire_rate + fluency)


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


def curves(rows) -> tuple[dict[tuple[int | str, str], list[Point]], dict[tuple[int | str, str], object]]:
    """From scored rows (``generation_rows`` dicts): per (feature, prompt) the curve, sorted by strength;
    and per (feature, prompt) the DEFAULT's concept score for that feature (its baseline), and per
    (-1, prompt) the DEFAULT's ``Baseline``. A named steer's rows make the curve of (its name, prompt), over
    its strength multiplier, their concept the mean over the steer's concept features (its baseline: the
    DEFAULT's mean over those it was scored on). Rows steering several features at once without a name,
    vectors and rows without scores are left out."""
    acc: dict[tuple[int | str, str, float], list[dict]] = defaultdict(list)
    base: dict[tuple[int, str], list] = defaultdict(list)
    defaults: dict[str, list[dict]] = defaultdict(list)  # per prompt, the DEFAULT's concept mapping per row
    steer_keys: dict[tuple[str, str], set[str]] = defaultdict(set)
    for r in rows:
        sc = r.get("scores")
        if not sc:
            continue
        steer = (r.get("sampling") or {}).get("steer")
        if r["type"] == "DEFAULT":
            base[(-1, r["prompt"])].append(sc)
            defaults[r["prompt"]].append(sc.get("concept") or {})
            for f, c in (sc.get("concept") or {}).items():
                if f.isdigit():
                    base[(int(f), r["prompt"])].append(c["mean"])
        elif steer:
            acc[(steer, r["prompt"], float(r["sampling"].get("strength_multiplier", 1.0)))].append(sc)
            steer_keys[(steer, r["prompt"])] |= set(sc.get("concept") or {})
        elif len(r["features"]) == 1 and "index" in r["features"][0]:
            f = r["features"][0]
            acc[(int(f["index"]), r["prompt"], float(f["strength"]))].append(sc)
    out: dict[tuple[int | str, str], list[Point]] = defaultdict(list)
    for (f, prompt, s), scs in sorted(acc.items(), key=lambda kv: (key_order(kv[0][0]), kv[0][1:])):
        out[(f, prompt)].append(Point(s, _mean([c["concept_mean"] or 0.0 for c in scs]), _field(scs, "nll"), len(scs),
                                      _field(scs, "nll_novel"), _field(scs, "distinct_2"),
                                      _field(scs, "longest_repeat"), _field(scs, "concept_fire_rate")))
    baselines: dict[tuple[int | str, str], object] = {}
    for k, vs in base.items():
        if k[0] == -1:
            baselines[k] = Baseline(_field(vs, "nll"), _field(vs, "nll_novel"), _field(vs, "distinct_2"),
                                    _field(vs, "longest_repeat"))
        else:
            baselines[k] = _mean(vs)
    for (name, prompt), keys in steer_keys.items():
        seen = [c[k]["mean"] for c in defaults[prompt] for k in keys if k in c]
        if seen:
            baselines[(name, prompt)] = _mean(seen)
    return dict(out), baselines


def key_order(key: int | str) -> tuple:
    """Features (by index) before named steers (by name): one order for curves keyed by either."""
    return (0, key, "") if isinstance(key, int) else (1, 0, key)


def _field(scores: list[dict], name: str) -> float | None:
    """The mean of a score over rows; None unless every row has it (a mix of old and new rows)."""
    vals = [s.get(name) for s in scores]
    return None if not vals or any(v is None for v in vals) else _mean(vals)


def choose(points: list[Point], base: Baseline | None, rule: Rule = Rule()) -> Point | None:
    """The admissible point with the highest concept score (ties: the weaker strength)."""
    ok = [p for p in points if rule.admissible(p, base)]
    if not ok:
        return None
    return max(ok, key=lambda p: (p.concept, -abs(p.strength)))


def choose_across(per_prompt: dict[str, list[Point]], bases: dict[str, Baseline | None], rule: Rule = Rule()
                  ) -> tuple[float, float] | None:
    """(strength, mean combined score) best over several prompts: the combined score averaged over the
    prompts (a prompt without that strength counts 0; ties: the weaker strength); None when every strength
    scores 0 (none admissible and firing)."""
    scores: dict[float, float] = defaultdict(float)
    for prompt, pts in per_prompt.items():
        for p in pts:
            scores[p.strength] += rule.combined(p, bases.get(prompt)) / len(per_prompt)
    best = max(scores.items(), key=lambda kv: (kv[1], -abs(kv[0])), default=None)
    return best if best and best[1] > 0 else None


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0
