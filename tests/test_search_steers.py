"""``search`` over named steers (issue 30 item 3): multi-SAE steers searched over their strength multiplier,
generated as a sweep with the same steers would, and chosen by the rule as written here (not by engine.search)
from the rows the rounds stored, read by plain SQL."""

from __future__ import annotations

import json
import sqlite3

from tests.dbfixtures import home  # noqa: F401
from tests.synthetic_saes import make
from tests.test_queue import saejobs

BOUND, REPEAT, DROP = 1.0, 4, 0.2  # the rule's defaults (README: --max-nll-increase, --max-repeat-increase, ...)


def rows_of(home, job: str) -> list[dict]:  # noqa: F811
    with sqlite3.connect(home / "saejobs.db") as c:
        q = ("SELECT g.type, g.prompt, g.sampling, g.scores, g.output, g.features FROM generations g "
             "JOIN sweeps s ON s.id = g.sweep_id WHERE s.job_id = ?")
        return [{"type": t, "prompt": p, "sampling": json.loads(sm), "scores": json.loads(sc), "output": o,
                 "features": json.loads(f)} for t, p, sm, sc, o, f in c.execute(q, (job,))]


def chosen_by_hand(rows: list[dict], steer: str, prompt: str) -> float | None:
    """The rule: among multipliers whose nll_novel ≤ DEFAULT's + BOUND, longest repeat ≤ DEFAULT's + REPEAT and
    distinct-2 ≥ DEFAULT's − DROP, the highest concept mean (ties: the smaller multiplier)."""
    default = next(r["scores"] for r in rows if r["type"] == "DEFAULT" and r["prompt"] == prompt)
    ok = []
    for r in rows:
        sm, sc = r["sampling"], r["scores"]
        if r["type"] != "STEERED" or sm.get("steer") != steer or r["prompt"] != prompt:
            continue
        if sc["nll_novel"] <= default["nll_novel"] + BOUND and sc["longest_repeat"] <= default["longest_repeat"] + REPEAT \
                and sc["distinct_2"] >= default["distinct_2"] - DROP:
            ok.append((sc["concept_mean"], -abs(sm["strength_multiplier"]), sm["strength_multiplier"]))
    return max(ok)[2] if ok else None


def test_a_two_sae_steer_search(home, tiny_gemma2_dir, tmp_path):  # noqa: F811
    s1, s3 = make(home, d_model=64, d_sae=256, layer=1), make(home, d_model=64, d_sae=256, layer=3, seed=1)
    for s in (s1, s3):
        assert saejobs("download", s.id, "--source", str(s.mirror), "--local", "--quiet").returncode == 0
    (tmp_path / "steers.json").write_text(json.dumps({"mix <b>": [{"sae": s1.id, "index": 5, "strength": 20.0},
                                                                  {"sae": s3.id, "index": 7, "strength": 10.0}]}))
    res = saejobs("search", "--steers", str(tmp_path / "steers.json"), "--feature", f"{s3.id}:11@15",
                  "--feature", f"{s1.id}:9@5", "--range", "0:8", "--points", "3", "--rounds", "1",
                  "--prompt", "Hello there", "--prompt", "The sea", "--n-tokens", "8", "--model", str(tiny_gemma2_dir),
                  "--local", "--json")
    assert res.returncode == 0, res.stderr
    result = json.loads(res.stdout)["result"]
    assert result["sae"] == s1.id  # the first SAE a steer names (the file's)
    rows = [r for job in result["rounds"] for r in rows_of(home, job)]
    steered = [r for r in rows if r["type"] == "STEERED"]
    assert {r["sampling"]["steer"] for r in steered} == {"mix <b>", "command line"}
    assert {0.0, 4.0, 8.0} <= {r["sampling"]["strength_multiplier"] for r in steered}  # the coarse grid, then refined
    mix = next(r for r in steered if r["sampling"]["steer"] == "mix <b>")
    assert set(mix["scores"]["concept"]) == {"5", f"{s3.id}:7"}  # each feature read by its own SAE
    assert len(result["chosen"]) == 4  # 2 steers × 2 prompts
    for c in result["chosen"]:
        assert c["steer"] == c["feature"] and c["steer"] in ("mix <b>", "command line")
        assert c["strength"] == chosen_by_hand(rows, c["steer"], c["prompt"]), c
        if c["strength"] is not None:
            at = [r for r in steered if r["sampling"]["steer"] == c["steer"] and r["prompt"] == c["prompt"]
                  and r["sampling"]["strength_multiplier"] == c["strength"]]
            assert c["concept"] == sum(r["scores"]["concept_mean"] for r in at) / len(at)
            assert c["output"] == at[0]["output"]
    assert {(cv["steer"], cv["prompt"]) for cv in result["curves"]} == {(c["steer"], c["prompt"]) for c in result["chosen"]}

    from saejobs.cli.web import pages

    grid = pages.sweep_page(result["rounds"][0])  # serve's page of a round: a column and a curve per steer
    assert [f["name"] for f in grid["features"]] == ["command line", "mix <b>"]
    assert [r["strength"] for r in grid["grid"]] == [0.0, 4.0, 8.0] and len(grid["plots"]) == 2
    assert all(c is not None and c["concept_mean"] is not None for r in grid["grid"] for c in r["cells"])

    page = tmp_path / "report.html"
    assert saejobs("report", result["rounds"][0][:8], "--html", str(page)).returncode == 0
    text = page.read_text()
    assert "mix &lt;b&gt;" in text and "mix <b>" not in text  # a steer's name is text, escaped

    both = saejobs("search", "--sae", s1.id, "--feature", "3", "--feature", f"{s3.id}:11@15", "--prompt", "p")
    assert both.returncode == 2 and "not both" in both.stderr
