"""``saejobs judge``: optional AxBench-style ratings of a sweep by a chat model the user names (``tasks.judge``)."""

from __future__ import annotations

import click

from saejobs.cli.complete import job_ids
from saejobs.cli.output import emit, json_option
from saejobs.engine.errors import UsageError


def _concepts(ctx, param, values: tuple[str, ...]) -> dict[int, str]:
    out = {}
    for v in values:
        index, sep, text = v.partition("=")
        if not sep or not index.strip().isdigit() or not text.strip():
            raise click.BadParameter(f"'{v}': give FEATURE=DESCRIPTION, e.g. 7650=dogs and other pets")
        out[int(index)] = text.strip()
    return out


@click.command()
@click.argument("job_id", shell_complete=job_ids)
@click.option("--endpoint", required=True, envvar="SAEJOBS_JUDGE_URL",
              help="An OpenAI-compatible API's base URL, e.g. http://localhost:8000/v1 (vLLM).")
@click.option("--model", "judge_model", required=True, envvar="SAEJOBS_JUDGE_MODEL", help="The judge model's name there.")
@click.option("--concept", "concepts", multiple=True, callback=_concepts, metavar="FEATURE=DESCRIPTION",
              help="What a feature stands for (default: its cached Neuronpedia explanation). Repeatable.")
@click.option("--api-key-env", default="OPENAI_API_KEY", show_default=True,
              help="Environment variable holding the endpoint's key (sent only over https or to this machine).")
@click.option("--concurrency", default=4, show_default=True, type=click.IntRange(1, 64), help="Requests in flight.")
@click.option("--timeout", default=120.0, show_default=True, type=click.FloatRange(1, 3600), help="Seconds per request.")
@json_option
def judge(job_id: str, endpoint: str, judge_model: str, concepts: dict[int, str], api_key_env: str, concurrency: int,
          timeout: float, as_json: bool) -> None:
    """Rate a sweep's generations 0–2 on concept, instruction and fluency with a chat model (AxBench-style;
    the harmonic mean combines them). Stored with the prompts' version; a re-run rates only what is left."""
    from rich.progress import Progress

    from saejobs.cli.output import err_console
    from saejobs.tasks import judge as task

    if not judge_model.strip():
        raise UsageError("--model is empty")
    with Progress(console=err_console(), transient=True, disable=as_json) as bar:
        t = bar.add_task("judging", total=None)
        out = task.run(job_id, endpoint, judge_model, concepts=concepts, key_env=api_key_env, concurrency=concurrency,
                       timeout=timeout, progress=lambda n, total: bar.update(t, completed=n, total=total))
    emit(out, as_json, lambda: click.echo(
        f"{out['rated']} generations rated by {out['judge']} ({out['prompts']}); {out['already_rated']} were already"
        + (f"; {out['unparsed_replies']} replies had no rating" if out["unparsed_replies"] else "")))
