"""Model output is untrusted: the terminal shows it literally and a spreadsheet does not run it."""

from __future__ import annotations

import csv
import io

from click.testing import CliRunner

from saejobs.cli.main import cli
from tests.dbfixtures import home  # noqa: F401

NASTY = "[/bold] closes nothing [red]x[/red] \x1b[2J\x1b]0;pwned\x07 end"


def _sweep_with(outputs: list[str]) -> str:
    from saejobs.db import jobs, results

    job = jobs.create("sweep", {"sae": "x"}, sae_id="test/sae")
    sweep = results.ensure_sweep(job.id, "test/sae", "m", {}, {})
    results.add_generations(sweep, [
        {"config_key": f"k{i}", "type": "STEERED" if i else "DEFAULT", "features": [{"index": 1, "strength": 5.0}] if i
         else [], "prompt": "=HYPERLINK(\"http://x\")", "prompt_token_ids": [2], "seed": 1, "sampling": {},
         "output": out, "token_ids": [3], "logprobs": None} for i, out in enumerate(outputs)])
    jobs.finish(job.id, "succeeded", result={})
    return job.id


def test_results_print_markup_and_escapes_literally(home, monkeypatch):  # noqa: F811
    from saejobs.cli import output

    monkeypatch.setattr(output.console(), "width", 400)  # one line per cell, so the text can be matched whole
    job = _sweep_with(["plain", NASTY])
    r = CliRunner().invoke(cli, ["results", job])
    assert r.exit_code == 0, r.output
    assert "[/bold] closes nothing [red]x[/red]" in r.output  # markup shown as typed, not applied or refused
    assert "\x1b" not in r.output and "\x07" not in r.output  # no escape reaches the terminal
    assert "\\x1b[2J" in r.output and "\\x07" in r.output  # ... it is shown as what it was


def test_csv_cells_cannot_become_formulas(home):  # noqa: F811
    job = _sweep_with(["-2+3", "@SUM(A1)"])
    r = CliRunner().invoke(cli, ["results", job, "--csv"])
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(io.StringIO(r.output)))
    assert {row["output"] for row in rows} == {"'-2+3", "'@SUM(A1)"}
    assert all(row["prompt"] == "'=HYPERLINK(\"http://x\")" for row in rows)
    assert {row["seed"] for row in rows} == {"1"}  # numbers stay numbers
