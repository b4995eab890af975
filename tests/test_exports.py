"""Exports stream (issue 26, item 13): JSON, CSV, Parquet, the report and a search's rows are read a page of
generations at a time, and say what plain SQL says is stored. ``bench/export.py`` measures their memory
at 100k rows."""

from __future__ import annotations

import csv
import io
import json
import math

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from saejobs.cli.main import cli
from saejobs.db.results import EXPORT_PAGE
from saejobs.db.session import get_engine
from tests.dbfixtures import db_url, home  # noqa: F401
from tests.exportdata import stored_search, stored_sweep
from tests.test_db_scale import Statements

N = 2 * EXPORT_PAGE + 37  # three pages


def stored(job_id: str) -> list:
    """The sweep's generations by plain SQL, in id order."""
    with get_engine().connect() as c:
        return c.execute(text("SELECT g.id, g.config_key, g.output, g.seed, g.type FROM generations g "
                              "JOIN sweeps s ON s.id = g.sweep_id WHERE s.job_id = :j ORDER BY g.id"), {"j": job_id}).all()


def run(*args: str):
    """The command's output and the statements that read generations."""
    with Statements() as seen:
        r = CliRunner().invoke(cli, list(args))
    assert r.exit_code == 0, r.output
    return r.output, [q for q in seen if "FROM generations" in q and "count(" not in q.lower()]


def paged(reads: list[str], n: int = N) -> bool:
    return len(reads) >= math.ceil(n / EXPORT_PAGE) and all("LIMIT" in q for q in reads)


@pytest.fixture
def sweep(db_url):
    return stored_sweep(N, features=4, text_chars=40)


def test_json_and_csv_stream_what_is_stored(sweep):
    want = stored(sweep)
    out, reads = run("results", sweep, "--json")
    got = json.loads(out)
    assert [(r["id"], r["config_key"], r["output"], r["seed"], r["type"]) for r in got] == [tuple(w) for w in want]
    assert out == json.dumps(got, indent=2) + "\n" and paged(reads)  # the same text json.dumps gives, in pages
    out, reads = run("results", sweep, "--csv")
    table = list(csv.DictReader(io.StringIO(out)))
    assert [(r["config_key"], r["output"]) for r in table] == [(w.config_key, w.output) for w in want]
    assert "conversation" in table[0] and paged(reads)  # one chat row: the column is there from the header on
    with get_engine().connect() as c:  # every score its own column, as stored (an unscored row: empty cells)
        scores = [json.loads(v) if isinstance(v, str) else v for v, in c.execute(text(
            "SELECT g.scores FROM generations g JOIN sweeps s ON s.id = g.sweep_id WHERE s.job_id = :j ORDER BY g.id"),
            {"j": sweep})]
    assert sum(1 for sc in scores if sc) > N // 2
    for r, sc in zip(table, scores):
        sc = sc or {}
        assert r["nll"] == ("" if sc.get("nll") is None else str(sc["nll"]))
        assert r["longest_repeat"] == ("" if sc.get("longest_repeat") is None else str(sc["longest_repeat"]))
        assert (json.loads(r["concept"]) if r["concept"] else None) == sc.get("concept")
        assert (json.loads(r["concept_tokens"]) if r["concept_tokens"] else None) == sc.get("concept_tokens")


def test_parquet_streams_typed_columns(sweep, tmp_path):
    import pyarrow.parquet as pq

    out, reads = run("results", sweep, "--format", "parquet", "--out", str(tmp_path / "s.parquet"))
    back = pq.read_table(tmp_path / "s.parquet")
    want = stored(sweep)
    assert back.column("config_key").to_pylist() == [w.config_key for w in want] and paged(reads)
    assert back.schema.field("nll").type == "double" and back.schema.field("longest_repeat").type == "int64"
    assert back.column("nll").null_count == sum(1 for i in range(N) if i % 97 == 5)


def test_report_streams_and_lists_every_generation_once(sweep, tmp_path):
    page = tmp_path / "r.html"
    out, reads = run("report", sweep, "--html", str(page), "--json")
    info, html = json.loads(out), page.read_text()
    want = stored(sweep)
    assert info["generations"] == len(want) and info["features"] == [0, 1, 2, 3] and paged(reads)
    with get_engine().connect() as c:  # which rows the page lists: DEFAULTs, and steered rows at a scored point
        rows = [(r.output, r.type, r.features if isinstance(r.features, list) else json.loads(r.features), r.scores) for r in c.execute(text(
            "SELECT g.output, g.type, g.features, g.scores FROM generations g JOIN sweeps s ON s.id = g.sweep_id "
            "WHERE s.job_id = :j ORDER BY g.id"), {"j": sweep})]
    points = {(f[0]["index"], f[0]["strength"]) for _, t, f, sc in rows if t == "STEERED" and sc not in (None, "null")}
    listed = [o for o, t, f, _ in rows if t == "DEFAULT" or (f[0]["index"], f[0]["strength"]) in points]
    assert [o for o, *_ in rows if f">{o}</div>" in html] == listed
    assert all(html.count(f">{o}</div>") == 1 for o in listed)
    assert html.index('id="default"') < html.index('id="f0ms0"') < html.index('id="f0ms10"') < html.index('id="f1ms0"')


def test_a_search_exports_every_rounds_rows(db_url, tmp_path):
    rounds = [stored_sweep(EXPORT_PAGE + 3, features=2, text_chars=10, seed=s) for s in (1, 2)]
    search = stored_search(rounds)
    out, reads = run("results", search, "--format", "parquet", "--out", str(tmp_path / "s.parquet"))
    import pyarrow.parquet as pq

    back = pq.read_table(tmp_path / "s.parquet")
    assert back.column("round").to_pylist() == [r for r in rounds for _ in range(EXPORT_PAGE + 3)]
    assert back.column("id").to_pylist() == [w.id for r in rounds for w in stored(r)] and paged(reads, 2 * (EXPORT_PAGE + 3))
    out, reads = run("report", search, "--html", str(tmp_path / "s.html"), "--json")
    assert json.loads(out)["generations"] == 2 * (EXPORT_PAGE + 3) and paged(reads, 2 * (EXPORT_PAGE + 3))
