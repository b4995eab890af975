"""``saejobs serve`` in a real browser: Debian's Chromium driven by Playwright, against a real server process over
a database real sweeps wrote. What a page shows is checked against the database read by plain SQL (sqlite3), not
by the code that renders it. Screenshots are kept in test-artifacts/."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from tests.artifacts import ARTIFACTS
from tests.dbfixtures import home  # noqa: F401
from tests.synthetic_saes import make
from tests.test_queue import one_clean_line, saejobs

GEN = re.compile(r"generations?[/-](\d+)(?:\.html)?$")  # a generation's URL: /generations/ID, or generation-ID.html
EVIL = "<script>window.pwned = 1</script> & <b>bold</b>"  # a prompt is untrusted text: shown, never run


@pytest.fixture
def browser():
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("Debian's chromium package is not installed (.ci/run installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


def serve(*args: str) -> tuple[subprocess.Popen, dict]:
    """``saejobs serve --port 0 --json``: the process and the line it printed (its URL)."""
    proc = subprocess.Popen([sys.executable, "-m", "saejobs.cli.main", "serve", "--port", "0", "--json", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line, proc.stderr.read()
    return proc, json.loads(line)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


def stored(home, gen_id: int) -> dict:  # noqa: F811
    """One generation as the database holds it, read without saejobs."""
    with sqlite3.connect(home / "saejobs.db") as c:
        c.row_factory = sqlite3.Row
        r = dict(c.execute("SELECT * FROM generations WHERE id = ?", (gen_id,)).fetchone())
    for k in ("features", "scores", "token_ids", "messages", "sampling"):
        r[k] = json.loads(r[k]) if r[k] is not None else None
    return r


def sql(home, query: str, *args) -> list[tuple]:  # noqa: F811
    with sqlite3.connect(home / "saejobs.db") as c:
        return c.execute(query, args).fetchall()


def follow(page, target) -> None:
    """Click a link or button (a selector or a locator) and wait until the page it leads to has loaded."""
    with page.expect_navigation(wait_until="load"):
        (page.locator(target) if isinstance(target, str) else target).click()


def check_tokens(page, home, cell) -> int:  # noqa: F811
    """A highlighted completion: each token's data-act is the stored activation, its colour step 0 exactly where
    the feature does not fire, and the tokens' text the stored completion. Returns how many tokens fire."""
    spans = cell.locator(".tokens")
    if spans.count() == 0:
        return 0
    where = cell.locator("a.gen-link").get_attribute("href") if cell.locator("a.gen-link").count() else page.url
    gen = int(GEN.search(where).group(1))
    row = stored(home, gen)
    key = spans.first.get_attribute("data-feature")
    toks = spans.first.locator(".tok")
    acts = [float(a) for a in toks.evaluate_all("els => els.map(e => e.dataset.act)")]
    levels = toks.evaluate_all("els => els.map(e => e.className)")
    assert acts == pytest.approx(row["scores"]["concept_tokens"][key], rel=1e-9, abs=0)
    assert all(("a0" in cls.split()) == (a <= 0) for a, cls in zip(acts, levels))
    text = "".join(toks.evaluate_all("els => els.map(e => e.textContent)"))
    completion = row["output"][len(row["prompt"]):] if row["output"].startswith(row["prompt"]) else row["output"]
    assert completion.startswith(text) and len(acts) == row["scores"]["completion_tokens"]
    return sum(a > 0 for a in acts)


def test_the_pages_in_a_browser(home, tiny_gemma2_dir, browser, tmp_path):  # noqa: F811
    from saejobs.db import jobs

    s = make(home, d_model=64, d_sae=256, layer=1)
    assert saejobs("download", s.id, "--source", str(s.mirror), "--local", "--quiet").returncode == 0
    common = ["sweep", "--sae", s.id, "--feature", "3,5,8", "--strength", "0,20,60", "--n-tokens", "8", "--model",
              str(tiny_gemma2_dir), "--local", "--json"]
    a = json.loads(saejobs(*common, "--prompt", EVIL).stdout)["id"]
    b = json.loads(saejobs(*common, "--prompt", EVIL, "--strength-multiplier", "2").stdout)["id"]
    live = jobs.create("download", {"sae": s.id}, sae_id=s.id)  # a job the page watches while it runs
    assert jobs.claim(live.id, worker="w", host="h", gpu=None)

    proc, info = serve()
    try:
        url = info["url"]
        assert info["token"] is None and url.startswith("http://127.0.0.1:")
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        resp = page.goto(url)
        assert "default-src 'none'" in resp.headers["content-security-policy"]
        assert {a, b, live.id} <= set(page.locator("tr.job").evaluate_all("els => els.map(e => e.dataset.job)"))
        bar = f'tr[data-job="{live.id}"] progress'
        assert page.locator(bar).evaluate("e => e.value") == 0
        jobs.report(live.id, 0.5, "half way", worker="w")  # the page learns it without a reload
        until = time.monotonic() + 15  # app.js polls every 2 s (waited on here: the CSP forbids Playwright's eval)
        while page.locator(bar).evaluate("e => e.value") != 0.5 and time.monotonic() < until:
            time.sleep(0.2)
        assert page.locator(bar).evaluate("e => e.value") == 0.5
        page.screenshot(path=str(ARTIFACTS / "serve-jobs.png"), full_page=True)

        follow(page, f'tr[data-job="{a}"] a')
        follow(page, "#grid-link")
        assert page.url.endswith(f"/sweeps/{a}")
        assert page.inner_text("#prompt") == EVIL and page.evaluate("window.pwned") is None
        ids = {int(re.search(r"/generations/(\d+)$", h).group(1)) for h in
               page.locator("#grid a.gen-link").evaluate_all("els => els.map(e => e.getAttribute('href'))")}
        (sweep_id,) = sql(home, "SELECT id FROM sweeps WHERE job_id = ?", a)[0]
        assert ids == {i for i, in sql(home, "SELECT id FROM generations WHERE sweep_id = ?", sweep_id)}  # 1 + 3 × 3
        assert len(ids) == 10
        firing = sum(check_tokens(page, home, page.locator(f"td.cell >> nth={i}"))
                     for i in range(page.locator("td.cell").count()))
        assert firing > 0  # the highlighting shows something
        assert page.locator("svg.plot").count() == 3
        page.screenshot(path=str(ARTIFACTS / "serve-sweep.png"), full_page=True)

        cell = page.locator("#grid td.cell:not(.default) >> nth=4")
        href = cell.locator("a.gen-link").get_attribute("href")
        follow(page, cell.locator("a.gen-link"))
        assert page.url == url.rstrip("/") + href
        row = stored(home, int(href.rsplit("/", 1)[1]))
        assert page.inner_text("#completion") == row["output"][len(row["prompt"]):]
        for i in range(page.locator(".completion.highlighted").count()):
            check_tokens(page, home, page.locator(f".completion.highlighted >> nth={i}"))
        page.screenshot(path=str(ARTIFACTS / "serve-generation.png"), full_page=True)

        page.goto(f"{url}jobs/{a}")
        page.select_option("select[name=b]", b)
        follow(page, "form.compare button")
        assert page.locator("#pairs tbody tr").count() == 10, page.inner_text("main")  # every configuration matched
        differs = page.locator("#pairs tr.differs").count()
        want = sum(ta != tb for ta, tb in sql(home, "SELECT ga.token_ids, gb.token_ids FROM generations ga JOIN generations gb "
                                                    "ON ga.config_key != gb.config_key AND ga.prompt = gb.prompt "
                                                    "AND ga.seed = gb.seed AND ga.features = gb.features "
                                                    "JOIN sweeps sa ON sa.id = ga.sweep_id JOIN sweeps sb ON sb.id = gb.sweep_id "
                                                    "WHERE sa.job_id = ? AND sb.job_id = ?", a, b))
        assert differs == want and differs > 0  # strength 20 and 60 × 2 steer differently
        page.screenshot(path=str(ARTIFACTS / "serve-compare.png"), full_page=True)

        page.goto(f"{url}jobs/{live.id}")
        follow(page, "text=cancel")
        assert jobs.get(live.id).state == "cancelled" and "cancelled" in page.inner_text("td.state")
        forged = urllib.request.Request(f"{url}jobs/{b}/cancel", data=b"form_token=guess", method="POST")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(forged, timeout=10)
        assert refused.value.code == 403 and jobs.get(b).state == "succeeded"
        page.goto(f"{url}generations/999999")
        assert page.inner_text("#error") == "no generation 999999"
        rebound = urllib.request.Request(url, headers={"Host": f"evil.example:{info['port']}"})  # DNS rebinding
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(rebound, timeout=10)
        assert refused.value.code == 400
    finally:
        stop(proc)

    # the same pages as a static folder: relative links, no script, opened from disk
    site = tmp_path / "site"
    wrote = json.loads(saejobs("report", a[:8], "--site", str(site), "--json").stdout)
    assert wrote == {"job": a, "site": str(site), "grid_pages": 1, "generations": 10}
    assert not any("<script" in f.read_text() for f in site.glob("*.html"))
    page.goto((site / "index.html").as_uri())
    follow(page, "#grid-link")
    assert page.url.endswith("/sweep-0-0.html") and page.inner_text("#prompt") == EVIL
    hrefs = page.locator("#grid a.gen-link").evaluate_all("els => els.map(e => e.getAttribute('href'))")
    assert {int(GEN.search(h).group(1)) for h in hrefs} == ids
    assert sum(check_tokens(page, home, page.locator(f"td.cell >> nth={i}"))
               for i in range(page.locator("td.cell").count())) == firing
    assert page.evaluate("getComputedStyle(document.querySelector('header')).backgroundColor") == "rgb(32, 35, 42)"
    follow(page, "#grid td.cell:not(.default) a.gen-link >> nth=2")
    assert GEN.search(page.url) and page.locator(".completion.highlighted").count() >= 1
    assert "exists; --site writes a new folder" in one_clean_line(saejobs("report", a, "--site", str(site)), 2)
    assert "--html FILE or --site DIR" in one_clean_line(saejobs("report", a), 2)


def test_beyond_loopback_every_request_needs_the_token(home):  # noqa: F811
    assert saejobs("db", "upgrade").returncode == 0
    proc, info = serve("--host", "0.0.0.0")
    try:
        token, base = info["token"], f"http://127.0.0.1:{info['port']}/"
        assert token and len(token) >= 20
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(base, timeout=10)
        assert refused.value.code == 401
        with urllib.request.urlopen(urllib.request.Request(base, headers={"Authorization": f"Bearer {token}"}),
                                    timeout=10) as ok:
            assert ok.status == 200 and "<h1>Jobs</h1>" in ok.read().decode()

        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *a, **k):
                return None

        with pytest.raises(urllib.error.HTTPError) as once:
            urllib.request.build_opener(NoRedirect).open(f"{base}?token={token}", timeout=10)
        assert once.value.code == 303 and f"saejobs_token={token}" in once.value.headers["set-cookie"]
        busy = saejobs("serve", "--port", str(info["port"]))
        assert "cannot listen on 127.0.0.1" in one_clean_line(busy, 2)
    finally:
        stop(proc)


def test_a_100k_row_sweep_opens_quickly(home):  # noqa: F811
    """100 prompts × (DEFAULT + 100 features × 10 strengths): its grid's first page, a page deep inside it and
    the last, each under 300 ms on a 2-core machine (the first is the slowest request, timed cold)."""
    from tests.exportdata import scores
    from saejobs.db import jobs, results
    import random

    assert saejobs("db", "upgrade").returncode == 0
    rng = random.Random(0)
    job = jobs.create("sweep", {"sae": "x"}, sae_id="test/sae")
    sweep = results.ensure_sweep(job.id, "test/sae", "m", {}, {})
    rows = []
    for p in range(100):
        for f in [None, *range(100)]:
            for st in [None] if f is None else [float(x * 10) for x in range(10)]:
                rows.append({"config_key": f"k{len(rows)}-{p}", "type": "DEFAULT" if f is None else "STEERED",
                             "features": [] if f is None else [{"index": f, "strength": st}], "prompt": f"prompt {p}",
                             "prompt_token_ids": list(range(8)), "seed": 42, "sampling": {"temperature": 0.0},
                             "output": f"prompt {p} then " + "x" * 200, "token_ids": list(range(32)), "logprobs": None,
                             "messages": None, "scores": scores(rng, list(range(100)) if f is None else [f])})
        if len(rows) >= 5000:
            results.add_generations(sweep, rows)
            rows = []
    results.add_generations(sweep, rows)
    assert sql(home, "SELECT count(*) FROM generations")[0][0] == 100 * 1001
    proc, info = serve()
    try:
        with urllib.request.urlopen(info["url"], timeout=30) as r:  # the server answers
            assert r.status == 200
        for query, prompt in (("", "prompt 0"), ("?group=57&cols=9", "prompt 57"), ("?group=99&cols=16", "prompt 99")):
            start = time.perf_counter()
            with urllib.request.urlopen(f"{info['url']}sweeps/{job.id}{query}", timeout=30) as r:
                body = r.read().decode()
            took = time.perf_counter() - start
            assert f'<span id="prompt">{prompt}</span>' in body and body.count('class="cell') >= 10 * 4
            assert took < 0.3, f"{query or 'first page'}: {took * 1000:.0f} ms"
    finally:
        stop(proc)
