"""``saejobs neuronpedia feature``: where Neuronpedia shows a feature and, fetched from a loopback
stand-in of its public API, what it says about it — the answer read with the field names the published
``neuronpedia`` client reads (checked by running its own ``FeatureRequest.get`` on the same answer)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from neuronpedia.requests.feature_request import FeatureRequest

from tests.dbfixtures import home  # noqa: F401
from tests.test_queue import one_clean_line, saejobs, submitted

ANSWER = {"modelId": "gemma-2-2b", "layer": "20-gemmascope-res-16k", "index": "7650", "maxActApprox": 41.5,
          "frac_nonzero": 0.0021, "pos_str": [" Paris", " French"], "neg_str": [" the"],
          "explanations": [{"modelId": "gemma-2-2b", "source": "20-gemmascope-res-16k", "index": "7650",
                            "description": "[bold]French[/] places \x1b[31m", "typeName": "oai_token-act-pair",
                            "explanationModelName": "gpt-4o-mini"}],
          "activations": [{"modelId": "gemma-2-2b", "source": "20-gemmascope-res-16k", "index": "7650",
                           "tokens": ["a", " Paris"], "values": [0, 12.5], "binMax": 41.5, "binMin": 0,
                           "binContains": 1}]}


def serve(answer: dict):
    seen = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            seen.append((self.path, self.headers.get("X-Api-Key")))
            data = json.dumps(answer).encode()
            self.send_response(200 if self.path.startswith("/api/feature/") else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{httpd.server_address[1]}", seen


def test_a_feature_is_fetched_and_read_as_the_published_client_reads_it(home):
    url, seen = serve(ANSWER)
    env = {"NEURONPEDIA_API_URL": url + "/api/steer", "NEURONPEDIA_API_KEY": "k-123"}
    got = submitted(saejobs("neuronpedia", "feature", "gemma-2-2b/20-gemmascope-res-16k", "7650", "--fetch",
                            "--json", env=env))
    assert seen == [("/api/feature/gemma-2-2b/20-gemmascope-res-16k/7650", "k-123")]
    assert got["explanations"] == [ANSWER["explanations"][0]["description"]] and got["max_act_approx"] == 41.5
    assert got["pos_str"] == [" Paris", " French"]
    assert got["page"] == "https://neuronpedia.org/gemma-2-2b/20-gemmascope-res-16k/7650"

    client = FeatureRequest(api_key="unused")  # the published client's own reading of the same answer
    client.send_request = lambda method, uri: (
        ANSWER if (method, uri) == ("GET", "gemma-2-2b/20-gemmascope-res-16k/7650") else None)
    feature = client.get("gemma-2-2b", "20-gemmascope-res-16k", 7650)
    assert [e.text for e in feature.explanations] == got["explanations"] and feature.density == got["density"]
    assert (feature.modelId, feature.source, int(feature.index)) == (got["model"], got["source"], got["index"])

    text = saejobs("neuronpedia", "feature", "gemma-2-2b/20-gemmascope-res-16k", "7650", "--fetch", env=env).stdout
    assert "[bold]French[/]" in text and "\x1b" not in text  # untrusted text: no markup, no terminal escapes


def test_bad_requests_and_answers_are_one_line(home):
    line = one_clean_line(saejobs("neuronpedia", "feature", "gemma-2-2b/20-gemmascope-res-16k", "16384"), 2)
    assert "out of range" in line
    url, _ = serve({**ANSWER, "explanations": [{"description": 7}]})
    res = saejobs("neuronpedia", "feature", "gemma-2-2b/20-gemmascope-res-16k", "7650", "--fetch",
                  env={"NEURONPEDIA_API_URL": url + "/api/steer"})
    assert "feature.explanations[0].description: expected a string" in one_clean_line(res, 2)
    offline = submitted(saejobs("neuronpedia", "feature", "gemma-2-2b/20-gemmascope-res-16k", "7650", "--json"))
    assert offline["url"] == "https://neuronpedia.org/api/feature/gemma-2-2b/20-gemmascope-res-16k/7650"
