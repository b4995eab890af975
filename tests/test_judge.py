"""``saejobs judge`` against a loopback stand-in of an OpenAI-compatible server (the real one, a vLLM server, is out
of reach here). The stand-in speaks the protocol as OpenAI's published client (``openai``) types it: every request
saejobs sends validates as ``CompletionCreateParamsNonStreaming``, and the real client parses the stand-in's
answers. Expected ratings come from the stand-in's own rule applied to the rows read back by plain SQL."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.dbfixtures import home  # noqa: F401
from tests.test_queue import one_clean_line, saejobs

CRITERIA = ("concept", "instruction", "fluency")


def fragment(content: str) -> str:
    return content.split("[Text fragment]\n", 1)[1].split("\n[End of text fragment]", 1)[0]


def criterion(content: str) -> str:
    return "concept" if "[Concept]" in content else "instruction" if "[Instruction]" in content else "fluency"


def rule(text: str, crit: str) -> int | None:
    """The stand-in's rating: a function of the fragment, different per criterion; none for an UNRATED text."""
    return None if "UNRATED" in text else (len(text) + CRITERIA.index(crit)) % 3


class StandIn(BaseHTTPRequestHandler):
    requests: list = []
    mode = "ok"

    def log_message(self, *a):
        pass

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        StandIn.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
        content = body["messages"][-1]["content"]
        text, crit = fragment(content), criterion(content)
        n = rule(text, crit)
        reply = f"The fragment reads {text[:20]!r}.\nRating: [[{n}]]" if n is not None else "I cannot rate this."
        answer = {"id": f"chatcmpl-{len(StandIn.requests)}", "object": "chat.completion", "created": int(time.time()),
                  "model": body["model"], "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                                                       "message": {"role": "assistant", "content": reply}}],
                  "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}
        raw = b"{not json" if StandIn.mode == "garbage" else json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)


@pytest.fixture
def stand_in():
    StandIn.requests, StandIn.mode = [], "ok"
    server = ThreadingHTTPServer(("127.0.0.1", 0), StandIn)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def sweep_rows() -> str:
    """A sweep stored directly (the judge needs no model): DEFAULT, feature 3 (described with --concept) at two
    strengths, feature 5 (no description anywhere), a chat row, and a text the stand-in will not rate."""
    from saejobs.db import jobs, results

    job = jobs.create("sweep", {"sae": "x"}, sae_id="test/sae")
    sweep = results.ensure_sweep(job.id, "test/sae", "m", {}, {})
    base = {"prompt_token_ids": [1], "seed": 42, "sampling": {}, "token_ids": [5, 6], "logprobs": None, "scores": None,
            "messages": None}
    rows = [dict(base, config_key="d", type="DEFAULT", features=[], prompt="Once", output="Once upon a time"),
            dict(base, config_key="a", type="STEERED", features=[{"index": 3, "strength": 10.0}], prompt="Once",
                 output="Once a dog barked"),
            dict(base, config_key="b", type="STEERED", features=[{"index": 3, "strength": 50.0}], prompt="Once",
                 output="Once dog dog dog dog"),
            dict(base, config_key="c", type="STEERED", features=[{"index": 5, "strength": 10.0}], prompt="Once",
                 output="Once UNRATED text"),
            dict(base, config_key="e", type="STEERED", features=[{"index": 3, "strength": 10.0}], prompt="",
                 output="Woof, said the dog.", messages=[{"role": "system", "content": "Be brief."},
                                                         {"role": "user", "content": "Say something <b>loud</b>."}])]
    results.add_generations(sweep, rows)
    return job.id


def stored(home) -> dict[str, dict]:  # noqa: F811
    with sqlite3.connect(home / "saejobs.db") as c:
        q = ("SELECT g.config_key, g.prompt, g.output, j.judge, j.prompts, j.ratings FROM judgements j "
             "JOIN generations g ON g.id = j.generation_id")
        return {k: {"prompt": p, "output": o, "judge": jd, "prompts": pr, "ratings": json.loads(r)}
                for k, p, o, jd, pr, r in c.execute(q)}


def test_a_sweep_judged_stored_and_not_asked_twice(home, stand_in, monkeypatch):  # noqa: F811
    from openai.types.chat import completion_create_params
    from pydantic import TypeAdapter

    assert saejobs("db", "upgrade").returncode == 0
    job = sweep_rows()
    env = {"OPENAI_API_KEY": ""}
    res = saejobs("judge", job[:8], "--endpoint", stand_in, "--model", "judge-7b", "--concept", "3=dogs and barking",
                  "--json", env=env)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["rated"] == 5 and out["already_rated"] == 0 and out["prompts"] == "saejobs-judge-1"
    assert out["unparsed_replies"] == 2  # the UNRATED row's instruction and fluency (it has no concept)
    # 3 rows with a described feature × 3 criteria + 2 rows × 2 (DEFAULT; feature 5, described nowhere)
    assert len(StandIn.requests) == 3 * 3 + 2 * 2
    params = TypeAdapter(completion_create_params.CompletionCreateParamsNonStreaming)
    for r in StandIn.requests:
        params.validate_python(r["body"])  # what OpenAI's published client would send
        assert r["path"] == "/v1/chat/completions" and r["auth"] is None
        assert r["body"]["model"] == "judge-7b" and r["body"]["temperature"] == 0
        content = r["body"]["messages"][0]["content"]
        assert content.rstrip().endswith("[End of text fragment]") and 'Rating: [[score]]' in content
    concepts = [r["body"]["messages"][0]["content"] for r in StandIn.requests if "[Concept]" in r["body"]["messages"][0]["content"]]
    assert len(concepts) == 3 and all("[Concept]\ndogs and barking\n" in c for c in concepts)
    instructions = {fragment(c): c.split("[Instruction]\n", 1)[1].split("\n[End of instruction]")[0]
                    for c in (r["body"]["messages"][0]["content"] for r in StandIn.requests) if "[Instruction]" in c}
    assert instructions["Woof, said the dog."] == "Say something <b>loud</b>."  # a chat: its last user turn
    assert instructions[" a dog barked"] == "Once"  # the completion without its prompt

    got = stored(home)
    assert set(got) == {"d", "a", "b", "c", "e"}
    for key, g in got.items():
        text = g["output"][len(g["prompt"]):]
        described = key in ("a", "b", "e")
        want = {c: rule(text, c) if c != "concept" or described else None for c in CRITERIA}
        assert {c: g["ratings"][c] for c in CRITERIA} == want, key
        vals = list(want.values())
        harmonic = None if None in vals else 0.0 if 0 in vals else 3 / sum(1 / v for v in vals)
        assert g["ratings"]["harmonic"] == pytest.approx(harmonic) if harmonic is not None else g["ratings"]["harmonic"] is None
        assert g["judge"] == "judge-7b" and g["prompts"] == "saejobs-judge-1"

    asked = len(StandIn.requests)
    again = json.loads(saejobs("judge", job, "--endpoint", stand_in + "/", "--model", "judge-7b", "--json", env=env).stdout)
    assert again["rated"] == 0 and again["already_rated"] == 5 and len(StandIn.requests) == asked  # nothing asked twice

    from saejobs.cli.web import pages
    from saejobs.db import results

    gen_id = next(r["id"] for r in results.generation_rows(job) if r["config_key"] == "a")
    (shown,) = pages.generation_page(gen_id)["judgements"]
    assert shown["ratings"] == got["a"]["ratings"] and "Rating: [[" in shown["replies"]["concept"]


def test_the_stand_in_speaks_what_openais_client_reads(stand_in):
    import openai

    client = openai.OpenAI(base_url=stand_in, api_key="k", max_retries=0)
    answer = client.chat.completions.create(model="judge-7b", messages=[{"role": "user", "content": "[Text fragment]\n"
                                                                         "abc\n[End of text fragment]"}], temperature=0)
    assert answer.choices[0].message.content.endswith(f"Rating: [[{rule('abc', 'fluency')}]]")
    assert StandIn.requests[-1]["auth"] == "Bearer k"


def test_keys_errors_and_bad_answers_are_one_line_and_store_nothing(home, stand_in):  # noqa: F811
    assert saejobs("db", "upgrade").returncode == 0
    job = sweep_rows()
    with_key = saejobs("judge", job, "--endpoint", stand_in, "--model", "m", "--json", env={"OPENAI_API_KEY": "sk-1"})
    assert with_key.returncode == 0 and {r["auth"] for r in StandIn.requests} == {"Bearer sk-1"}  # loopback: sent
    n = len(StandIn.requests)
    far = saejobs("judge", job, "--endpoint", "http://judge.example.com/v1", "--model", "m2",
                  env={"OPENAI_API_KEY": "sk-1"})
    assert "sent only over https" in one_clean_line(far, 2) and len(StandIn.requests) == n
    with socket_closed() as port:
        down = saejobs("judge", job, "--endpoint", f"http://127.0.0.1:{port}/v1", "--model", "m3",
                       env={"OPENAI_API_KEY": ""})
    assert "cannot reach the judge endpoint" in one_clean_line(down, 5)
    StandIn.mode = "garbage"
    bad = saejobs("judge", job, "--endpoint", stand_in, "--model", "m4", env={"OPENAI_API_KEY": ""})
    assert "not a chat completion" in one_clean_line(bad, 2)
    assert {g["judge"] for g in stored(home).values()} == {"m"}  # the failed runs stored nothing
    assert "FEATURE=DESCRIPTION" in one_clean_line(saejobs("judge", job, "--endpoint", stand_in, "--model", "m",
                                                           "--concept", "dogs"), 2)
    assert "http(s) URL" in one_clean_line(saejobs("judge", job, "--endpoint", "ftp://x/v1", "--model", "m"), 2)


class socket_closed:  # noqa: N801
    """A loopback port nothing listens on."""

    def __enter__(self) -> int:
        import socket

        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        return self.port

    def __exit__(self, *a):
        return False
