"""A self-contained HTML page of a sweep's (or a search's) scores: per feature, concept and fluency
against strength with the DEFAULT baseline and the chosen strength marked (inline SVG, no scripts,
no network); each point links to the generations behind it, further down the same page.

Generated text is untrusted: every string goes through ``html.escape``, in text and attributes.
"""

from __future__ import annotations

import hashlib
import io
import tempfile
from collections import defaultdict
from html import escape
from typing import Iterable, Iterator, TextIO

from saejobs.engine import search
from saejobs.engine.report import CSS as BASE_CSS

CSS = BASE_CSS + """
.plot{display:block;margin:8px 0 4px} .gen{margin:4px 0 10px;padding:6px 8px;border:1px solid #ddd}
.scores{color:#555;font-size:12px} section.point:target{background:#eef6ff} .label{font-weight:400;color:#444}
"""
CONCEPT, NLL = "#1f77b4", "#d62728"
W, H, PAD = 680, 260, 48


def html(rows: Iterable[dict], title: str, max_nll_increase: float = search.DEFAULT_MAX_NLL_INCREASE,
         chosen: dict[int, float] | None = None) -> str:
    """The page as one string (``write`` into memory)."""
    buf = io.StringIO()
    write(rows, buf, title, max_nll_increase, chosen)
    return buf.getvalue()


def write(rows: Iterable[dict], out: TextIO, title: str, max_nll_increase: float = search.DEFAULT_MAX_NLL_INCREASE,
          chosen: dict[int, float] | None = None) -> dict:
    """Write the page to ``out`` from one pass over ``rows`` (``generation_rows`` dicts with scores, e.g.
    streamed a page at a time): the curves accumulate as rows pass, each generation's HTML is spooled to a
    temporary file under its point, and the page is written once the curves are known — memory for the
    curves, not the sweep. ``chosen``: feature → strength (a search's answer); otherwise chosen here by
    ``engine.search.choose`` on the curve averaged over prompts. Returns the generations, unscored and
    features counted."""
    spool = tempfile.TemporaryFile()
    where: dict[object, list[tuple[int, int]]] = defaultdict(list)  # point → (offset, length) in the spool
    seen = {"generations": 0, "unscored": 0, "features": set()}
    labels: dict[int, str] = {}  # feature → its cached explanation (the rows' ``labels``), shown beside it

    def passing():
        for r in rows:
            seen["generations"] += 1
            seen["unscored"] += not r.get("scores")
            f = r["features"]
            steer = (r.get("sampling") or {}).get("steer")
            one = r["type"] == "STEERED" and len(f) == 1 and "index" in f[0] and not steer
            if one:
                seen["features"].add(f[0]["index"])
                if (r.get("labels") or [None])[0] and f[0]["index"] not in labels:
                    labels[f[0]["index"]] = r["labels"][0]
            if r["type"] == "DEFAULT" or one or steer:
                text = _gen(r).encode()
                point = "default" if r["type"] == "DEFAULT" else (
                    (steer, float(r["sampling"].get("strength_multiplier", 1.0))) if steer
                    else (f[0]["index"], float(f[0]["strength"])))
                where[point].append((spool.tell(), len(text)))
                spool.write(text)
            yield {**r, "prompt": "*"}

    def spooled(point) -> Iterator[str]:
        for offset, length in where.get(point, ()):
            spool.seek(offset)
            yield spool.read(length).decode()

    with spool:
        curves, base = search.curves(passing())
        default = base.get((-1, "*"))
        default_nll = default.nll if default is not None else None
        out.write(f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
                  f"<style>{CSS}</style></head><body><h1>{escape(title)}</h1>"
                  f"<p>Concept: the steered feature's mean activation on the generated tokens (unsteered pass); "
                  f"fluency: mean NLL of the completion (nats/token). Means over prompts and seeds. The chosen strength "
                  f"has the highest concept score among strengths whose text stays fluent (NLL of its novel tokens ≤ "
                  f"DEFAULT + {max_nll_increase:g}) and not degenerate (search rule, README). Click a point for its "
                  f"generations.</p>")
        ordered = sorted(curves.items(), key=lambda kv: (search.key_order(kv[0][0]), kv[0][1]))
        for (feature, _), pts in ordered:
            pick = (chosen or {}).get(feature)
            if pick is None:
                c = search.choose(pts, default, search.Rule(max_nll_increase))
                pick = c.strength if c else None
            out.write(f"<h2>{_name(feature)}{_label(labels.get(feature))}</h2>")
            out.write(plot(feature, pts, base.get((feature, "*")), default_nll, pick, max_nll_increase))
        if seen["unscored"]:
            out.write(f'<p class="note">{seen["unscored"]} generations have no scores (run <code>saejobs score JOB'
                      f"</code>).</p>")
        out.write('<h2>Generations</h2><section class="point" id="default"><h3>DEFAULT (unsteered)</h3>')
        out.writelines(spooled("default"))
        out.write("</section>")
        for (feature, _), pts in ordered:
            for p in pts:
                at = "multiplier" if isinstance(feature, str) else "strength"
                out.write(f'<section class="point" id="{anchor(feature, p.strength)}"><h3>{_name(feature)}'
                          f"{_label(labels.get(feature))} at {at} {p.strength:g}</h3>")
                out.writelines(spooled((feature, p.strength)))
                out.write("</section>")
        out.write("</body></html>")
    return {**seen, "features": sorted(seen["features"])}


def _label(label: str | None) -> str:
    """A feature's cached explanation after its index (untrusted text: escaped), or nothing."""
    return f' <span class="label">— {escape(label)}</span>' if label else ""


def _name(key: int | str) -> str:
    """A curve's heading: a feature by index, a named steer by its (untrusted, escaped) name."""
    return f"steer {escape(key)}" if isinstance(key, str) else f"feature {key}"


def anchor(feature: int | str, strength: float) -> str:
    """A point's id: ``f7-s50`` for a feature; a named steer's from a digest of its name (any text)."""
    if isinstance(feature, str):
        feature = "steer" + hashlib.sha1(feature.encode()).hexdigest()[:10]
    return f"f{feature}-s{strength:g}".replace(".", "_").replace("-", "m").replace("fm", "f-", 1)


def plot(feature: int | str, pts: list[search.Point], base_concept: float | None, base_nll: float | None,
          pick: float | None, max_nll_increase: float) -> str:
    xs = [p.strength for p in pts]
    x0, x1 = min(xs), max(xs)
    cs = [p.concept for p in pts] + [base_concept or 0.0]
    bound = None if base_nll is None else base_nll + max_nll_increase
    ns = [p.nll for p in pts if p.nll is not None] + ([base_nll, bound] if base_nll is not None else [])
    c1 = max(max(cs), 1e-9)
    n0, n1 = (min(ns), max(ns)) if ns else (0.0, 1.0)
    n1 = n1 if n1 > n0 else n0 + 1.0

    def x(v: float) -> float:
        return PAD + (v - x0) / ((x1 - x0) or 1.0) * (W - 2 * PAD)

    def yc(v: float) -> float:
        return H - PAD - v / c1 * (H - 2 * PAD)

    def yn(v: float) -> float:
        return H - PAD - (v - n0) / (n1 - n0) * (H - 2 * PAD)

    out = [f'<svg class="plot" data-feature="{escape(str(feature))}" xmlns="http://www.w3.org/2000/svg" width="{W}" '
           f'height="{H}" role="img" aria-label="{_name(feature)}: concept and NLL against strength">',
           f'<line x1="{PAD}" y1="{H - PAD}" x2="{W - PAD}" y2="{H - PAD}" stroke="#444"/>',
           f'<line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{H - PAD}" stroke="{CONCEPT}"/>',
           f'<line x1="{W - PAD}" y1="{PAD}" x2="{W - PAD}" y2="{H - PAD}" stroke="{NLL}"/>',
           f'<text x="{W / 2}" y="{H - 10}" text-anchor="middle">strength</text>',
           f'<text x="{PAD - 4}" y="{PAD - 8}" fill="{CONCEPT}">concept (max {c1:.3g})</text>',
           f'<text x="{W - PAD + 4}" y="{PAD - 8}" fill="{NLL}" text-anchor="end">NLL {n0:.2f}–{n1:.2f}</text>',
           f'<text x="{PAD}" y="{H - PAD + 16}" text-anchor="middle">{x0:g}</text>',
           f'<text x="{W - PAD}" y="{H - PAD + 16}" text-anchor="middle">{x1:g}</text>']
    if base_concept is not None:
        out.append(f'<line class="baseline" x1="{PAD}" x2="{W - PAD}" y1="{yc(base_concept):.1f}" '
                   f'y2="{yc(base_concept):.1f}" stroke="{CONCEPT}" stroke-dasharray="4 4"><title>DEFAULT concept '
                   f'{base_concept:.3g}</title></line>')
    if base_nll is not None:
        out.append(f'<line class="baseline" x1="{PAD}" x2="{W - PAD}" y1="{yn(base_nll):.1f}" y2="{yn(base_nll):.1f}" '
                   f'stroke="{NLL}" stroke-dasharray="4 4"><title>DEFAULT NLL {base_nll:.3f}</title></line>')
    if bound is not None:
        out.append(f'<line class="bound" x1="{PAD}" x2="{W - PAD}" y1="{yn(bound):.1f}" y2="{yn(bound):.1f}" '
                   f'stroke="{NLL}" stroke-dasharray="1 3"/><text x="{W / 2}" y="{yn(bound) + 14:.1f}" '
                   f'fill="{NLL}" text-anchor="middle">NLL bound {bound:.2f}</text>')  # below its line: clear of the axes' labels
    if pick is not None:
        out.append(f'<line class="chosen" x1="{x(pick):.1f}" x2="{x(pick):.1f}" y1="{PAD}" y2="{H - PAD}" '
                   f'stroke="#2ca02c" stroke-width="2"/><text x="{x(pick) + (4 if x(pick) < W / 2 else -4):.1f}" '
                   f'y="{PAD + 12}" fill="#2ca02c" text-anchor="{"start" if x(pick) < W / 2 else "end"}">'
                   f'chosen {pick:g}</text>')  # inside the plot on either side
    for colour, ys in ((CONCEPT, [yc(p.concept) for p in pts]), (NLL, [yn(p.nll) if p.nll is not None else None
                                                                       for p in pts])):
        line = [(x(p.strength), y) for p, y in zip(pts, ys) if y is not None]
        out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="'
                   + " ".join(f"{a:.1f},{b:.1f}" for a, b in line) + '"/>')
    for p in pts:
        tip = escape(f"strength {p.strength:g}: concept {p.concept:.3g}, NLL "
                     + (f"{p.nll:.3f}" if p.nll is not None else "n/a") + f" ({p.n} generations)")
        out.append(f'<a class="point" href="#{anchor(feature, p.strength)}"><title>{tip}</title>'
                   f'<circle cx="{x(p.strength):.1f}" cy="{yc(p.concept):.1f}" r="5" fill="{CONCEPT}"/>'
                   + (f'<circle cx="{x(p.strength):.1f}" cy="{yn(p.nll):.1f}" r="4" fill="{NLL}"/>'
                      if p.nll is not None else "") + "</a>")
    out.append("</svg>")
    return "".join(out)


def _gen(r: dict) -> str:
    return (f'<div class="gen"><div class="text">{escape(r["output"])}</div><div class="scores">seed {r["seed"]}; '
            f'{escape(_scores(r.get("scores")))}</div></div>')


def _scores(sc: dict | None) -> str:
    if not sc:
        return "not scored"
    nll = sc.get("nll")
    return (f"concept {sc.get('concept_mean') or 0:.3g} (fires on {100 * (sc.get('concept_fire_rate') or 0):.0f}% of "
            f"tokens), NLL {nll:.3f}" if nll is not None else "NLL n/a") + (
        f", distinct-2 {sc.get('distinct_2', 0):.2f}, longest repeat {sc.get('longest_repeat', 0)}"
        f"{', stopped at EOS' if sc.get('stopped_at_eos') else ''}")
