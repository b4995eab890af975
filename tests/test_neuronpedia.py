"""Round trip with Neuronpedia: a sweep → exported requests → a loopback stand-in answers → import → compare.

The stand-in speaks both published APIs (the public ``POST /api/steer`` with ``X-Api-Key``, and the
inference server's ``POST /v1/steer/completion``) and answers an exported request with the outputs
saejobs itself produced for it, or a perturbed copy. Nothing touches the network.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from saejobs.db import neuronpedia as store
from saejobs.db import results
from saejobs.engine import demo
from saejobs.engine.registry import custom
from tests.artifacts import ARTIFACTS
from tests.dbfixtures import home  # noqa: F401
from tests.test_queue import saejobs, submitted

pytestmark = pytest.mark.model
API_KEY = "np-test-key-do-not-leak-42"


class StandIn:
    """Answers each known request body (exact JSON) with the outputs registered for it."""

    def __init__(self):
        self.answers: dict[str, dict] = {}
        self.seen: list[tuple[str, dict, dict]] = []
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stand_in.seen.append((self.path, dict(self.headers), body))
                if self.path == "/api/steer" and self.headers.get("X-Api-Key") != API_KEY:
                    return self._send(401, {"error": "unauthorized"})
                if self.path not in ("/api/steer", "/v1/steer/completion"):
                    return self._send(404, {"error": "no such endpoint"})
                answer = stand_in.answers.get(json.dumps(body, sort_keys=True))
                self._send(200, answer) if answer else self._send(400, {"error": "unknown request"})

            def _send(self, status, obj):
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def answer(self, body: dict, steered: str, default: str, api: str) -> None:
        self.answers[json.dumps(body, sort_keys=True)] = (
            {"outputs": [{"type": "STEERED", "output": steered}, {"type": "DEFAULT", "output": default}]}
            if api == "inference" else {"STEERED": steered, "DEFAULT": default, "id": "np-run-1"})


@pytest.fixture
def sweep(home, demo_mirror):
    """A real sweep on Gemma 3 270M with the demo SAE: features 0 and 1 × strengths 0 and 150."""
    custom.write([demo.ENTRY], "demo")
    assert saejobs("download", demo.ENTRY.id, "--source", str(demo_mirror), "--local", "-q").returncode == 0
    job = submitted(saejobs("sweep", "--sae", demo.ENTRY.id, "--feature", "0,1", "--strength", "0,150", "--prompt",
                            "Once upon a time", "--n-tokens", "12", "--model", "gemma-3-270m-gguf", "--local", "--json"))
    rows = results.generation_rows(job["id"])
    default = next(r for r in rows if r["type"] == "DEFAULT")
    return job["id"], [r for r in rows if r["type"] == "STEERED"], default


def exported(gen_id: int) -> dict:
    res = saejobs("neuronpedia", "request", str(gen_id), "--json")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def test_round_trip_agrees_fully_and_a_perturbed_answer_diverges_where_it_was_changed(home, sweep, gemma3, tmp_path):
    job, steered, default = sweep
    server = StandIn()
    for i, gen in enumerate(steered):  # half through each API
        api = "public" if i % 2 else "inference"
        server.answer(exported(gen["id"])[api]["body"], gen["output"], default["output"], api)
        env = {"NEURONPEDIA_API_KEY": API_KEY, "NEURONPEDIA_API_URL": server.url + "/api/steer"}
        args = ["--api", "public"] if api == "public" else ["--inference-url", server.url + "/v1"]
        got = submitted(saejobs("neuronpedia", "request", str(gen["id"]), "--fetch", *args, "--json", env=env))
        assert got["matched"] and got["generation"] == gen["id"]
    assert {p for p, _, _ in server.seen} == {"/api/steer", "/v1/steer/completion"}

    report = tmp_path / "report.html"
    full = submitted(saejobs("compare", job, "--json", "--html", str(report)))
    assert full["summary"] == {"configurations": 4, "mean_token_agreement": 1.0, "sampled": False, "exact": 4,
                               "default_exact": 4}
    assert all(r["first_divergence"] is None for r in full["rows"])

    gen = steered[-1]
    ids = gemma3.tokenizer(gen["output"], add_special_tokens=False)["input_ids"]
    k = len(ids) - 4  # inside the completion
    banana = gemma3.tokenizer(" banana", add_special_tokens=False)["input_ids"]
    perturbed = gemma3.tokenizer.decode(ids[:k] + banana + ids[k + 1:])
    body = exported(gen["id"])["inference"]["body"]
    saved = tmp_path / "answer.json"
    saved.write_text(json.dumps({"request": body, "response": {"outputs": [
        {"type": "STEERED", "output": perturbed}, {"type": "DEFAULT", "output": default["output"]}]}}))
    run = submitted(saejobs("neuronpedia", "import", str(saved), "--json"))[0]
    assert run["matched"] and run["generation"] == gen["id"]
    one = submitted(saejobs("compare", job, "--neuronpedia", str(run["run"]), "--json"))
    row = one["rows"][0]
    assert one["summary"]["exact"] == 0 and row["first_divergence"] == k and row["default_exact"] is True
    assert 0 < row["token_agreement"] < 1 and row["edit_distance"] > 0

    everything = tmp_path / "everything.html"  # the four identical runs and the perturbed one
    assert submitted(saejobs("compare", job, "--json", "--html", str(everything)))["summary"]["exact"] == 4
    assert "<mark>" in everything.read_text() and "<mark>" not in report.read_text()
    for text in (report.read_text(), everything.read_text(), json.dumps([b for _, _, b in server.seen])):
        assert API_KEY not in text
    _screenshot(everything)


def _screenshot(report: Path) -> None:
    """The report renders in headless Chromium; the screenshot is kept in test-artifacts/."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("Debian's chromium package is not installed (.ci/run installs it)")
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "neuronpedia-report.png"
    shot.unlink(missing_ok=True)
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--screenshot={shot}", "--window-size=1280,1000", report.as_uri()],
                   check=True, capture_output=True, timeout=120)
    assert shot.is_file() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000


@pytest.mark.parametrize("doc, says", [
    ("{not json", "not JSON"),
    (json.dumps({"request": {"modelId": "gemma-3-270m"}, "response": {"STEERED": "x"}}), "$.request.features: missing"),
    (json.dumps({"request": {"model": "m", "steer_method": "SIMPLE_ADDITIVE", "normalize_steering": False,
                             "features": [{"source": "6-x", "index": "7", "strength": 1}], "prompt": "p",
                             "n_completion_tokens": 4, "temperature": 0, "strength_multiplier": 1, "freq_penalty": 0,
                             "seed": 42}, "response": {"outputs": []}}),
     "$.request.features[0].index: expected an integer, got str"),
    (json.dumps([{"request": {"modelId": "m", "features": [{"layer": "6-x", "index": 1, "strength": 1}],
                              "prompt": "p", "n_tokens": 4, "temperature": 0, "freq_penalty": 0, "seed": 1,
                              "strength_multiplier": 1}, "response": {"outputs": [{"type": "WRONG", "output": "x"}]}}]),
     "[0].response.outputs[0].type: 'WRONG' is not STEERED or DEFAULT"),
])
def test_a_bad_file_is_refused_in_one_line_and_stores_nothing(home, tmp_path, doc, says):
    f = tmp_path / "bad.json"
    f.write_text(doc)
    res = saejobs("neuronpedia", "import", str(f))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines() == [res.stderr.strip()] and says in res.stderr, res.stderr
    assert store.run_count() == 0


def test_an_answer_for_no_stored_configuration_is_kept_as_a_standalone_run(home, tmp_path):
    f = tmp_path / "other.json"
    f.write_text(json.dumps({"request": {"modelId": "gemma-2-2b", "features": [
        {"modelId": "gemma-2-2b", "layer": "20-gemmascope-res-16k", "index": 7650, "strength": 50}],
        "prompt": "Once upon a time", "temperature": 0.5, "n_tokens": 32, "freq_penalty": 2, "seed": 42,
        "strength_multiplier": 4}, "response": {"STEERED": "Once upon a time ...", "DEFAULT": "Once upon a time."}}))
    got = submitted(saejobs("neuronpedia", "import", str(f), "--json"))
    assert got == [{"run": got[0]["run"], "api": "public", "generation": None, "matched": False}]
