"""``saejobs neuronpedia request|import`` and ``saejobs compare``: the same request on both sides."""

from __future__ import annotations

import json
from pathlib import Path

import click

from saejobs.cli.complete import job_ids, sae_ids
from saejobs.cli.output import console, emit, json_option, plain, table
from saejobs.engine.errors import UsageError


@click.group()
def neuronpedia() -> None:
    """Export configurations as Neuronpedia requests; import (or fetch) Neuronpedia's answers."""


@neuronpedia.command("request")
@click.argument("config")
@click.option("--inference-url", help="A self-hosted Neuronpedia inference server, e.g. http://localhost:5002/v1.")
@click.option("--fetch", is_flag=True, help="Send the request and store the answer (needs NEURONPEDIA_API_KEY "
                                             "for the public API, or --inference-url).")
@click.option("--api", type=click.Choice(["public", "inference"]), help="Which API --fetch uses "
              "(default: inference with --inference-url, else public).")
@json_option
def request(config: str, inference_url: str | None, fetch: bool, api: str | None, as_json: bool) -> None:
    """The public-API and inference-server bodies (and curl lines) for a stored configuration: the
    steer-chat endpoints' for a chat generation (--chat sweeps), the completion endpoints' otherwise.

    CONFIG is a generation id or a config key prefix, as `saejobs results JOB --json` shows them."""
    from saejobs.tasks import neuronpedia as np_tasks

    if fetch:
        got = np_tasks.fetch(config, api or ("inference" if inference_url else "public"), inference_url)
        emit(got, as_json, lambda: console().print(
            f"stored Neuronpedia run {got['run']} ({got['api']}), matched to generation {got['generation']}"))
        return
    out = np_tasks.request(config, inference_url)

    def render() -> None:
        for api_name in ("public", "inference"):
            console().print(f"[bold]{api_name}[/]")
            console().print_json(json.dumps(out[api_name]["body"]))
            console().print(out[api_name]["curl"], soft_wrap=True, highlight=False, markup=False)
        for c in out["caveats"]:
            console().print(f"[yellow]note:[/] {c}")
    emit(out, as_json, render)


@neuronpedia.command("feature")
@click.argument("sae", shell_complete=sae_ids)
@click.argument("index", type=click.IntRange(0))
@click.option("--fetch", is_flag=True, help="Ask Neuronpedia's public API what it says about the feature.")
@json_option
def feature(sae: str, index: int, fetch: bool, as_json: bool) -> None:
    """Where Neuronpedia shows feature INDEX of SAE; with --fetch, its explanations (cached in the database
    for labels and `features search`), maxActApprox (the strength Neuronpedia's steering UI starts from)
    and top positive/negative logits. Without --fetch, the explanations cached so far."""
    from saejobs.tasks import neuronpedia as np_tasks

    got = np_tasks.feature(sae, index, fetch)

    def render() -> None:
        rows = [["page", got["page"]], ["api", got["url"]]]
        if fetch:
            rows += [["explanations", " | ".join(got["explanations"]) or "(none)"],
                     ["maxActApprox", got["max_act_approx"]], ["density", got["density"]],
                     ["top logits", " ".join(got["pos_str"][:10])],
                     ["bottom logits", " ".join(got["neg_str"][:10])]]
        else:
            rows += [["cached explanations", " | ".join(e["description"] for e in got["cached"])
                      or "(none: --fetch, or `saejobs features import` an export)"]]
        table(f"{got['model']}/{got['source']}/{got['index']}", ["field", "value"], rows)
    emit(got, as_json, render)


@neuronpedia.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@json_option
def import_(file: Path, as_json: bool) -> None:
    """Store saved answers: {"request": BODY, "response": ANSWER} or a list of them, either API.

    Each is matched to the stored configuration its request describes, or kept as a standalone run."""
    from saejobs.tasks import neuronpedia as np_tasks

    try:
        doc = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UsageError(f"{file}: not JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except UnicodeDecodeError:
        raise UsageError(f"{file}: not UTF-8 text") from None
    got = np_tasks.import_saved(doc)
    emit(got, as_json, lambda: table(f"imported {len(got)} Neuronpedia answer(s) from {file.name}",
                                     ["run", "api", "matched generation"],
                                     ([g["run"], g["api"], g["generation"] if g["matched"] else "standalone"]
                                      for g in got)))


@click.command()
@click.argument("sweep", shell_complete=job_ids)
@click.argument("other", required=False, shell_complete=job_ids)
@click.option("--neuronpedia", "run", type=int, help="Only this Neuronpedia run.")
@click.option("--html", "html_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write a self-contained HTML report here.")
@json_option
def compare(sweep: str, other: str | None, run: int | None, html_path: Path | None, as_json: bool) -> None:
    """Compare a sweep's generations with the Neuronpedia answers matched to it; or, given OTHER, with
    another sweep's: per configuration both ran (same features, strengths, prompt, seed), token agreement
    and score deltas (OTHER − SWEEP)."""
    if other is not None:
        if run is not None:
            raise UsageError("--neuronpedia compares with Neuronpedia's answers; give it without OTHER")
        return _two_sweeps(sweep, other, html_path, as_json)
    from saejobs.db import jobs
    from saejobs.engine.report import html
    from saejobs.tasks import neuronpedia as np_tasks

    job = jobs.get(sweep)
    result = np_tasks.compare(job.id, run)
    if html_path is not None:
        html_path.write_text(html(result, f"saejobs sweep {job.id[:8]} ({job.sae_id}) vs Neuronpedia"), encoding="utf-8")
    s = result["summary"]

    def render() -> None:
        cols = ["run", "features", "strength", "seed", "exact", "token_agreement", "first_divergence",
                "edit_distance", "default_exact"]
        if s["sampled"]:
            cols = [c for c in cols if c not in ("exact", "first_divergence")]
        table(f"sweep {job.id[:8]} vs Neuronpedia", cols,
              ([_cell(r[c]) for c in cols] for r in result["rows"]))
        if s["sampled"]:
            console().print(f"[yellow]{s['note']}[/]; mean token agreement {s['mean_token_agreement']:.3f}")
        else:
            console().print(f"identical: {s['exact']}/{s['configurations']}; DEFAULT identical: "
                          f"{s['default_exact']}/{s['configurations']}; mean token agreement "
                          f"{s['mean_token_agreement']:.3f}")
        if html_path is not None:
            console().print(f"report: {html_path}")
    emit(result, as_json, render)


def _two_sweeps(a: str, b: str, html_path: Path | None, as_json: bool) -> None:
    from saejobs.engine.report import sweeps_html
    from saejobs.tasks import compare as compare_tasks

    result = compare_tasks.sweeps(a, b)
    ida, idb = result["a"]["job"][:8], result["b"]["job"][:8]
    if html_path is not None:
        html_path.write_text(sweeps_html(result, f"sweep {ida} vs sweep {idb}"), encoding="utf-8")
    s = result["summary"]

    def render() -> None:
        cols = ["features", "prompt", "seed", "exact", "token_agreement", "first_divergence", "Δ concept", "Δ nll"]
        table(f"sweep {ida} ({result['a']['model']}, {result['a']['dtype']}) vs sweep {idb} "
              f"({result['b']['model']}, {result['b']['dtype']})", cols,
              ([_cell(r["features"]) if r["features"] else r["type"], r["prompt"][:40], r["seed"], r["exact"],
                _cell(r["token_agreement"]), r["first_divergence"], _cell(r["deltas"].get("concept_mean")),
                _cell(r["deltas"].get("nll"))] for r in result["rows"]))
        line = (f"identical: {s['exact']}/{s['matched']} configurations; mean token agreement "
                f"{s['mean_token_agreement']:.3f}")
        if s["only_a"] or s["only_b"]:
            line += f"; only in {ida}: {s['only_a']}, only in {idb}: {s['only_b']}"
        console().print(plain(line))
        if s["sampling_differs"]:
            console().print(plain("settings that differ: " + ", ".join(f"{k} {v[0]} vs {v[1]}"
                                                                        for k, v in s["sampling_differs"].items())))
        if html_path is not None:
            console().print(f"report: {html_path}")
    emit(result, as_json, render)


def _cell(v):
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.3f}"
    if isinstance(v, list):
        return "+".join(str(f.get("index")) for f in v)
    return v
