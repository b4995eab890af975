"""Scores of steered generations on the real Gemma 3 270M with the demo SAE: concept, fluency and
degeneration; stored with their chunk; backfilled by ``saejobs score``; the strength search; the
HTML report rendered in headless Chromium; the notebook API and Parquet."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from saejobs.engine import demo, score, search
from saejobs.engine.request import Settings, plan_configs
from saejobs.engine.sweep import SweepGenerator
from tests.dbfixtures import home  # noqa: F401

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
PROMPTS = ["Once upon a time", "My favourite thing about", "The weather today is", "In the beginning"]
WORDS = {0: "dog", 1: "ocean", 2: "music", 3: "space"}


def test_repetition_counts_tokens_and_repeats():
    r = score.repetition([5, 6, 7, 5, 6, 7, 5])
    assert r[score.Score.DISTINCT_1] == pytest.approx(3 / 7) and r[score.Score.DISTINCT_2] == pytest.approx(3 / 6)
    assert r[score.Score.LONGEST_REPEAT] == 4  # 5 6 7 5 occurs twice (overlapping)
    assert score.repetition([1, 2, 3]) == {"distinct_1": 1.0, "distinct_2": 1.0, "longest_repeat": 0}
    assert score.repetition([])["distinct_1"] == 1.0


def test_search_rule_takes_the_most_conceptual_strength_within_the_fluency_bound():
    pts = [search.Point(0, 0.0, 1.0, 1), search.Point(100, 5.0, 1.5, 1), search.Point(200, 9.0, 2.2, 1),
           search.Point(300, 9.0, 1.9, 1), search.Point(400, 30.0, 4.0, 1)]
    assert search.choose(pts, 1.0, 1.0).strength == 300  # 400 and 200 break the bound
    assert search.choose(pts, 1.0, 1.5).strength == 200  # a tie goes to the weaker strength
    assert search.choose(pts, 1.0, 0.6).strength == 100
    assert search.choose(pts[1:], 1.0, 0.1) is None
    assert search.coarse_grid(0, 400) == [0, 100, 200, 300, 400]
    assert search.refine([300], 100, 0, 400, {0, 100, 200, 300, 400}) == [250, 350]
    assert search.refine([400], 100, 0, 400, {350, 400}) == []


def test_search_rule_takes_the_best_admissible_point_not_the_first_or_the_last():
    """The README's search, as a curve (in no particular order): 200 has more concept than 300 but breaks
    the bound, 400 too; 100 is the first admissible point, 350 the last: the answer is 300."""
    P = search.Point
    pts = [P(350, 10.0, 2.0, 1), P(100, 0.5, 1.4, 1), P(0, 0.0, 1.22, 1), P(200, 26.3, 3.26, 1), P(300, 24.2, 2.26, 1),
           P(400, 40.0, 5.12, 1), P(250, 99.0, None, 1), P(150, 24.2, 2.5, 1)]
    pick = search.choose(pts, 1.22, 1.5)
    assert (pick.strength, pick.concept, pick.nll) == (150, 24.2, 2.5)  # a tie on concept: the weaker strength
    pick = search.choose(pts[:-1], 1.22, 1.5)
    assert (pick.strength, pick.concept, pick.nll) == (300, 24.2, 2.26)  # bound 2.72: not 200 (3.26), not 400
    assert search.choose(pts[:-1], 1.22, 2.1).strength == 200  # bound 3.32 admits 200
    assert search.choose(pts[:-1], None, 0.0).strength == 400  # no DEFAULT NLL: no bound; an unscored point never
    assert search.choose([P(-300, 24.2, 2.0, 1), P(300, 24.2, 2.0, 1), P(-100, 1.0, 1.0, 1)], 1.0, 5).strength == -300
    assert search.choose([P(-300, 24.2, 2.0, 1), P(200, 24.2, 2.0, 1)], 1.0, 5).strength == 200  # weaker by |s|


@pytest.fixture(scope="module")
def mirror(gemma3, tmp_path_factory) -> Path:
    m = tmp_path_factory.mktemp("mirror")
    demo.build(gemma3, m)
    return m


@pytest.fixture(scope="module")
def demo_sae(mirror):
    from saejobs.engine.sae import load_sae

    return load_sae(demo.ENTRY, mirror / demo.ENTRY.repo_id / demo.ENTRY.folder)


@pytest.mark.model
def test_concept_rises_with_strength_fluency_falls_at_the_high_end_default_near_zero(gemma3, demo_sae):
    """Strengths 0…400 along the unit directions (--normalize): per word feature the concept score
    (mean over 4 prompts) does not fall over the low range and rises above the DEFAULT's; at the
    highest strength the NLL is above the DEFAULT's; the DEFAULT's concept is ~0 on every feature."""
    settings = Settings(n_tokens=16, normalize=True)
    strengths = [0, 100, 200, 300, 400]
    runner = SweepGenerator(gemma3, demo_sae, demo.ENTRY.hook_name, settings)
    outs = runner.run(plan_configs(list(WORDS), [], strengths, PROMPTS, [42], False, settings, "demo"))
    scores = score.score_outputs(runner, outs, list(WORDS))
    rows = [{"type": c.type, "features": [dict(f) for f in c.features], "prompt": "*", "scores": s}
            for (c, _, _), s in zip(outs, scores)]
    curves, base = search.curves(rows)
    for f in WORDS:
        concept = [p.concept for p in curves[(f, "*")]]
        assert base[(f, "*")] < 1.0, (f, base[(f, "*")])
        low = concept[:3]  # 0, 100, 200
        assert low == sorted(low) and max(concept) > base[(f, "*")] + 10, (f, concept)
        assert curves[(f, "*")][-1].nll > base[(-1, "*")] + 0.5, (f, [p.nll for p in curves[(f, "*")]])
    # batched scoring (left-padded, rows of different lengths) equals scoring each row alone
    some = [outs[i] for i in (0, 7, 14, len(outs) - 1)]
    batched = score.score_outputs(runner, some, list(WORDS))
    alone = [score.score_outputs(runner, [o], list(WORDS))[0] for o in some]
    for b, a in zip(batched, alone):
        assert b["nll"] == pytest.approx(a["nll"], abs=1e-4) and b["concept"].keys() == a["concept"].keys()
        for k in b["concept"]:
            assert b["concept"][k]["mean"] == pytest.approx(a["concept"][k]["mean"], abs=1e-2)


def _cli(*args):
    from click.testing import CliRunner

    from saejobs.cli.main import cli

    return CliRunner().invoke(cli, list(args))


def _ok(r) -> dict:
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


@pytest.mark.model
def test_sweep_scores_backfill_results_parquet_and_report(home, gemma3, mirror, tmp_path):
    """A sweep stores scores with its chunks; erased, ``saejobs score`` puts the same ones back; the
    DataFrame and the Parquet file carry them; the report renders in Chromium, one plot per feature,
    with a generation's markup shown as text."""
    import pandas as pd

    import saejobs
    from saejobs.db.models import Generation
    from saejobs.db.session import session
    from saejobs.engine.registry import custom

    custom.write([demo.ENTRY], "demo")
    _ok(_cli("download", demo.ENTRY.id, "--source", str(mirror), "--local", "--json"))
    job = _ok(_cli("sweep", "--sae", demo.ENTRY.id, "--feature", "0,3", "--strength", "0,150,300", "--prompt",
                   "Once upon a time", "--n-tokens", "12", "--model", "gemma-3-270m-gguf", "--batch-size", "3",
                   "--local", "--json"))
    rows = json.loads(_cli("results", job["id"], "--json").stdout)
    assert len(rows) == 7 and all(r["scores"] and r["scores"]["nll"] > 0 for r in rows)
    default = next(r for r in rows if r["type"] == "DEFAULT")
    assert set(default["scores"]["concept"]) == {"0", "3"}  # the baseline on every feature the sweep steers
    before = {r["id"]: r["scores"] for r in rows}

    with session() as s:  # as if stored before scoring existed; and one output carrying markup
        for g in s.query(Generation).all():
            g.scores = None
        s.query(Generation).filter(Generation.id == default["id"]).one().output = \
            'Once upon a time<script>alert(1)</script><b id="injected">x</b>'
    assert _cli("score", "nope-not-a-job").exit_code == 2
    done = _ok(_cli("score", job["id"][:8], "--local", "--json"))
    assert done["state"] == "succeeded" and done["result"]["scored"] == 7
    after = {r["id"]: r["scores"] for r in json.loads(_cli("results", job["id"], "--json").stdout)}
    for gid, sc in before.items():
        assert after[gid]["nll"] == pytest.approx(sc["nll"], abs=1e-4)
        assert after[gid]["concept_mean"] == pytest.approx(sc["concept_mean"], abs=1e-2)
    assert _ok(_cli("score", job["id"], "--local", "--json"))["result"]["scored"] == 0  # nothing left to do

    df = saejobs.results(job["id"])
    assert isinstance(df, pd.DataFrame) and len(df) == 7
    assert {"concept_mean", "nll", "perplexity", "distinct_2", "stopped_at_eos", "strength"} <= set(df.columns)
    assert df[df.type == "STEERED"].groupby("feature").strength.nunique().to_dict() == {"0": 3, "3": 3}
    out = tmp_path / "sweep.parquet"
    r = _cli("results", job["id"], "--format", "parquet", "--out", str(out))
    assert r.exit_code == 0, r.output
    back = pd.read_parquet(out)
    assert list(back.nll) == pytest.approx(list(df.nll)) and list(back.output) == list(df.output)
    assert _cli("results", job["id"], "--format", "parquet").exit_code == 2  # --out is required

    page = tmp_path / "report.html"
    info = _ok(_cli("report", job["id"], "--html", str(page), "--json"))
    assert info["features"] == [0, 3] and info["unscored"] == 0
    text = page.read_text()
    assert "<script>" not in text and "http://" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "")
    dom = _chromium(page, "score-report.png")
    assert dom.count('class="plot"') == 2 and 'data-feature="0"' in dom and 'data-feature="3"' in dom
    assert '<b id="injected">' not in dom and '&lt;b id="injected"&gt;' in dom  # shown as text, not markup
    assert dom.count('class="point"') == 2 * 3 * 2 + 1  # 3 strengths × 2 features, links and sections; DEFAULT
    assert _cli("report", job["id"], "--html", str(tmp_path / "no" / "dir.html")).exit_code == 2


@pytest.mark.model
def test_search_finds_a_strength_where_the_word_appears_within_the_bound_twice_the_same(home, gemma3, mirror, tmp_path):
    import saejobs
    from saejobs.engine.registry import custom

    custom.write([demo.ENTRY], "demo")
    _ok(_cli("download", demo.ENTRY.id, "--source", str(mirror), "--local", "--json"))
    args = ["search", "--sae", demo.ENTRY.id, "--feature", "0", "--prompt", "Once upon a time", "--range", "0:400",
            "--max-nll-increase", "1.5", "--n-tokens", "16", "--model", "gemma-3-270m-gguf", "--local", "--json"]
    first, second = _ok(_cli(*args)), _ok(_cli(*args))
    (pick,) = first["result"]["chosen"]
    assert pick == second["result"]["chosen"][0] and first["result"]["curves"] == second["result"]["curves"]
    assert " dog" in pick["output"].removeprefix("Once upon a time"), pick
    # the README's figures (strength search section): 300 chosen, concept 24.2, NLL 2.26 within 2.72 (DEFAULT
    # 1.22); 200 scores higher on concept (26.3) but its NLL (3.26) is over the bound, 400 too (5.12)
    assert pick["strength"] == 300 and pick["concept"] == pytest.approx(24.2, abs=0.05), pick
    assert pick["nll"] == pytest.approx(2.26, abs=0.005) and pick["default_nll"] == pytest.approx(1.22, abs=0.005)
    assert pick["default_concept"] == 0 and pick["output"] == ("Once upon a time when I was a child, I was a dog "
                                                                "that I didn't do")
    by_strength = {p["strength"]: p for p in first["result"]["curves"][0]["points"]}
    assert by_strength[200]["concept"] == pytest.approx(26.3, abs=0.05) and by_strength[200]["concept"] > pick["concept"]
    assert by_strength[200]["nll"] == pytest.approx(3.26, abs=0.005) and by_strength[400]["nll"] == pytest.approx(5.12, abs=0.005)
    assert sorted(by_strength) == [0, 100, 200, 250, 300, 350, 400]  # 2 rounds: the coarse grid, then 250/350
    assert pick["nll"] <= pick["default_nll"] + 1.5 and pick["concept"] > pick["default_concept"] + 1
    assert len(first["result"]["rounds"]) == 2  # a coarse grid, then one refinement, each one sweep job
    strengths = {p["strength"] for p in first["result"]["curves"][0]["points"]}
    assert {0, 100, 200, 300, 400} < strengths
    assert json.loads(_cli("results", first["id"], "--json").stdout) == first["result"]["chosen"]
    df = saejobs.results(first["id"])  # every round's generations, with the round's sweep job
    assert df["round"].nunique() == 2 and len(df) == 2 * 1 + len(strengths)
    page = tmp_path / "search.html"
    assert _ok(_cli("report", first["id"], "--html", str(page), "--json"))["features"] == [0]
    assert f"chosen {pick['strength']:g}" in page.read_text()
    bad = _cli("search", "--sae", demo.ENTRY.id, "--feature", "0", "--prompt", "x", "--range", "5:1", "--local")
    assert bad.exit_code == 2 and "LO < HI" in bad.output


def _chromium(page: Path, shot_name: str) -> str:
    """Render ``page`` in headless Chromium: keep a screenshot in test-artifacts/, return the DOM."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("Debian's chromium package is not installed (.ci/run installs it)")
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / shot_name
    shot.unlink(missing_ok=True)
    subprocess.run(flags + [f"--screenshot={shot}", "--window-size=1280,1600", page.as_uri()],
                   check=True, capture_output=True, timeout=120)
    assert shot.is_file() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    return subprocess.run(flags + ["--dump-dom", page.as_uri()], check=True, capture_output=True, text=True,
                          timeout=120).stdout
