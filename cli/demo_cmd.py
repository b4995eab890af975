"""``saejobs demo``: the whole path offline, in this process (no Redis), on the real Gemma 3 270M."""

from __future__ import annotations

import click

from saejobs.cli.output import console, emit, json_option
from saejobs.cli.submit_cmd import _floats


@click.command()
@click.option("--strength", "strengths", default="0,100,200,300", show_default=True, callback=_floats,
              help="Strengths to sweep: 0,100,200 or a range 0:300:100.")
@click.option("--n-tokens", default=24, show_default=True, type=click.IntRange(1, 256))
@json_option
def demo(strengths: list[float], n_tokens: int, as_json: bool) -> None:
    """Download (from a local mirror), verify and sweep a synthetic demo SAE on Gemma 3 270M.

    The demo SAE is synthetic and labelled so: features 0-3 point at the tokens " dog", " ocean",
    " music", " space". With network access the same commands run real Gemma Scope SAEs.
    """
    import torch

    from saejobs.cli.follow import run_local
    from saejobs.cli.jobs_cmd import show_sweep
    from saejobs.db import jobs, results
    from saejobs.db.states import JobKind, JobState
    from saejobs.engine import demo as demo_sae
    from saejobs.engine import paths
    from saejobs.engine.errors import SaejobsError
    from saejobs.engine.job_requests import DownloadRequest, VerifyRequest
    from saejobs.engine.registry import custom
    from saejobs.engine.request import Settings, SweepRequest
    from saejobs.tasks.submit import submit
    from saejobs.tasks.runner import local_executor

    quiet = as_json
    say = (lambda *a: None) if quiet else console().print
    say("[bold]saejobs demo[/]: Gemma 3 270M (PyPI package) + a [yellow]synthetic[/] Gemma-Scope-2-format SAE")
    say("loading Gemma 3 270M (the first run converts the GGUF once: about half a minute)...")
    lm = local_executor().cache.model("gemma-3-270m-gguf", torch.float32)
    mirror = paths.home() / "demo-mirror"
    demo_sae.build(lm, mirror)
    custom.write([demo_sae.ENTRY], "demo")
    sae = demo_sae.ENTRY.id

    steps = [DownloadRequest(sae, source=str(mirror)), VerifyRequest(sae, model="gemma-3-270m-gguf", max_tokens=1024)]
    summary = {}
    for req in steps:
        kind = JobKind.of(req)
        say(f"[bold]{kind}[/] {sae}")
        job = run_local(submit(req, sae_id=sae, local=True).id, quiet=quiet)
        if job.state != JobState.SUCCEEDED:
            raise SaejobsError(f"demo {kind} job {job.id} {job.state}: {job.error}")
        summary[kind] = jobs.as_dict(job)
        if kind == JobKind.VERIFY and not quiet:
            say(verdict_line(job.result or {}), highlight=False)
    sweep = SweepRequest(sae=sae, model="gemma-3-270m-gguf", features=(0, 1, 2), strengths=tuple(strengths),
                         prompts=("Once upon a time",), settings=Settings(n_tokens=n_tokens))
    say(f"[bold]sweep[/] features 0,1,2 ({', '.join(repr(w) for w in demo_sae.WORDS[:3])}) × strengths "
        f"{', '.join(f'{s:g}' for s in strengths)}")
    job = run_local(submit(sweep, sae_id=sae, local=True).id, quiet=quiet)
    if job.state != JobState.SUCCEEDED:
        raise SaejobsError(f"demo sweep job {job.id} {job.state}: {job.error}")
    summary[JobKind.SWEEP] = jobs.as_dict(job)
    rows = results.generation_rows(job.id)

    def render():
        show_sweep(f"sweep {job.id[:8]}: steered completions, strength × feature (greedy, {n_tokens} tokens)", rows,
                   word_labels())
        console().print(f"results: saejobs results {job.id[:8]} [--json|--csv]   jobs: saejobs jobs list")
    emit({**summary, "generations": rows}, as_json, render)


def word_labels() -> dict[str, str]:
    """The demo SAE's features by the words they steer toward: column heads a newcomer can read."""
    from saejobs.engine import demo as demo_sae

    return {str(i): w.strip() for i, w in enumerate(demo_sae.WORDS)}


def verdict_line(result: dict) -> str:
    """The verify job's verdict and what it measured, in one line (the job only says it succeeded)."""
    m = result.get("functional") or {}
    got = [f"L0 {m['l0']:.0f} (expected {m['expected_l0']:g})" if m.get("expected_l0") else None,
           f"FVU {m['fvu']:.2f}" if "fvu" in m else None,
           f"loss recovered {m['loss_recovered']:.2f}" if "loss_recovered" in m else None]
    measured = ", ".join(g for g in got if g)
    return f"verdict {result.get('verdict', '?')}" + (f": {measured}" if measured else "")
