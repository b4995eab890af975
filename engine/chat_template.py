"""Chat templates rendered as transformers renders them, but bounded in output size and in time. Torch-free.

A chat template is Jinja run in a sandbox: the sandbox keeps it from Python's internals, not from
producing 20 million characters (``{{ "x" * 20000000 }}``) or from looping for ever (two nested
``range(100000)``). Here the environment is transformers' own (``utils/chat_template_utils.py``,
``_cached_compile_jinja_template``: ``ImmutableSandboxedEnvironment(trim_blocks, lstrip_blocks)`` with
``loopcontrols`` and the ``{% generation %}`` tag, the ``tojson`` filter, ``raise_exception``,
``strftime_now``, ``dict``, ``namespace``; rendered with ``messages``, ``tools``, ``documents``,
``add_generation_prompt`` and the tokenizer's special tokens, as ``apply_chat_template`` renders it), so
a template renders to the same text, plus:

- **size**: every operation that can multiply a value's size is checked *before* it runs — ``*``,
  ``**``, ``+``, ``%``, ``~``, calls (their arguments and ``str`` methods that pad, replace, join,
  format or translate), the filters that do (``center``, ``indent``, ``format``, ``join``, ``replace``,
  ``batch``, ``tojson``, ``string``, ``pprint``), what a ``namespace`` keeps and what is output —
  against ``SAEJOBS_CHAT_MAX_CHARS`` (1,000,000 characters), and the output is counted as it is
  produced: more is refused, with one line (exit 2), before the memory is taken;
- **time**: the render runs under a trace function that stops it past ``SAEJOBS_CHAT_RENDER_S``
  (5 s); it raises a ``BaseException``, so no ``except Exception`` on the way can swallow it;
- **one file**: ``include``, ``import``, ``from ... import`` and ``extends`` are refused by name (there
  is nothing to load them from: transformers fails them with an internal ``TypeError``).

Every failure is a ``UsageError``: one line, exit 2.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import sys
import threading
import time
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.utils
from jinja2.compiler import CodeGenerator
from jinja2.sandbox import ImmutableSandboxedEnvironment

from saejobs.engine.errors import UsageError

MAX_CHARS = 1_000_000
RENDER_SECONDS = 5.0
_LOADS = {jinja2.nodes.Include: "include", jinja2.nodes.Import: "import", jinja2.nodes.FromImport: "from ... import",
          jinja2.nodes.Extends: "extends"}
_WIDE = re.compile(r"\d{7,}")  # a width or precision of a million or more in a format string


def max_chars() -> int:
    return _positive("SAEJOBS_CHAT_MAX_CHARS", MAX_CHARS, int)


def render_seconds() -> float:
    return _positive("SAEJOBS_CHAT_RENDER_S", RENDER_SECONDS, float)


def _positive(name: str, default, kind):
    raw = os.environ.get(name)
    try:
        value = kind(raw) if raw else default
    except ValueError:
        value = -1
    if not value > 0:
        raise UsageError(f"{name} must be a positive number, not {raw!r}")
    return value


class TemplateLimit(UsageError):
    """The template went past a bound (size, time) or reached for another file."""


class _OutOfTime(BaseException):
    """Raised by the trace function; a BaseException so that no ``except Exception`` in the render path
    (Jinja's compile-time constant folding catches every Exception) can swallow it."""


_limit = threading.local()  # the render in progress on this thread: its character cap


def _cap() -> int:
    return getattr(_limit, "cap", MAX_CHARS)


def _too_big(what: str) -> TemplateLimit:
    return TemplateLimit(f"the chat template would produce more than {_cap()} characters ({what}); "
                         "SAEJOBS_CHAT_MAX_CHARS sets the limit")


def _size(obj: Any, budget: int, depth: int = 0) -> int:
    """About how many characters ``obj`` is as text, counted only until it passes ``budget``."""
    if isinstance(obj, str):
        return len(obj)
    if isinstance(obj, bool) or obj is None:
        return 5
    if isinstance(obj, (int, float)):
        return len(repr(obj))  # ints are held to a few thousand digits by ** (and by Python)
    if isinstance(obj, (list, tuple, set, frozenset, dict, jinja2.utils.Namespace)):
        if depth > 100:
            raise _too_big("nesting deeper than 100")
        items = obj.items() if isinstance(obj, dict) else object.__getattribute__(obj, "_Namespace__attrs").items() \
            if isinstance(obj, jinja2.utils.Namespace) else obj
        pairs, total = isinstance(obj, (dict, jinja2.utils.Namespace)), 2
        for item in items:
            left = budget - total
            total += 2 + (_size(item[0], left, depth + 1) + _size(item[1], left, depth + 1) if pairs
                          else _size(item, left, depth + 1))
            if total > budget:
                return total
        return total
    return 16


def _check(obj: Any, what: str) -> Any:
    if _size(obj, _cap()) > _cap():
        raise _too_big(what)
    return obj


def _check_width(width: Any, what: str) -> None:
    if isinstance(width, int) and width > _cap():
        raise _too_big(what)


def _check_format(fmt: Any, args: Any, what: str) -> None:
    """printf-style and str.format widths: a million or more, or a ``*`` width given a huge number."""
    if isinstance(fmt, str):
        if _WIDE.search(fmt):
            raise _too_big(f"{what} with a width of a million or more")
        if "*" in fmt:
            for a in args if isinstance(args, (tuple, list)) else (args,):
                _check_width(a, what)
    _check(args, what)


class _Codegen(CodeGenerator):
    """``a ~ b`` joins through the environment's bounded ``concat`` instead of an unchecked ``str_join``
    (only the non-autoescaping path is ever taken: chat templates render text)."""

    def visit_Concat(self, node: jinja2.nodes.Concat, frame) -> None:
        if frame.eval_ctx.volatile or frame.eval_ctx.autoescape:
            return super().visit_Concat(node, frame)
        self.write("concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class _Generation(jinja2.ext.Extension):
    """transformers' ``{% generation %}`` tag: renders its body (the assistant-mask tracking is not
    needed here: saejobs renders prompts, never training masks)."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller):
        return caller()


class _Namespace(jinja2.utils.Namespace):
    """transformers' ``TemplateNamespace`` (no underscore names), and what it keeps is size-checked: a
    namespace is the one place a value can grow across loop iterations."""

    def __init__(*args, **kwargs):
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name, value in attrs.items():
            _Namespace._check_name(name)
            _check(value, "a namespace value")
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name, value):
        _Namespace._check_name(name)
        _check(value, f"namespace value {name!r}")
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check_name(name):
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(
                f"Chat templates cannot store underscore-prefixed attributes on a namespace, but got {name!r}.")


class _TemplateDict:
    """transformers' ``dict`` global: a limited stand-in, so no attribute of the real type is reachable."""

    def __call__(self, *args, **kwargs):
        return dict(*args, **kwargs)

    def fromkeys(self, *args, **kwargs):
        return dict.fromkeys(*args, **kwargs)


def _raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def _strftime_now(fmt):
    return datetime.now().strftime(fmt)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    _check(x, "tojson")
    if isinstance(indent, int) and indent > 64 or isinstance(indent, str) and len(indent) > 64:
        raise _too_big("tojson with an indent over 64")
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _bounded_filters(filters: dict) -> dict:
    """The filters that can make a value much larger than their input, checked first."""
    f = dict(filters)

    def wrap(name, check):
        inner = f[name]

        @functools.wraps(inner)  # keeps jinja_pass_arg (pass_eval_context, ...): Jinja calls it as before
        def checked(*args, **kwargs):
            check(*[a for a in args if not isinstance(a, (jinja2.nodes.EvalContext, jinja2.Environment))], **kwargs)
            return inner(*args, **kwargs)
        f[name] = checked

    wrap("center", lambda value, width=80: _check_width(width, "center"))
    wrap("indent", lambda s, width=4, *a, **k: _check_width(
        (len(width) if isinstance(width, str) else width) * (str(s).count("\n") + 1), "indent"))
    wrap("format", lambda value, *args, **kwargs: _check_format(value, args or kwargs, "format"))
    wrap("replace", lambda s, old, new, count=None: _check_replace(s, old, new, "replace"))
    wrap("batch", lambda value, linecount, fill_with=None: _check_width(linecount, "batch"))
    wrap("string", lambda value: _check(value, "string"))
    wrap("pprint", lambda value: _check(value, "pprint"))
    f["tojson"] = _tojson
    inner_join = f["join"]

    @jinja2.pass_eval_context
    def join(eval_ctx, value, d="", attribute=None):  # the items counted first (a generator made a list)
        items = value if isinstance(value, (str, list, tuple)) else list(value)
        _check_join(d, items, "join")
        return inner_join(eval_ctx, items, d, attribute)

    f["join"] = join
    return f


def _check_replace(s: Any, old: Any, new: Any, what: str) -> None:
    if isinstance(s, str) and isinstance(old, str) and isinstance(new, str) and len(new) > len(old):
        n = len(s) + 1 if old == "" else s.count(old)
        if len(s) + n * (len(new) - len(old)) > _cap():
            raise _too_big(what)


def _check_join(sep: Any, items: Any, what: str) -> None:
    _check(items, what)
    if isinstance(sep, str) and isinstance(items, (list, tuple)) and len(sep) * max(len(items) - 1, 0) > _cap():
        raise _too_big(what)


_STR_CHECKS = {
    "center": lambda s, width=0, *a: _check_width(width, "str.center"),
    "ljust": lambda s, width=0, *a: _check_width(width, "str.ljust"),
    "rjust": lambda s, width=0, *a: _check_width(width, "str.rjust"),
    "zfill": lambda s, width=0: _check_width(width, "str.zfill"),
    "expandtabs": lambda s, tabsize=8: _check_width((tabsize if isinstance(tabsize, int) else 8) * s.count("\t"),
                                                    "str.expandtabs"),
    "replace": lambda s, old="", new="", *a: _check_replace(s, old, new, "str.replace"),
    "join": lambda s, items=(): _check_join(s, items, "str.join"),
    "format": lambda s, *args, **kwargs: _check_format(s, (args, kwargs), "str.format"),
    "format_map": lambda s, mapping=None: _check_format(s, mapping, "str.format_map"),
    "translate": lambda s, table=None: _check_width(
        len(s) * max([len(v) for v in table.values() if isinstance(v, str)] or [1]) if isinstance(table, dict) else 0,
        "str.translate"),
}


_JINJA_KWARGS = ("_loop_vars", "_block_vars")  # what Jinja itself passes along with a call inside a loop or block


class BoundedEnvironment(ImmutableSandboxedEnvironment):
    """transformers' chat-template environment with every size-multiplying step checked."""

    code_generator_class = _Codegen
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self):
        super().__init__(trim_blocks=True, lstrip_blocks=True, extensions=[_Generation, jinja2.ext.loopcontrols])
        self.filters = _bounded_filters(self.filters)
        self.filters["tojson"] = _tojson
        self.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now, dict=_TemplateDict(),
                            namespace=_Namespace)
        self.finalize = self._output  # every {{ ... }} passes here before it becomes text

    @staticmethod
    def _output(value):
        return _check(value, "an output")

    def concat(self, pieces) -> str:  # the output, block sets, macro bodies and ``~``: counted as they come
        cap, total, out = _cap(), 0, []
        for piece in pieces:
            if not isinstance(piece, str):
                piece = str(_check(piece, "a joined value"))
            total += len(piece)
            if total > cap:
                raise _too_big("the rendered text")
            out.append(piece)
        return "".join(out)

    def call_binop(self, context, operator, left, right):
        cap = _cap()
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and n > 0 and \
                        _size(seq, cap) * n > cap:
                    raise _too_big(f"a value repeated {n} times")
        elif operator == "**":
            if isinstance(left, int) and isinstance(right, int) and abs(left) > 1 and \
                    right * math.log2(abs(left)) > 100_000:
                raise _too_big(f"{left} ** {right}")
        elif operator == "+":
            if isinstance(left, (str, list, tuple)) and isinstance(right, (str, list, tuple)) and \
                    _size(left, cap) + _size(right, cap) > cap:
                raise _too_big("a sum of two values")
        elif operator == "%" and isinstance(left, str):
            _check_format(left, right, "a % format")
        return super().call_binop(context, operator, left, right)

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 (Jinja's own spelling)
        given = {k: v for k, v in kwargs.items() if k not in _JINJA_KWARGS}
        method = getattr(__obj, "__wrapped__", __obj)  # str.format arrives wrapped by the sandbox
        if isinstance(getattr(method, "__self__", None), str) and method.__name__ in _STR_CHECKS:
            if method.__name__ == "join" and args and not isinstance(args[0], (str, list, tuple)):
                args = (list(args[0]), *args[1:])  # a generator's items, counted before they are joined
            _STR_CHECKS[method.__name__](method.__self__, *args, **given)
        for a in (*args, *given.values()):
            _check(a, "a call's argument")
        return _check(super().call(__context, __obj, *args, **kwargs), "a call's result")


def check_self_contained(template: str, where: str = "the chat template") -> jinja2.nodes.Template:
    """The parsed template; one that loads another file is refused by name and line."""
    env = BoundedEnvironment()
    try:
        ast = env.parse(template)
    except jinja2.TemplateSyntaxError as e:
        raise UsageError(f"{where}: not a Jinja template ({e.message} at line {e.lineno})") from None
    for kind, name in _LOADS.items():
        for node in ast.find_all(kind):
            raise TemplateLimit(f"{where} uses {{% {name} %}} (line {node.lineno}): a chat template must be one "
                                "self-contained file; nothing is loaded from elsewhere")
    return ast


@functools.lru_cache(maxsize=16)
def _compiled(template: str) -> jinja2.Template:
    check_self_contained(template)
    return BoundedEnvironment().from_string(template)


def render(template: str, messages: list[dict], special_tokens: dict[str, str] | None = None) -> str:
    """``template`` rendered as ``apply_chat_template(messages, tokenize=False, add_generation_prompt=True)``
    renders it, within ``max_chars()`` characters and ``render_seconds()`` seconds."""
    cap, seconds = max_chars(), render_seconds()
    deadline = time.monotonic() + seconds

    def tracer(frame, event, arg):
        if time.monotonic() > deadline:
            raise _OutOfTime
        return tracer

    previous, _limit.cap = sys.gettrace(), cap
    sys.settrace(tracer)
    try:
        return _compiled(template).render(messages=messages, tools=None, documents=None, add_generation_prompt=True,
                                          **(special_tokens or {}))
    except _OutOfTime:
        raise TemplateLimit(f"the chat template did not finish rendering in {seconds:g} s (does it loop?); "
                            "SAEJOBS_CHAT_RENDER_S sets the limit") from None
    except RecursionError:
        raise TemplateLimit("the chat template recursed too deeply (a macro calling itself without end?)") from None
    except MemoryError:
        raise _too_big("out of memory") from None
    finally:
        sys.settrace(previous)
        _limit.cap = MAX_CHARS
