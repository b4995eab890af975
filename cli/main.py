"""The ``saejobs`` command. Every ``SaejobsError`` becomes one line on stderr and its exit code.

Heavy modules (torch, transformers, Celery) are imported inside commands, so listing SAEs is quick
and ``saejobs worker --gpu N`` can pin its GPU before torch loads.
"""

from __future__ import annotations

import sys

import click

from saejobs.cli.output import fail
from saejobs.engine.errors import SaejobsError


class Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except SaejobsError as e:
            fail(str(e).splitlines()[0] if str(e) else type(e).__name__, e.exit_code)
        except KeyboardInterrupt:
            fail("interrupted", 130)


@click.group(cls=Group)
@click.version_option(package_name="saejobs")
def cli() -> None:
    """Download, verify and steer with Gemma Scope SAEs as Neuronpedia does; results in one database."""


def _register() -> None:
    from saejobs.cli import (complete, db_cmd, demo_cmd, features_cmd, jobs_cmd, judge_cmd, neuronpedia_cmd, saes_cmd,
                             score_cmd, serve_cmd, submit_cmd, worker_cmd)

    cli.add_command(saes_cmd.saes)
    cli.add_command(db_cmd.db)
    cli.add_command(demo_cmd.demo)
    cli.add_command(jobs_cmd.jobs)
    cli.add_command(jobs_cmd.results)
    cli.add_command(worker_cmd.worker)
    cli.add_command(worker_cmd.workers)
    cli.add_command(worker_cmd.up)
    cli.add_command(complete.completion)
    cli.add_command(neuronpedia_cmd.neuronpedia)
    cli.add_command(neuronpedia_cmd.compare)
    cli.add_command(features_cmd.features)
    cli.add_command(serve_cmd.serve)
    cli.add_command(judge_cmd.judge)
    for cmd in submit_cmd.COMMANDS + score_cmd.COMMANDS:
        cli.add_command(cmd)


_register()


def main() -> None:
    """Click's own usage errors (bad option values) become one line too, naming the option."""
    try:
        code = cli.main(prog_name="saejobs", standalone_mode=False)
    except click.UsageError as e:
        where = f"{e.ctx.command_path.split(' ', 1)[1]}: " if e.ctx and " " in e.ctx.command_path else ""
        fail(where + e.format_message().replace("\n", " "), e.exit_code)
    except click.ClickException as e:
        fail(e.format_message().replace("\n", " "), e.exit_code)
    except click.Abort:
        fail("aborted", 1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    sys.exit(main())
