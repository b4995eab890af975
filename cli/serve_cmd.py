"""``saejobs serve``: the web app over the results database (``saejobs.cli.web``), served by uvicorn."""

from __future__ import annotations

import json
import secrets
import socket

import click

from saejobs.cli.output import json_option
from saejobs.engine.errors import UsageError


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to bind. Beyond loopback every request needs the access token.")
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535), help="0: any free port.")
@click.option("--token", envvar="SAEJOBS_SERVE_TOKEN",
              help="Access token to require (default: none on loopback, a random one elsewhere).")
@json_option
def serve(host: str, port: int, token: str | None, as_json: bool) -> None:
    """Browse jobs (live progress), sweeps as strength × feature grids with per-token concept activation,
    generations, sweep-vs-sweep and Neuronpedia comparisons. Read-only but for cancel and retry."""
    import os

    os.environ["HF_HUB_OFFLINE"] = "1"  # a page never waits on the network: tokenizers come from this host's cache
    import uvicorn

    from saejobs.cli.web.app import create_app
    from saejobs.tasks.neuronpedia import loopback
    from saejobs.cli.web.highlight import preload
    from saejobs.db.session import check_schema

    check_schema()  # an unmigrated or unreachable database: one line now, not an error page later
    if token is None and not loopback(host):
        token = secrets.token_urlsafe(18)
    try:
        sock = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    except OSError as e:
        raise UsageError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    preload()  # the latest sweeps' tokenizers: the first page that shows tokens does not wait on one
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{bound}/" + (f"?token={token}" if token else "")
    if as_json:
        click.echo(json.dumps({"url": url, "host": host, "port": bound, "token": token}))
    else:
        click.echo(f"saejobs serve: {url} (Ctrl-C stops it)")
    server = uvicorn.Server(uvicorn.Config(create_app(token), log_level="warning", access_log=False))
    server.run(sockets=[sock])
