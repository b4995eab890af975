"""``saejobs worker`` (start one pinned worker per GPU, or a CPU worker) and ``saejobs workers``."""

from __future__ import annotations

import click

from saejobs.cli.output import emit, json_option, table
from saejobs.engine.errors import UsageError


def _gpus(ctx, param, value):
    if value is None:
        return None
    try:
        gpus = [int(g) for g in value.split(",") if g.strip()]
    except ValueError:
        raise click.BadParameter(f"'{value}' is not a GPU index or a comma-separated list of them") from None
    if not gpus or any(g < 0 for g in gpus) or len(set(gpus)) != len(gpus):
        raise click.BadParameter(f"'{value}': give distinct non-negative GPU indices, e.g. 0 or 0,1")
    return gpus


@click.command()
@click.option("--gpu", "gpus", callback=_gpus, help="GPU index, or several (0,1): one pinned process each.")
@click.option("--cpu", is_flag=True, help="A CPU-only worker (hosts without a GPU); it also takes downloads.")
@click.option("--downloads", is_flag=True, help="A worker for download jobs only (GPU workers do not take them).")
@click.option("--loglevel", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
@click.option("--remote-control", is_flag=True,
              help="Obey Celery remote control (Flower's worker pages, celery inspect); off by default: anyone "
                   "who can write to the broker could shut the worker down (also SAEJOBS_REMOTE_CONTROL=1).")
@click.option("--no-cuda-graphs", is_flag=True,
              help="Launch every decode step's kernels from Python instead of replaying a CUDA graph (graphs are on "
                   "where a one-time check finds them equal to the eager step; also SAEJOBS_CUDA_GRAPHS=0).")
def worker(gpus, cpu, downloads, loglevel, remote_control, no_cuda_graphs) -> None:
    """Run a long-lived worker: one job at a time per GPU, models and SAEs kept loaded between jobs.

    SIGTERM hands the running job back to the queue at its next progress report; a worker killed
    outright has its job handed on by the other workers once its heartbeat goes stale.
    """
    import logging
    import os
    import sys

    from saejobs.worker.main import run, run_many

    if bool(gpus) + cpu + downloads != 1:
        raise UsageError("say what to run: --gpu N (or --gpu 0,1), --cpu or --downloads")
    if remote_control:
        os.environ["SAEJOBS_REMOTE_CONTROL"] = "1"  # read when the worker (each child of --gpu 0,1) starts
    if no_cuda_graphs:
        os.environ["SAEJOBS_CUDA_GRAPHS"] = "0"  # read by engine.decode in each child
    logging.basicConfig(level=loglevel.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if gpus and len(gpus) > 1:
        sys.exit(run_many(gpus, loglevel))
    run(gpus[0] if gpus else None, loglevel, downloads_only=downloads)


@click.command()
@click.option("--gpu", "gpus", callback=_gpus, help="Workers on these GPUs only (default: every visible GPU).")
@click.option("--cpu", is_flag=True, help="One CPU worker, even where GPUs are visible.")
@click.option("--loglevel", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
@json_option
def up(gpus, cpu, loglevel, as_json) -> None:
    """Run a workstation in the foreground: a broker if none answers at SAEJOBS_BROKER (an embedded
    redis-server), and one pinned worker per visible GPU (one CPU worker without a GPU), with their
    logs. Ctrl-C stops them all; running jobs are handed back to the queue."""
    import json
    import sys

    from saejobs.worker import up as stack_up

    if gpus and cpu:
        raise UsageError("--gpu and --cpu are exclusive")
    stack = stack_up.start(gpus, cpu, loglevel)
    info = stack.describe()
    if as_json:
        click.echo(json.dumps(info))
    else:
        click.echo(f"saejobs up: broker {info['broker']}"
                   + (f" (embedded redis-server, pid {info['embedded_broker_pid']})" if info["embedded_broker_pid"] else "")
                   + "; workers " + ", ".join(f"{n} (pid {p})" for n, p in info["workers"].items())
                   + "; Ctrl-C stops them all")
    sys.exit(stack_up.run(stack, say=(lambda m: None) if as_json else click.echo))


@click.command()
@click.option("--all", "show_all", is_flag=True, help="Include workers that stopped or went silent.")
@json_option
def workers(show_all, as_json) -> None:
    """Live workers: host, GPU, what they have loaded and what they are running."""
    from saejobs.db import workers as store
    from saejobs.tasks.runner import STALE_AFTER_S

    found = store.listing(live_within_s=None if show_all else STALE_AFTER_S)
    data = [store.as_dict(w) for w in found]

    def render() -> None:
        table(f"{len(data)} workers", ["name", "host", "gpu", "device", "state", "running", "cached", "heartbeat"],
              ([d["name"], d["host"], d["gpu"] or "cpu", d["device"], d["state"], (d["current_job"] or "")[:8],
                ", ".join(f"{c['kind']}:{c['name']}" for c in d["cached"]) or "-", d["heartbeat_at"]] for d in data))
        if not any(d["state"] in ("idle", "busy") for d in data):  # queued jobs wait: say what runs them
            click.echo("no live worker: queued jobs wait until one starts (`saejobs up`, or `saejobs worker "
                       "--cpu`); --local runs a job in the submitting process instead")
    emit(data, as_json, render)
