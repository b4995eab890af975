"""``saejobs jobs`` (list, show, watch, cancel, retry) and ``saejobs results``."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import click

from saejobs.cli.complete import job_ids
from saejobs.cli.follow import finish, follow, run_local
from saejobs.cli.output import emit, json_option, table, write_csv, write_json_list
from saejobs.db.states import JobKind, JobState
from saejobs.engine.errors import UsageError

STATES = [s.value for s in JobState]
KINDS = [k.value for k in JobKind]
FUNCTIONAL = ["l0", "expected_l0", "fvu", "cosine", "delta_loss", "loss_recovered", "dead_fraction", "tokens"]


@click.group()
def jobs() -> None:
    """Jobs and their state, as the database records them."""


@jobs.command("list")
@click.option("--state", type=click.Choice(STATES))
@click.option("--kind", type=click.Choice(KINDS))
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1))
@click.option("--shards", is_flag=True, help="Include each sweep's shard jobs.")
@json_option
def list_(state, kind, limit, shards, as_json) -> None:
    """Most recent jobs first."""
    from saejobs.db import jobs as store

    found = store.listing(state=state, kind=kind, limit=limit, shards=shards)
    untaken = _untaken(found)
    data = [{**store.as_dict(j), **({"no_live_worker": j.id in untaken} if j.state == JobState.QUEUED else {})}
            for j in found]

    def render() -> None:
        from saejobs.cli.output import console, fitting

        rows = [[j.id[:8], j.kind, f"{j.state} (no worker)" if j.id in untaken else j.state,
                 f"{100 * (j.progress or 0):.0f}%", j.sae_id, j.worker or "", j.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                 (j.error or j.message or "")[:60]] for j in found]
        cols = fitting(LIST_COLUMNS, rows, console().width, LIST_OPTIONAL)
        table(f"{len(found)} jobs", cols, ([r[LIST_COLUMNS.index(c)] for c in cols] for r in rows), whole=("id", "sae"))
        if untaken:
            click.echo(f"no worker: no live worker takes the queue of {len(untaken)} queued job"
                       f"{'s' if len(untaken) > 1 else ''}; start one with `saejobs up`")
    emit(data, as_json, render)


LIST_COLUMNS = ["id", "kind", "state", "progress", "sae", "worker", "created", "message"]
LIST_OPTIONAL = ("worker", "created", "message", "progress")  # dropped in this order before an SAE id folds


def _untaken(found) -> set[str]:
    """Ids of the queued jobs whose queue no live worker consumes (they wait until one starts)."""
    from saejobs.db import workers

    queued = [j for j in found if j.state == JobState.QUEUED]
    if not queued:
        return set()
    live = workers.live_queues()
    return {j.id for j in queued if (q := waiting_queue(j)) is not None and q not in live}


def waiting_queue(job) -> str | None:
    """The queue a queued job waits in: its own, or (a sweep's row, which takes none) its shards'; None for
    one run in a process of its own (``--local``)."""
    from saejobs.db import jobs as store

    if job.queue is not None or job.kind != JobKind.SWEEP:
        return job.queue
    return next((c.queue for c in store.shards(job.id) if c.queue is not None), None)


@jobs.command()
@click.argument("job_id", shell_complete=job_ids)
@click.option("--events", is_flag=True, help="Include its latest state changes and progress reports (a page).")
@click.option("--before", type=click.IntRange(1), help="With --events: the page before this event id.")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 10_000), help="Events per page.")
@json_option
def show(job_id, events, before, limit, as_json) -> None:
    """Everything about one job (an id prefix of 4+ characters is enough)."""
    from saejobs.db import jobs as store

    job = store.get(job_id)
    page = store.events(job.id, limit=limit, before=before) if events or before else None
    data = store.as_dict(job, events=page)
    if job.state == JobState.QUEUED:
        data["no_live_worker"] = bool(_untaken([job]))
    if page is not None:
        data["events_total"] = store.event_count(job.id)
    shards = store.shards(job.id)
    if shards:
        data["shards"] = [{k: store.as_dict(c)[k] for k in ("id", "state", "progress", "attempts", "host", "worker",
                                                              "error", "params")} for c in shards]

    def render():
        table(f"job {job.id}", ["field", "value"], ((k, v) for k, v in data.items() if k not in ("events", "shards")))
        if shards:
            table(f"{len(shards)} shards", ["id", "configurations", "state", "progress", "attempts", "host", "last error"],
                  ([c["id"][:8], "{}-{}".format(*c["params"].get("shard", ["?", "?"])), c["state"],
                    f"{100 * (c['progress'] or 0):.0f}%", c["attempts"], c["host"] or "", (c["error"] or "")[:50]]
                   for c in data["shards"]))
        if page is not None:
            more = f"; older: --before {page[0].id}" if page and len(page) == limit else ""
            table(f"events ({len(page)} of {data['events_total']}{more})", ["id", "at", "state", "progress", "message"],
                  ([e["id"], e["at"], e["state"], f"{100 * e['progress']:.0f}%", e["message"]] for e in data["events"]))
    emit(data, as_json, render)


@jobs.command()
@click.argument("job_id", shell_complete=job_ids)
@click.option("--timeout", type=float, help="Stop following after this many seconds.")
@json_option
def watch(job_id, timeout, as_json) -> None:
    """Follow a job's progress until it ends; non-zero exit unless it succeeded."""
    from saejobs.db import jobs as store

    finish(follow(store.get(job_id).id, quiet=as_json, timeout=timeout), as_json)


@jobs.command()
@click.argument("job_id", shell_complete=job_ids)
@json_option
def cancel(job_id, as_json) -> None:
    """Cancel a queued or running job (a running one stops at its next progress report)."""
    from saejobs.db import jobs as store

    job = store.cancel(job_id)
    emit(store.as_dict(job), as_json, lambda: click.echo(f"{job.id} cancelled"))


@jobs.command()
@click.argument("job_id", shell_complete=job_ids)
@click.option("--wait", is_flag=True)
@click.option("--local", is_flag=True, help="Run the retry in this process.")
@json_option
def retry(job_id, wait, local, as_json) -> None:
    """Queue a failed or cancelled job again, with the same parameters and id (a sweep: the shards that
    did not succeed), with a fresh budget of attempts."""
    from saejobs.db import jobs as store
    from saejobs.tasks.submit import dispatch

    job = store.get(job_id)
    again = store.reset_for_retry(job.id)  # the job's own id, or a sweep's shards that did not succeed
    if local:
        finish(run_local(job.id, quiet=as_json), as_json)
        return
    dispatch(job.id, again)
    if (sent := store.get(job.id)).state == JobState.QUEUED:
        from saejobs.cli.submit_cmd import say_if_untaken

        say_if_untaken(waiting_queue(sent))
    if wait:
        finish(follow(job.id, quiet=as_json), as_json)
    else:
        now = store.get(job.id)  # queued; or succeeded: a sweep whose shards had all succeeded
        emit(store.as_dict(now), as_json, lambda: click.echo(f"{job.id} {now.state}"))


@click.command()
@click.argument("job_id", required=False, shell_complete=job_ids)
@click.option("--kind", type=click.Choice(KINDS), help="Only this kind (when listing).")
@json_option
@click.option("--csv", "as_csv", is_flag=True, help="Print CSV.")
@click.option("--format", "fmt", type=click.Choice(["parquet"]),
              help="Write a sweep's (or search's) generations with their scores as this format to --out.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="File for --format.")
def results(job_id, kind, as_json, as_csv, fmt, out) -> None:
    """Results of finished jobs, or one job's results in full (a sweep as a strength × feature grid)."""
    from saejobs.db import jobs as store
    from saejobs.db import results as res

    if as_json and as_csv:
        raise UsageError("--json and --csv are exclusive")
    if fmt is not None or out is not None:
        if fmt is None or out is None or job_id is None:
            raise UsageError("--format parquet takes a JOB and --out FILE")
        if not out.resolve().parent.is_dir():
            raise UsageError(f"{out.resolve().parent}: no such directory")
        from saejobs.frame import write_parquet

        path = write_parquet(store.get(job_id).id, out)
        emit({"file": str(path), "format": fmt}, as_json, lambda: click.echo(path))
        return
    if job_id is None:
        found = [j for j in store.listing(state=JobState.SUCCEEDED, kind=kind, limit=200)]
        rows = [{"job": j.id if as_json or as_csv else j.id[:8], "kind": j.kind, "sae": j.sae_id,
                 "finished_at": j.finished_at if as_json or as_csv else f"{j.finished_at:%Y-%m-%d %H:%M:%S}",
                 "summary": res.summary(j)} for j in found]
        cols = ["job", "kind", "sae", "finished_at", "summary"]
        if not (as_json or as_csv):  # a narrow terminal: fewer columns, ids whole
            from saejobs.cli.output import console, fitting

            cols = fitting(cols, [[r[c] for c in cols] for r in rows], console().width, ("finished_at", "kind"))
        _out(rows, cols, as_json, as_csv, f"{len(rows)} results", whole=("job", "sae"))
        return
    job = store.get(job_id)
    if job.kind == JobKind.SWEEP:
        cols = ["type", "features", "strengths", "prompt", "seed", "output", "n_tokens"]
        if as_json:  # streamed a page at a time; the scores as stored (one object per row)
            write_json_list(res.iter_generation_rows(job.id))
        elif as_csv:  # every score its own column; a chat sweep's rows also carry their conversation
            from saejobs.engine.score import FLAT, MAPPINGS

            chats = ["conversation"] if res.has_chats(job.id) else []
            scores = [*FLAT, *(m.value for m in MAPPINGS)]
            rows = ({**r, **{k: (r["scores"] or {}).get(k) for k in scores}} for r in res.iter_generation_rows(job.id))
            _out(rows, cols + chats + ["token_ids", "config_key", "labels", *scores], False, True, None)
        else:  # a feature's column is headed by its cached explanation too, when there is one
            rows = res.generation_rows(job.id)
            show_sweep(f"sweep {job.id[:8]} ({job.sae_id})", rows, res.sweep_grid(rows)["labels"])
    elif job.kind == JobKind.SEARCH:  # the chosen strength per feature × prompt; the curves are in `jobs show --json`
        from saejobs.db import explanations

        chosen = (job.result or {}).get("chosen", [])
        known = explanations.labels(job.sae_id, {c["feature"] for c in chosen if isinstance(c.get("feature"), int)})
        _out([{**c, "label": known.get(c.get("feature"))} for c in chosen],
             ["feature", "prompt", "strength", "concept", "nll", "default_nll", "nll_bound", "output", "label",
              "combined"],
             as_json, as_csv, f"search {job.id[:8]}")
    elif job.kind == JobKind.VERIFY:
        rows = [res.verification_dict(v) for v in res.verifications(job_id=job.id)]
        for r in rows:
            r.update({k: r["metrics"].get("functional", {}).get(k) for k in FUNCTIONAL})
        cols = ["sae_id", "verdict", *FUNCTIONAL, "reasons"]
        if as_json or as_csv:
            _out(rows, cols, as_json, as_csv, None)
        else:  # one verification: a field/value table reads better than 12 narrow columns
            for r in rows:
                table(f"verification {job.id[:8]}", ["field", "value"], ([c, _short(_cell(r.get(c)))] for c in cols))
    else:
        _out([{"job": job.id, "state": job.state, **(job.result or {})}], ["job", "state", "sae", "path", "transferred_bytes"],
             as_json, as_csv, f"{job.kind} {job.id[:8]}")


def show_sweep(title: str, rows: list[dict], labels: dict[str, str]) -> None:
    """A sweep for people: per prompt, the prompt and its DEFAULT completion once, then strengths × features of
    steered completions (each without the prompt), columns headed by the feature's label where known."""
    from saejobs.cli.output import console, plain
    from saejobs.db import results as res

    console().print(plain(title), style="bold")
    for g in res.prompt_grids(rows):
        console().print(plain(f"prompt {g['prompt']!r}, seed {g['seed']}"))
        if g["default"] is not None:
            console().print(plain(f"  DEFAULT (unsteered): {g['default']}"))
        if g["rows"]:
            heads = [f"{c}: {labels[c]}" if c in labels else c for c in g["columns"]]
            table(None, heads, ([_short(r[0]), *r[1:]] for r in g["rows"]))


def _out(rows: Iterable[dict], columns: list[str], as_json: bool, as_csv: bool, title: str | None,
         whole: Iterable[str] = ()) -> None:
    if as_json:
        write_json_list(rows)
    elif as_csv:
        write_csv(columns, ([_cell(r.get(c)) for c in columns] for r in rows))
    else:
        table(title, columns, ([_short(_cell(r.get(c))) for c in columns] for r in rows), whole=whole)


def _short(v):
    return f"{v:.4g}" if isinstance(v, float) else v


def _cell(v):
    import json

    return json.dumps(v) if isinstance(v, (list, dict)) else v
