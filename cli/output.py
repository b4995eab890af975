"""Output for people (rich tables, progress bars) and for scripts (``--json``), and one-line errors."""

from __future__ import annotations

import csv
import io
import json
import sys
from typing import Any, Callable, Iterable

import click
from rich.console import Console
from rich.table import Table

console = Console()
err_console = Console(stderr=True)

json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")


def emit(data: Any, as_json: bool, render: Callable[[], None]) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        render()


def table(title: str | None, columns: list[str], rows: Iterable[Iterable[Any]]) -> None:
    t = Table(title=title, show_lines=False)
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*["" if v is None else str(v) for v in r])
    console.print(t)


def write_csv(columns: list[str], rows: Iterable[Iterable[Any]]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(columns)
    w.writerows(rows)
    sys.stdout.write(buf.getvalue())


def fail(message: str, code: int = 1) -> None:
    """One line on stderr and a non-zero status: the shape of every user-facing error."""
    click.echo(f"saejobs: error: {message}", err=True)
    sys.exit(code)
