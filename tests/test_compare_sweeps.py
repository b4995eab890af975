"""``saejobs compare A B`` (issue 30 item 4): two sweeps matched by configuration; token agreement and score
deltas computed here from the stored rows, not by the code under test."""

from __future__ import annotations

import json

import pytest

from tests.dbfixtures import home  # noqa: F401
from tests.synthetic_saes import make
from tests.test_queue import one_clean_line, saejobs


def test_two_sweeps_side_by_side(home, tiny_gemma2_dir, tmp_path):  # noqa: F811
    from saejobs.db import results

    s = make(home, d_model=64, d_sae=256, layer=1)
    assert saejobs("download", s.id, "--source", str(s.mirror), "--local", "--quiet").returncode == 0
    common = ["sweep", "--sae", s.id, "--feature", "3,5", "--strength", "0,40", "--n-tokens", "6", "--model",
              str(tiny_gemma2_dir), "--local", "--json"]
    a = json.loads(saejobs(*common, "--prompt", "Hello there").stdout)["id"]
    b = json.loads(saejobs(*common, "--prompt", "Hello there", "--prompt", "The sea",
                           "--strength-multiplier", "2").stdout)["id"]
    res = saejobs("compare", a[:8], b, "--json", "--html", str(tmp_path / "cmp.html"))
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout)

    rows_a, rows_b = results.generation_rows(a), results.generation_rows(b)
    key = lambda r: (r["type"], json.dumps(r["features"], sort_keys=True), r["prompt"], r["seed"])  # noqa: E731
    b_by = {key(r): r for r in rows_b}
    pairs = [(r, b_by[key(r)]) for r in rows_a if key(r) in b_by]
    assert len(pairs) == len(rows_a) == 5 and got["summary"]["matched"] == 5  # DEFAULT + 2 features × 2 strengths
    assert got["summary"]["only_a"] == 0 and got["summary"]["only_b"] == 5  # the second prompt's
    assert got["summary"]["sampling_differs"] == {"strength_multiplier": [1.0, 2.0]}
    for row in got["rows"]:
        ra, rb = next((x, y) for x, y in pairs if x["id"] == row["generation_a"])
        assert rb["id"] == row["generation_b"]
        ta, tb = ra["token_ids"], rb["token_ids"]
        n = max(len(ta), len(tb))
        assert row["exact"] is (ta == tb)
        assert row["token_agreement"] == pytest.approx(sum(x == y for x, y in zip(ta, tb)) / n)
        assert row["deltas"]["nll"] == pytest.approx(rb["scores"]["nll"] - ra["scores"]["nll"], abs=1e-9)
        unsteered = ra["type"] == "DEFAULT" or ra["features"][0]["strength"] == 0
        assert (ta == tb) if unsteered else True  # strength 0 and DEFAULT: the multiplier changes nothing
    assert any(not r["exact"] for r in got["rows"])  # strength 40 × 2 steers differently
    page = (tmp_path / "cmp.html").read_text()
    assert page.count("<tr>") == 1 + 5 and "strength_multiplier 1.0 vs 2.0" in page

    table = saejobs("compare", a, b, env={"COLUMNS": "200"})
    assert table.returncode == 0 and f"identical: {got['summary']['exact']}/5 configurations" in table.stdout

    assert "compare takes two different sweeps" in one_clean_line(saejobs("compare", a, a), 2)
    assert "give it without OTHER" in one_clean_line(saejobs("compare", a, b, "--neuronpedia", "1"), 2)
    other = json.loads(saejobs("sweep", "--sae", s.id, "--feature", "9", "--strength", "7", "--n-tokens", "2",
                               "--prompt", "Elsewhere", "--model", str(tiny_gemma2_dir), "--local", "--json").stdout)["id"]
    assert "share no configuration" in one_clean_line(saejobs("compare", a, other), 2)
