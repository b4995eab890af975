"""Shell completion: ``eval "$(saejobs completion bash)"`` completes commands, options, SAE ids and job ids.

Click's own completion protocol (``_SAEJOBS_COMPLETE``); the callbacks below read the registry and the
newest jobs only when the shell asks, so commands pay nothing for them.
"""

from __future__ import annotations

import click
from click.shell_completion import CompletionItem, get_completion_class

from saejobs.cli.output import json_option

MAX_ITEMS = 200


def sae_ids(ctx, param, incomplete: str) -> list[CompletionItem]:
    from saejobs.engine import registry

    return [CompletionItem(e.id) for e in registry.entries() if e.id.startswith(incomplete)][:MAX_ITEMS]


def job_ids(ctx, param, incomplete: str) -> list[CompletionItem]:
    from saejobs.db import jobs

    try:
        found = jobs.listing(limit=MAX_ITEMS)
    except Exception:  # no database yet, or it is down: nothing to offer, never an error in the shell
        return []
    return [CompletionItem(j.id, help=f"{j.kind} {j.state}") for j in found if j.id.startswith(incomplete)]


@click.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
@json_option
@click.pass_context
def completion(ctx: click.Context, shell: str, as_json: bool) -> None:
    """Print the completion script for SHELL: eval "$(saejobs completion bash)" in ~/.bashrc."""
    import json

    root = ctx.find_root().command  # the group this command was added to (no import of cli.main back)
    script = get_completion_class(shell)(root, {}, "saejobs", "_SAEJOBS_COMPLETE").source()
    click.echo(json.dumps({"shell": shell, "script": script}) if as_json else script)
