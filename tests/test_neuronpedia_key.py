"""Issue 26, item 14: ``NEURONPEDIA_API_KEY`` goes only to its configured origin, and answers are bounded.

Two real loopback HTTP servers: ``home`` stands in for the configured Neuronpedia origin
(``NEURONPEDIA_API_URL``), ``elsewhere`` is another origin (another port: an origin is scheme, host and
port). ``home`` redirects to ``elsewhere``; both record the headers they got. The key must reach
``home`` and never ``elsewhere``; a redirect inside ``home`` keeps it. Plain http is refused for the key
unless the origin is this machine (these stand-ins are); an answer larger than
``SAEJOBS_NEURONPEDIA_MAX_BYTES`` is one line, exit 2, nothing stored.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from saejobs.db import jobs, results
from saejobs.db import neuronpedia as store
from saejobs.engine.request import Settings
from tests.dbfixtures import home  # noqa: F401
from tests.test_neuronpedia_feature import ANSWER
from tests.test_queue import one_clean_line, saejobs, submitted

KEY = "np-key-stays-home-7f3a9c"
SAE, FEATURE = "gemma-2-2b/20-gemmascope-res-16k", "7650"
FEATURE_PATH = f"/api/feature/gemma-2-2b/20-gemmascope-res-16k/{FEATURE}"


class Server:
    """A loopback HTTP server answering with ``plan(method, path)``: (status, headers, body bytes,
    send Content-Length?). Every request is recorded as (method, path, its X-Api-Key or None)."""

    def __init__(self, plan):
        self.seen: list[tuple[str, str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _any(self):
                if self.headers.get("Content-Length"):
                    self.rfile.read(int(self.headers["Content-Length"]))
                server.seen.append((self.command, self.path, self.headers.get("X-Api-Key")))
                status, headers, body, sized = plan(self.command, self.path)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                if sized:
                    self.send_header("Content-Length", str(len(body)))
                else:  # HTTP/1.0-style: the body ends when the connection closes, no length said first
                    self.close_connection = True
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _any

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()


def json_answer(obj, status: int = 200, sized: bool = True):
    return status, {"Content-Type": "application/json"}, json.dumps(obj).encode(), sized


def redirect(to: str, status: int = 302):
    return status, {"Location": to}, b"", True


@pytest.fixture
def servers():
    made = []

    def make(plan) -> Server:
        made.append(Server(plan))
        return made[-1]

    yield make
    for s in made:
        s.close()


def feature_fetch(home_url: str, **env: str):
    return saejobs("neuronpedia", "feature", SAE, FEATURE, "--fetch", "--json",
                   env={"NEURONPEDIA_API_URL": home_url + "/api/steer", "NEURONPEDIA_API_KEY": KEY, **env})


def test_the_key_is_dropped_on_a_redirect_to_another_origin(home, servers):
    elsewhere = servers(lambda method, path: json_answer(ANSWER))
    origin = servers(lambda method, path: redirect(elsewhere.url + path))
    got = submitted(feature_fetch(origin.url))  # the answer is read from where it was sent...
    assert got["max_act_approx"] == 41.5
    assert origin.seen == [("GET", FEATURE_PATH, KEY)]
    assert elsewhere.seen == [("GET", FEATURE_PATH, None)]  # ...without the key


def test_a_redirect_within_the_origin_keeps_the_key(home, servers):
    def plan(method, path):
        if path.startswith("/api/feature/"):
            return redirect("/api/v2" + path[len("/api"):], 301)
        return json_answer(ANSWER)

    origin = servers(plan)
    assert submitted(feature_fetch(origin.url))["max_act_approx"] == 41.5
    assert origin.seen == [("GET", FEATURE_PATH, KEY), ("GET", "/api/v2" + FEATURE_PATH[4:], KEY)]


def stored_generation() -> int:
    """One STEERED generation stored as a sweep stores it (no model needed to export or fetch it)."""
    job = jobs.create("sweep", {"sae": SAE})
    sweep_id = results.ensure_sweep(job.id, SAE, "google/gemma-2-2b", {}, {})
    results.add_generations(sweep_id, [{
        "config_key": "k-1", "type": "STEERED", "features": [{"index": int(FEATURE), "strength": 50.0}],
        "prompt": "Once upon a time", "prompt_token_ids": [2, 7], "seed": 16,
        "sampling": Settings(n_tokens=8).to_json(),
        "output": "Once upon a time, Paris", "token_ids": [9], "logprobs": None, "scores": None, "messages": None}])
    return store.steered()[0]["id"]


def steer_fetch(gen: int, home_url: str, **env: str):
    return saejobs("neuronpedia", "request", str(gen), "--fetch", "--api", "public", "--json",
                   env={"NEURONPEDIA_API_URL": home_url + "/api/steer", "NEURONPEDIA_API_KEY": KEY, **env})


def test_a_steer_request_redirected_elsewhere_arrives_without_the_key(home, servers):
    gen = stored_generation()

    def answer_only_with_the_key(method, path):  # as Neuronpedia does: 401 without it
        if elsewhere.seen[-1][2] == KEY:
            return json_answer({"STEERED": "x", "DEFAULT": "y"})
        return json_answer({"error": "unauthorized"}, 401)

    elsewhere = servers(answer_only_with_the_key)
    origin = servers(lambda method, path: redirect(elsewhere.url + "/api/steer", 303))
    res = steer_fetch(gen, origin.url)
    assert origin.seen == [("POST", "/api/steer", KEY)]
    assert elsewhere.seen == [("GET", "/api/steer", None)], elsewhere.seen
    assert "HTTP 401" in one_clean_line(res, 2) and KEY not in res.stdout + res.stderr
    assert store.run_count() == 0


def test_an_answer_over_the_size_limit_is_one_line_and_nothing_is_stored(home, servers):
    gen = stored_generation()
    big = {"STEERED": "Once upon a time" + " Paris" * 40_000, "DEFAULT": "Once upon a time"}  # 240 kB, valid
    sized = servers(lambda method, path: json_answer(big))
    unsized = servers(lambda method, path: json_answer(big, sized=False))  # no Content-Length to refuse on
    for server in (sized, unsized):
        line = one_clean_line(steer_fetch(gen, server.url, SAEJOBS_NEURONPEDIA_MAX_BYTES="100000"), 2)
        assert "more than 100000 bytes" in line and "SAEJOBS_NEURONPEDIA_MAX_BYTES" in line, line
    assert store.run_count() == 0
    line = one_clean_line(feature_fetch(unsized.url, SAEJOBS_NEURONPEDIA_MAX_BYTES="1000"), 2)
    assert "more than 1000 bytes" in line
    ok = submitted(steer_fetch(gen, sized.url))  # the default limit (16 MiB) takes it
    assert ok["run"] and store.run_count() == 1


def test_the_key_is_never_sent_over_plain_http_to_another_machine(home, servers):
    line = one_clean_line(feature_fetch("http://neuronpedia.invalid"), 2)  # refused before any connection
    assert "https" in line and "NEURONPEDIA_API_URL" in line and KEY not in line
    gen = stored_generation()
    assert "https" in one_clean_line(steer_fetch(gen, "http://neuronpedia.invalid"), 2)
    plain = submitted(saejobs("neuronpedia", "feature", SAE, FEATURE, "--json",  # no fetch: nothing is sent
                              env={"NEURONPEDIA_API_URL": "http://neuronpedia.invalid/api/steer",
                                   "NEURONPEDIA_API_KEY": KEY}))
    assert plain["url"].startswith("http://neuronpedia.invalid/")


@pytest.mark.parametrize("configured, target, keeps", [
    ("https://neuronpedia.org/api/steer", "https://neuronpedia.org/api/v2/steer", True),
    ("https://neuronpedia.org/api/steer", "https://NEURONPEDIA.org:443/x", True),
    ("https://neuronpedia.org/api/steer", "http://neuronpedia.org/api/steer", False),  # plain http
    ("https://neuronpedia.org/api/steer", "https://www.neuronpedia.org/api/steer", False),
    ("https://neuronpedia.org/api/steer", "https://neuronpedia.org:8443/api/steer", False),
    ("https://neuronpedia.org/api/steer", "https://neuronpedia.org.evil.example/api/steer", False),
    ("http://127.0.0.1:5002/v1", "http://127.0.0.1:5002/v1/x", True),
    ("http://127.0.0.1:5002/v1", "http://localhost:5002/v1/x", False),
    ("http://127.0.0.1:5002/v1", "http://127.0.0.1:5003/v1/x", False),
])
def test_which_redirect_keeps_the_key(configured, target, keeps):
    from saejobs.tasks.neuronpedia import same_origin

    assert same_origin(configured, target) is keeps


@pytest.mark.parametrize("url, allowed", [
    ("https://neuronpedia.org/api/steer", True), ("http://127.0.0.1:3000/api/steer", True),
    ("http://localhost:3000/api/steer", True), ("http://[::1]:3000/api/steer", True),
    ("http://neuronpedia.org/api/steer", False), ("http://10.0.0.5/api/steer", False),
    ("ftp://neuronpedia.org/api/steer", False),
])
def test_where_the_key_may_go_over_which_scheme(url, allowed):
    from saejobs.engine.errors import UsageError
    from saejobs.tasks.neuronpedia import check_key_transport

    if allowed:
        check_key_transport(url)
    else:
        with pytest.raises(UsageError, match="https"):
            check_key_transport(url)
