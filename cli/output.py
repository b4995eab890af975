"""Output for people (rich tables, progress bars) and for scripts (``--json``), and one-line errors.

rich loads on first use (``console()``), so a command that prints JSON or one line never pays for it.
Table cells fold rather than clip: an id, a path or a hash is printed whole, if on several lines.
"""

from __future__ import annotations

import csv
import functools
import json
import re
import sys
from typing import Any, Callable, Iterable

import click

json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")


def emit(data: Any, as_json: bool, render: Callable[[], None]) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        render()


CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # C0 (but tab, newline) and C1, ESC included


@functools.cache
def console():
    from rich.console import Console

    return Console()


@functools.cache
def err_console():
    from rich.console import Console

    return Console(stderr=True)


def plain(value: Any):
    """A cell as literal text: model output and file contents are untrusted, so ``[/bold]`` stays those
    characters (no rich markup) and control characters (terminal escapes) are shown as ``\\xNN``."""
    from rich.text import Text

    s = "" if value is None else str(value)
    return Text(CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", s))


def table(title: str | None, columns: list[str], rows: Iterable[Iterable[Any]], whole: Iterable[str] = ()) -> None:
    """``whole``: columns of ids, which the other columns fold around while the terminal is wide enough."""
    from rich.table import Table

    whole = set(whole)
    t = Table(title=None if title is None else plain(title), show_lines=False)
    for c in columns:
        t.add_column(plain(c), overflow="fold", no_wrap=c in whole)
    for r in rows:
        t.add_row(*[plain(v) for v in r])
    console().print(t)


def fitting(columns: list[str], rows: list[list], width: int, optional: Iterable[str]) -> list[str]:
    """The columns that fit ``width`` with every cell whole (a rich table spends 3 characters per column
    and 1 more on its frame), dropping ``optional`` ones in order: fewer columns rather than folded ids,
    which are what people copy."""
    def need(cols: list[str]) -> int:
        return 1 + sum(3 + max([len(c)] + [len(str(r[columns.index(c)])) for r in rows]) for c in cols)

    cols = list(columns)
    for drop in optional:
        if need(cols) <= width:
            break
        cols.remove(drop)
    return cols


def csv_cell(value: Any) -> Any:
    """A cell a spreadsheet will not run: text starting with ``= + - @`` (or tab/CR) gets a leading ``'``
    (OWASP's CSV-injection rule); numbers are left as numbers."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def write_csv(columns: list[str], rows: Iterable[Iterable[Any]]) -> None:
    """Row by row as ``rows`` yields them (an export streams; nothing is gathered first)."""
    w = csv.writer(sys.stdout)
    w.writerow([csv_cell(c) for c in columns])
    for r in rows:
        w.writerow([csv_cell(v) for v in r])


def write_json_list(items: Iterable[Any]) -> None:
    """What ``json.dumps(list(items), indent=2, default=str)`` prints, one item at a time."""
    first = True
    for item in items:
        sys.stdout.write(("[\n  " if first else ",\n  ")
                         + json.dumps(item, indent=2, default=str).replace("\n", "\n  "))
        first = False
    sys.stdout.write("[]\n" if first else "\n]\n")


def fail(message: str, code: int = 1) -> None:
    """One line on stderr and a non-zero status: the shape of every user-facing error."""
    click.echo(f"saejobs: error: {message}", err=True)
    sys.exit(code)
