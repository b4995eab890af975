"""``saejobs score|search|report``: scores of steered generations, the strength that works, and a page.

``score`` and ``search`` are jobs (``tasks/score.py``, ``tasks/search.py``) with the usual ``--wait``,
``--local``, ``--gpu``; ``report`` reads the database and writes one HTML file.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import click

from saejobs.cli.complete import job_ids, sae_ids
from saejobs.cli.output import emit, json_option
from saejobs.cli.submit_cmd import GenerationArgs, _features, generation_options, named_steers, submission
from saejobs.db.states import JobKind
from saejobs.engine.errors import UsageError
from saejobs.engine.job_requests import MAX_NLL_INCREASE, MAX_REFINE_ROUNDS, MAX_SEARCH_POINTS, ScoreRequest, SearchRequest
from saejobs.engine.sampling import MAX_TOKENS

DEFAULT_RANGE = f"{SearchRequest.lo:g}:{SearchRequest.hi:g}"


@click.command()
@click.argument("job_id", shell_complete=job_ids)
@submission
def score(job_id: str):
    """Score a stored sweep's generations that have no scores yet (sweeps score as they run)."""
    from saejobs.db import jobs, results

    job = jobs.get(job_id)
    if job.kind != JobKind.SWEEP or results.sweep_for_job(job.id) is None:
        raise UsageError(f"job {job.id[:8]} is a {job.kind} job with no stored sweep; score takes a sweep job")
    return ScoreRequest(job.id), job.sae_id


def _range(ctx, param, value: str) -> tuple[float, float]:
    if value.count(":") == 2:  # sweep's LO:HI:STEP: a search chooses its own strengths
        raise click.BadParameter(f"'{value}' is a list of strengths (as sweep's --strength takes); search takes the "
                                 "interval LO:HI and picks its strengths in it (--points, --rounds)")
    lo, sep, hi = value.partition(":")
    try:
        a, b = float(lo), float(hi)
    except ValueError:
        raise click.BadParameter(f"'{value}' is not LO:HI (two numbers)") from None
    if not sep or not (math.isfinite(a) and math.isfinite(b)) or a >= b:
        raise click.BadParameter(f"'{value}' is not LO:HI with finite LO < HI")
    return a, b


def _finite(ctx, param, value: float | None) -> float | None:
    if value is not None and not math.isfinite(value):  # FloatRange lets NaN through
        raise click.BadParameter(f"{value} is not a finite number")
    return value


@click.command()
@click.option("--sae", shell_complete=sae_ids,
              help="SAE id (Neuronpedia id or repo/folder path); default: the first SAE a steer names.")
@click.option("--feature", "features", multiple=True, callback=_features,
              help="Feature index (repeat or comma-separate), a Neuronpedia feature URL, or 'label:TEXT'; or "
                   "SAE_ID:INDEX@STRENGTH, the terms of one steer across SAEs and layers, searched over its multiplier.")
@click.option("--steers", "steers_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Named steers (JSON or YAML, as sweep takes them), each searched over its strength multiplier.")
@generation_options
@click.option("--range", "range_", default=DEFAULT_RANGE, show_default=True, callback=_range,
              help="Strengths searched, LO:HI (for named steers: their multiplier).")
@click.option("--max-nll-increase", default=SearchRequest.max_nll_increase, show_default=True,
              type=click.FloatRange(0, MAX_NLL_INCREASE), callback=_finite,
              help="Fluency bound: NLL (nats/token) at most the DEFAULT's plus this.")
@click.option("--points", default=SearchRequest.points, show_default=True, type=click.IntRange(2, MAX_SEARCH_POINTS),
              help="Coarse grid points.")
@click.option("--rounds", default=SearchRequest.refine_rounds, show_default=True,
              type=click.IntRange(0, MAX_REFINE_ROUNDS),
              help="Refinement rounds after the coarse grid (each halves the step around the best).")
@click.option("--max-repeat-increase", default=SearchRequest.max_repeat_increase, show_default=True,
              type=click.FloatRange(0, MAX_TOKENS), help="Degeneration bound: the longest repeated n-gram (tokens) at "
                                                         "most the DEFAULT's plus this.")
@click.option("--max-distinct2-drop", default=SearchRequest.max_distinct2_drop, show_default=True,
              type=click.FloatRange(0, 1), help="Degeneration bound: distinct-2 at most this below the DEFAULT's.")
@click.option("--holdout-prompts", "holdout_prompts", multiple=True,
              help="Held-out prompt (repeatable): choose each feature's strength on --prompt, report it on these.")
@submission
def search(sae, features, steers_file, range_, max_nll_increase, max_repeat_increase, max_distinct2_drop,
           holdout_prompts, points, rounds, gen: GenerationArgs):
    """Find, per feature × prompt, the strength with the highest concept score whose text stays fluent
    (NLL of its novel tokens within --max-nll-increase of the DEFAULT's) and not degenerate (longest repeat,
    distinct-2): a coarse grid, then refinement, each round one sweep, generated as `sweep` with the same
    options would (prompts or --chat, sampling, --method, ...). With --holdout-prompts: per feature, chosen
    on the prompts by the combined concept/fluency score and reported on the held-out prompts. Named steers
    (SAE_ID:INDEX@STRENGTH, --steers) are searched over their strength multiplier instead."""
    from saejobs.engine import registry

    sae, indices, steers, steer_vectors = named_steers(sae, features, steers_file)
    entry = registry.get(sae)
    prompts, chats, template = gen.texts()
    req = SearchRequest(sae=entry.id, features=tuple(indices), prompts=tuple(prompts), seeds=tuple(gen.seeds),
                        lo=range_[0], hi=range_[1], max_nll_increase=max_nll_increase, points=points,
                        max_repeat_increase=max_repeat_increase, max_distinct2_drop=max_distinct2_drop,
                        holdout_prompts=tuple(holdout_prompts), refine_rounds=rounds, settings=gen.settings(),
                        model=gen.model_source, dtype=gen.dtype, chats=tuple(chats), chat_template=template,
                        batch_size=gen.batch_size, steers=tuple(steers), steer_vectors=tuple(steer_vectors))
    gen.check_chat_template(chats, template, entry.model_hf)
    req.check_features(entry.d_sae, entry.id)
    req.round((req.lo,)).check_steers(registry.get)
    return req, entry.id


@click.command()
@click.argument("job_id", shell_complete=job_ids)
@click.option("--html", "html_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the scores report (one self-contained file) here.")
@click.option("--site", "site_path", type=click.Path(file_okay=False, path_type=Path),
              help="Write the sweep's `serve` pages into this new folder (static files, relative links).")
@click.option("--max-nll-increase", type=click.FloatRange(0, MAX_NLL_INCREASE), callback=_finite,
              help="Fluency bound for the marked strength (default: the search's, else 1.0).")
@json_option
def report(job_id: str, html_path: Path | None, site_path: Path | None, max_nll_increase: float | None,
           as_json: bool) -> None:
    """--html: one self-contained HTML page: per feature, concept and fluency against strength, the DEFAULT
    baseline, the chosen strength, and the generations behind each point. --site: the pages `saejobs serve`
    shows for a sweep (grid pages, every generation shown), as a folder to copy or mail."""
    if (html_path is None) == (site_path is None):
        raise UsageError("report takes --html FILE or --site DIR (one of them)")
    if site_path is not None:
        _site(job_id, site_path, as_json)
        return
    from saejobs.engine import score_report, search as rule

    job, rows, chosen, bound = _rows(job_id)
    if max_nll_increase is not None:
        bound, chosen = max_nll_increase, None
    path = html_path.resolve()
    if not path.parent.is_dir():
        raise UsageError(f"{path.parent}: no such directory")
    fd, tmp = tempfile.mkstemp(prefix=".saejobs-", suffix=".html.tmp", dir=path.parent)
    try:  # written beside the file and renamed: never half a page; streamed: one page of rows in memory
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            seen = score_report.write(rows, f, f"saejobs {job.kind} {job.id[:8]} — {job.sae_id}",
                                      bound or rule.DEFAULT_MAX_NLL_INCREASE, chosen)
        if not seen["generations"]:
            raise UsageError(f"job {job.id[:8]} has no generations to report")
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    emit({"job": job.id, "html": str(html_path), "features": seen["features"], "generations": seen["generations"],
          "unscored": seen["unscored"]}, as_json,
         lambda: click.echo(f"{html_path} ({len(seen['features'])} features, {seen['generations']} generations)"))


def _site(job_id: str, path: Path, as_json: bool) -> None:
    from rich.progress import Progress

    from saejobs.cli.output import err_console
    from saejobs.cli.web import site

    with Progress(console=err_console(), transient=True, disable=as_json) as bar:
        task = bar.add_task("writing pages", total=None)
        done = site.export(job_id, path, lambda n, total: bar.update(task, completed=n, total=total))
    emit(done, as_json, lambda: click.echo(f"{done['site']} ({done['grid_pages']} grid pages, "
                                           f"{done['generations']} generations; open index.html)"))


def _rows(job_id: str):
    """(job, its generation rows as a stream, chosen strengths or None, fluency bound or None) of a sweep or
    a search (every round's rows)."""
    from itertools import chain

    from saejobs.db import jobs, results

    job = jobs.get(job_id)
    if job.kind == JobKind.SWEEP:
        return job, results.iter_generation_rows(job.id), None, None
    if job.kind == JobKind.SEARCH:
        res = job.result or {}
        rows = chain.from_iterable(results.iter_generation_rows(j) for j in res.get("rounds", []))
        picks: dict[int, set] = {}
        for c in res.get("chosen", []):
            picks.setdefault(c["feature"], set()).add(c["strength"])
        chosen = {f: s.pop() for f, s in picks.items() if len(s) == 1 and None not in s}  # one per feature
        return job, rows, chosen, res.get("max_nll_increase")
    raise UsageError(f"job {job.id[:8]} is a {job.kind} job; report takes a sweep or a search")


COMMANDS = [score, search, report]
