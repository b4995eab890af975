"""Issue 26, item 15: a chat template is rendered within bounds — output size (``SAEJOBS_CHAT_MAX_CHARS``)
and time (``SAEJOBS_CHAT_RENDER_S``) — and may not load another file; each refusal is one line, exit 2.

Checked where it matters: at submission (``saejobs sweep --chat --chat-template``: nothing queued, no
row), and where the job renders it (``engine.chat.render``, run in a child process with its address
space capped and an alarm, so a template that is not bounded cannot take this machine's memory or hang
the test). The bounded render gives the text transformers' ``apply_chat_template`` gives.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select

from saejobs.db.models import Job
from saejobs.db.session import session
from tests.dbfixtures import home  # noqa: F401
from tests.queue_harness import broker  # noqa: F401
from tests.test_queue import one_clean_line, saejobs

ROOT = Path(__file__).resolve().parents[1]
GEMMA = ROOT / "tests" / "data" / "gemma-chat-template.jinja"
CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Write one sentence."}]
LOOP = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}x"
DOUBLING = ('{% set ns = namespace(s="ab") %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}'
            "{{ ns.s }}")

# name: (template, what the one line says)
REFUSED_AT_SUBMISSION = {
    "20M characters from one line": ('{{ bos_token }}{{ "x" * 20000000 }}', "more than 1000000 characters"),
    "a namespace doubling itself": (DOUBLING, "more than 1000000 characters"),
    "a loop of 10^10 steps": (LOOP, "did not finish rendering in"),
    "include": ('{% include "other.jinja" %}', "uses {% include %} (line 1)"),
    "import": ('{{ bos_token }}\n{% import "macros.jinja" as m %}{{ m.turn() }}', "uses {% import %} (line 2)"),
    "from import": ('{% from "macros.jinja" import turn %}{{ turn() }}', "uses {% from ... import %}"),
    "extends": ('{% extends "base.jinja" %}', "uses {% extends %}"),
}
# More ways to grow, rendered where the job renders (with a tokenizer): each must stop in one line.
REFUSED_AT_RENDER = {
    **REFUSED_AT_SUBMISSION,
    "center": ('{{ "x" | center(1000000000) }}', "more than"),
    "printf width": ('{{ "%01000000000d" % 1 }}', "more than"),
    "str.format width": ('{{ "{:>1000000000}".format(1) }}', "more than"),
    "str.replace of every gap": ('{% set s = "x" * 100000 %}{{ s.replace("", s) }}', "more than"),
    "join of many references": ('{% set s = "y" * 900000 %}{{ [s, s, s, s, s, s, s, s, s, s] | join }}',
                                "more than"),
    "a list of references printed": ('{% set s = "y" * 900000 %}{{ [s, s, s, s] }}', "more than"),
    "a huge power": ("{{ 10 ** (10 ** 7) }}", "more than"),
    "a macro doubling its argument": (
        "{% macro grow(s) %}{{ grow(s ~ s) }}{% endmacro %}{{ grow('ab') }}", "more than"),
    "a block set doubling": ('{% set ns = namespace(s="ab") %}{% for i in range(64) %}{% set ns.s %}{{ ns.s }}'
                             "{{ ns.s }}{% endset %}{% endfor %}{{ ns.s }}", "more than"),
    "batch filling": ('{{ [1] | batch(1000000000, "x") | list }}', "more than"),
    "only with the tokenizer's BOS": ("{% if bos_token %}" + LOOP + "{% endif %}", "did not finish rendering"),
    "a division by zero": ("{{ bos_token }}{{ 1 / 0 }}", "failed to render: ZeroDivisionError"),
}


def chat_sweep(tmp_path: Path, template: str) -> subprocess.CompletedProcess:
    chats, tpl = tmp_path / "chats.json", tmp_path / "template.jinja"
    chats.write_text(json.dumps([CONVERSATION]))
    tpl.write_text(template)
    return saejobs("sweep", "--sae", "gemma-3-270m/5-gemmascope-2-res-16k", "--feature", "1", "--strength", "5",
                   "--chat", str(chats), "--chat-template", str(tpl), "--model", "gemma-3-270m-gguf", "--json",
                   env={"SAEJOBS_CHAT_RENDER_S": "1"}, timeout=120)


@pytest.mark.parametrize("name", list(REFUSED_AT_SUBMISSION))
def test_a_bad_template_is_refused_at_submission_and_nothing_is_queued(home, broker, tmp_path, name):
    template, says = REFUSED_AT_SUBMISSION[name]
    line = one_clean_line(chat_sweep(tmp_path, template), 2)
    assert says in line, line
    with session() as s:
        assert s.scalars(select(Job)).all() == []
    import redis

    assert redis.Redis.from_url(broker).llen("saejobs") == 0


def test_a_good_template_is_still_queued(home, broker, tmp_path):
    res = chat_sweep(tmp_path, GEMMA.read_text())
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["state"] == "queued"


CHILD = r"""
import json, resource, signal, sys
resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))  # 4 GiB: an unbounded template fails, not the host
from saejobs.engine import chat, models
from saejobs.engine.errors import UsageError
tok = models.byte_tokenizer()  # a real transformers tokenizer with BOS/EOS, no download
conv = chat.conversation(json.loads(sys.argv[1]))
def stuck(*_):
    raise TimeoutError("still rendering after 20 s")
signal.signal(signal.SIGALRM, stuck)
for name, template in json.loads(sys.stdin.read()).items():
    try:
        signal.alarm(20)
        try:
            text = chat.render(tok, conv, template)
        finally:
            signal.alarm(0)
        got = f"RENDERED {len(text)} characters"
    except UsageError as e:
        got = "REFUSED " + str(e)
    except BaseException as e:
        got = f"INTERNAL {type(e).__name__}: {str(e)[:120]}"
    print(json.dumps([name, got]), flush=True)
"""


def test_where_the_job_renders_every_unbounded_template_stops_in_one_line(tmp_path):
    templates = {name: t for name, (t, _) in REFUSED_AT_RENDER.items()}
    res = subprocess.run([sys.executable, "-c", CHILD, json.dumps(CONVERSATION)], input=json.dumps(templates),
                         capture_output=True, text=True, timeout=900, cwd=ROOT,
                         env={**__import__("os").environ, "SAEJOBS_CHAT_RENDER_S": "2"})
    got = dict(json.loads(line) for line in res.stdout.splitlines() if line.startswith("["))
    assert set(got) == set(templates), res.stderr[-3000:]
    wrong = {name: got[name] for name, (_, says) in REFUSED_AT_RENDER.items()
             if not (got[name].startswith("REFUSED ") and says in got[name] and "\n" not in got[name])}
    assert not wrong, json.dumps(wrong, indent=1)


FIDELITY = [
    GEMMA.read_text(),
    # the globals, filters and statements chat templates use, within bounds
    "{%- set ns = namespace(n=0, seen=[]) -%}{{ bos_token }}{% for m in messages %}{% set ns.n = ns.n + 1 %}"
    "{% if loop.first and m.role == 'system' %}{{ '[SYS] ' ~ m.content | trim }}{% continue %}{% endif %}"
    "{{ '<|' + m.role + '|>' }}{{ m.content | indent(2) | center(40) }}{{ '%s/%d' % (m.role, loop.index) }}"
    "{{ '{}:{}'.format(m.role, ns.n) }}{{ m | tojson }}{{ m.content.replace('one', 'ONE') }}"
    "{{ (m.content ~ ' ') * 2 }}{{ [m.role, m.content] | join(', ') }}{% generation %}{{ eos_token }}"
    "{% endgeneration %}{% endfor %}{{ dict(a=1, b=[2, 3]) | tojson(indent=2) }}{{ messages | length }}"
    "{% macro t(r) %}<{{ r | upper }}>{% endmacro %}{{ t('end') }}{% if add_generation_prompt %}<|assistant|>"
    "{% endif %}{{ ns.n * 3 }}{{ 2 ** 10 }}{{ range(5) | list }}{% set b %}{{ ns.n }}{{ ns.n }}{% endset %}{{ b }}",
]


@pytest.mark.parametrize("i", range(len(FIDELITY)))
def test_the_bounded_render_is_transformers_render(i):
    from saejobs.engine import chat, models

    tok = models.byte_tokenizer()
    for messages in (CONVERSATION, [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                                    {"role": "user", "content": "Write one sentence."}]):
        conv = chat.conversation(messages)
        ours = chat.render(tok, conv, FIDELITY[i])
        theirs = tok.apply_chat_template(chat.for_render(conv), chat_template=FIDELITY[i], tokenize=False,
                                         add_generation_prompt=True)
        assert ours == theirs


def test_bad_limits_are_one_line(home, tmp_path):
    for name, value in (("SAEJOBS_CHAT_MAX_CHARS", "lots"), ("SAEJOBS_CHAT_RENDER_S", "0")):
        chats, tpl = tmp_path / "chats.json", tmp_path / "template.jinja"
        chats.write_text(json.dumps([CONVERSATION]))
        tpl.write_text(GEMMA.read_text())
        res = saejobs("sweep", "--sae", "gemma-3-270m/5-gemmascope-2-res-16k", "--feature", "1", "--strength", "5",
                      "--chat", str(chats), "--chat-template", str(tpl), env={name: value})
        assert name in one_clean_line(res, 2)
