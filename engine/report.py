"""A self-contained HTML page for a saejobs ↔ Neuronpedia comparison: the texts side by side with the
divergence highlighted, and token agreement plotted against strength (inline SVG, no scripts, no
network), so the file can be mailed or opened anywhere."""

from __future__ import annotations

from html import escape

CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px;color:#1b1b1b}
h1{font-size:20px} table{border-collapse:collapse;width:100%;margin-top:16px}
td,th{border:1px solid #ccc;padding:6px 8px;vertical-align:top;text-align:left}
th{background:#f3f3f3} .text{font-family:ui-monospace,monospace;white-space:pre-wrap;max-width:38em}
mark{background:#ffd2d2} .ok{color:#0a7a2f;font-weight:600} .bad{color:#b00020;font-weight:600}
.note{background:#fff6d6;padding:8px 12px;border-left:4px solid #e6b800}
"""
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def _highlight(text: str, at: int) -> str:
    return escape(text[:at]) + (f"<mark>{escape(text[at:])}</mark>" if at < len(text) else "")


def _plot(rows: list[dict], width: int = 640, height: int = 240, legend: int = 130) -> str:
    """Token agreement (0-1) against strength, one line per feature set."""
    series: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        label = "+".join(str(f.get("index")) for f in r["features"])
        series.setdefault(label, []).append((float(r["strength"]), float(r["token_agreement"])))
    xs = [x for pts in series.values() for x, _ in pts] or [0.0]
    lo, hi = min(xs), max(xs)
    span = (hi - lo) or 1.0
    pad = 40

    def px(x: float, y: float) -> tuple[float, float]:
        return pad + (x - lo) / span * (width - legend - 2 * pad), height - pad - y * (height - 2 * pad)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="token agreement against strength">',
             f'<line x1="{pad}" y1="{height - pad}" x2="{width - legend - pad}" y2="{height - pad}" stroke="#444"/>',
             f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" stroke="#444"/>',
             f'<text x="{(width - legend) / 2}" y="{height - 8}" text-anchor="middle">strength</text>',
             f'<text x="12" y="{height / 2}" transform="rotate(-90 12 {height / 2})" text-anchor="middle">'
             'token agreement</text>',
             f'<text x="{pad - 6}" y="{pad + 4}" text-anchor="end">1</text>',
             f'<text x="{pad - 6}" y="{height - pad + 4}" text-anchor="end">0</text>',
             f'<text x="{pad}" y="{height - pad + 16}" text-anchor="middle">{lo:g}</text>',
             f'<text x="{width - legend - pad}" y="{height - pad + 16}" text-anchor="middle">{hi:g}</text>']
    for i, (label, pts) in enumerate(sorted(series.items())):
        colour = COLOURS[i % len(COLOURS)]
        coords = [px(x, y) for x, y in sorted(pts)]
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="'
                     + " ".join(f"{x:.1f},{y:.1f}" for x, y in coords) + '"/>')
        parts += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{colour}"/>' for x, y in coords]
        parts.append(f'<text x="{width - legend + 8}" y="{pad + 16 * i}" fill="{colour}">feature {escape(label)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def html(result: dict, title: str) -> str:
    s = result["summary"]
    if s["sampled"]:
        head = f'<p class="note">{escape(s["note"])}. Mean token agreement {s["mean_token_agreement"]:.3f}.</p>'
    else:
        head = (f'<p>{s["exact"]}/{s["configurations"]} configurations identical to Neuronpedia; DEFAULT (unsteered) '
                f'texts identical in {s["default_exact"]}/{s["configurations"]} (if those differ, the difference is '
                f'the model or its precision, not the steering). Mean token agreement {s["mean_token_agreement"]:.3f}.</p>')
    rows = []
    for r in result["rows"]:
        mark = '<span class="ok">identical</span>' if r["exact"] else (
            f'<span class="bad">diverges at token {r["first_divergence"]}</span>')
        default = {True: '<span class="ok">same</span>', False: '<span class="bad">differ</span>',
                   None: "n/a"}[r["default_exact"]]
        feats = ", ".join(f'{f.get("index")}@{f["strength"]:g}' + (f" ({lb})" if lb else "")
                          for f, lb in zip(r["features"], r.get("labels") or [None] * len(r["features"])))
        rows.append(f"<tr><td>{escape(feats)}<br>seed {r['seed']}<br>run {r['run']} ({escape(r['api'])})</td>"
                    f"<td>{mark}<br>agreement {r['token_agreement']:.3f}<br>edit distance {r['edit_distance']:.3f}"
                    f"<br>DEFAULT {default}</td>"
                    f'<td class="text">{_highlight(r["ours"], r["diverge_at_char"])}</td>'
                    f'<td class="text">{_highlight(r["theirs"], r["diverge_at_char"])}</td></tr>')
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f"<style>{CSS}</style></head><body><h1>{escape(title)}</h1>{head}{_plot(result['rows'])}"
            "<table><tr><th>configuration</th><th>agreement</th><th>saejobs</th><th>Neuronpedia</th></tr>"
            + "".join(rows) + "</table></body></html>")


def sweeps_html(result: dict, title: str) -> str:
    """Two sweeps side by side (``engine.compare.sweeps``): each configuration both ran, A's text and B's
    from where they part highlighted, with the score deltas. Every text escaped."""
    s, a, b = result["summary"], result["a"], result["b"]
    who = lambda x: f"{x['job'][:8]} ({x['model']}, {x['dtype']}, SAE {x['sae']})"  # noqa: E731
    head = (f"<p>A: sweep {escape(who(a))}<br>B: sweep {escape(who(b))}</p><p>{s['exact']}/{s['matched']} "
            f"configurations identical; mean token agreement {s['mean_token_agreement']:.3f}; only in A "
            f"{s['only_a']}, only in B {s['only_b']}.</p>")
    if s["sampling_differs"]:
        head += "<p>Settings that differ: " + escape(", ".join(f"{k} {v[0]} vs {v[1]}"
                                                               for k, v in s["sampling_differs"].items())) + "</p>"
    rows = []
    for r in result["rows"]:
        mark = '<span class="ok">identical</span>' if r["exact"] else (
            f'<span class="bad">diverges at token {r["first_divergence"]}</span>')
        feats = ", ".join(f'{f.get("index", f.get("vector"))}@{f["strength"]:g}' + (f" ({lb})" if lb else "")
                          for f, lb in zip(r["features"], r.get("labels") or [None] * len(r["features"]))) or r["type"]
        deltas = "<br>".join(f"Δ {escape(k)} {v:+.3f}" for k, v in r["deltas"].items())
        rows.append(f"<tr><td>{escape(feats)}<br>seed {r['seed']}</td>"
                    f"<td>{mark}<br>agreement {r['token_agreement']:.3f}<br>{deltas}</td>"
                    f'<td class="text">{_highlight(r["a"], r["diverge_at_char"])}</td>'
                    f'<td class="text">{_highlight(r["b"], r["diverge_at_char"])}</td></tr>')
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f"<style>{CSS}</style></head><body><h1>{escape(title)}</h1>{head}"
            "<table><tr><th>configuration</th><th>agreement, B − A</th><th>A</th><th>B</th></tr>"
            + "".join(rows) + "</table></body></html>")
