"""Following a job until it ends: a rich progress bar fed from the job's row (the source of truth).

The same loop serves ``--wait`` (a worker runs the job), ``--local`` (a thread in this process runs
it) and ``jobs watch``; it reads the database, never the broker.
"""

from __future__ import annotations

import json
import sys
import threading
import time

import click

from saejobs.db.states import FINAL_STATES, JobKind, JobState

POLL_FIRST_S, POLL_MAX_S = 0.01, 0.25  # read the row often at first (short jobs end soon), then back off
EXIT_CODES = {JobState.SUCCEEDED: 0, JobState.FAILED: 1, JobState.CANCELLED: 8}


def follow(job_id: str, *, quiet: bool = False, timeout: float | None = None, running=None):
    """Poll the job's row until it is final (or ``running()`` turns false: a local run that ended without
    a final row); show a progress bar on stderr unless ``quiet``. The poll backs off from 10 ms to 250 ms
    and starts over when the job changes state, so a quick job's end is seen within milliseconds."""
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

    from saejobs.cli.output import err_console
    from saejobs.db import jobs

    deadline = None if timeout is None else time.monotonic() + timeout
    delay, seen = POLL_FIRST_S, None
    bar = Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn(),
                   TextColumn("{task.fields[message]}"), console=err_console(), disable=quiet or not err_console().is_terminal,
                   transient=False)
    job = jobs.get(job_id)
    last_line = None
    with bar:
        task = bar.add_task(f"{job.kind} {job.id[:8]}", total=1.0, message=job.message or "")
        while True:
            job = jobs.get(job_id)
            bar.update(task, completed=job.progress or 0.0, message=(job.message or "")[:60])
            if not bar.live.is_started and not quiet:  # no terminal: one line per change, for logs
                line = f"{job.state} {100 * (job.progress or 0):5.1f}% {job.message or ''}"
                if line != last_line:
                    click.echo(line, err=True)
                    last_line = line
            if job.state in FINAL_STATES:
                return job
            if deadline is not None and time.monotonic() > deadline:
                return job
            if running is not None and not running():
                return jobs.get(job_id)
            delay = POLL_FIRST_S if job.state != seen else min(delay * 1.5, POLL_MAX_S)
            seen = job.state
            time.sleep(delay)


def run_local(job_id: str, *, quiet: bool = False):
    """Run the job in this process (no broker) while following it; Ctrl-C cancels it cleanly."""
    from saejobs.db import jobs
    from saejobs.tasks.runner import execute, local_executor

    errors: list[BaseException] = []

    def target() -> None:
        try:  # a sweep split into shards (a retried queued sweep): its shards in turn, then it has ended
            for jid in [c.id for c in jobs.shards(job_id) if c.state == JobState.QUEUED] or [job_id]:
                execute(jid, local_executor())
        except BaseException as e:  # surfaced below; the row already says what happened
            errors.append(e)

    t = threading.Thread(target=target, name="saejobs-local", daemon=True)
    t.start()
    try:
        job = follow(job_id, quiet=quiet, running=t.is_alive)
    except KeyboardInterrupt:
        jobs.cancel(job_id)
        t.join(timeout=30)
        raise
    t.join()
    if errors:
        raise errors[0]
    return job


def _verification(result: dict) -> None:
    m = result.get("functional")
    if m:
        expected = f" (expected {m['expected_l0']:g})" if m.get("expected_l0") else ""
        click.echo(f"L0 {m['l0']:.1f}{expected}  FVU {m['fvu']:.3f}  cosine {m['cosine']:.3f}  "
                   f"delta loss {m['delta_loss']:.3f} nats  loss recovered {m['loss_recovered']:.2f}  "
                   f"never fired {100 * m['dead_fraction']:.1f}%  ({m['tokens']} tokens at {m['hook']})")
    for reason in result.get("reasons") or []:
        click.echo(f"  {reason}")


def finish(job, as_json: bool) -> None:
    """Print the final job and exit with its state's code (non-zero unless it succeeded)."""
    from saejobs.db import jobs

    if as_json:
        click.echo(json.dumps(jobs.as_dict(job), indent=2, default=str))
    elif job.state == JobState.SUCCEEDED:
        click.echo(f"{job.id} succeeded" + (f": {job.message}" if job.message and job.message != JobState.SUCCEEDED
                                            else ""))
        if job.kind == JobKind.VERIFY:
            _verification(job.result or {})
    verdict = (job.result or {}).get("verdict") if job.state == JobState.SUCCEEDED else None
    if verdict == "FAIL":  # the job worked; the SAE did not pass: scripts must see that
        fails = [r for r in (job.result or {}).get("reasons") or [] if r.startswith("FAIL: ")] or ["FAIL: no reason recorded"]
        click.echo(f"saejobs: error: {job.sae_id} failed verification: {fails[0].removeprefix('FAIL: ')}", err=True)
        sys.exit(3)
    if job.state != JobState.SUCCEEDED:
        if job.state in FINAL_STATES:
            click.echo(f"saejobs: error: job {job.id} {job.state}: {job.error or job.message}", err=True)
        else:
            click.echo(f"saejobs: error: job {job.id} still {job.state} ({job.message})", err=True)
        code = (job.result or {}).get("exit_code") if job.state == JobState.FAILED else None
        sys.exit(code if isinstance(code, int) and code > 0 else EXIT_CODES.get(job.state, 9))
