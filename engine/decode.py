"""The model's forward passes for one chunk: the prompt's, then one token per row per step.

Two ways to run them, with one meaning (left padding masked out of attention, positions counting real
tokens only, a row that has stopped masked from the step it stopped):

- ``DynamicDecoder``: transformers' growing ``DynamicCache`` and the 2-D mask it turns into an additive one
  each step. Every step has new shapes, so every step is launched kernel by kernel from Python: ~2,000
  launches a step for Gemma 2 2B, about 40 ms of host time on an H200's host, whatever the rows.
- ``StaticDecoder``: a ``StaticCache`` sized prompt + tokens, and the additive 4-D masks transformers' eager
  attention builds (0 where a key is seen, the dtype's minimum where not), preallocated and updated in place;
  ids and positions are static buffers too. Each decode step then has the same shapes and addresses, so on
  CUDA it is captured once per chunk as a CUDA graph and replayed: one launch. The steering hooks run inside
  the captured step on the chunk's own tensors. ``graph_pays`` says where (CUDA, up to 512 rows: measured).

Attention over the static cache's full length (the unused tail masked) rounds differently from the growing
cache's (seen on a CPU in float32: logits within 2e-7), just as a row beside longer prompts in a batch does
(its padding masked): tokens are what must agree, and the fidelity cases and bench/gpu.py hold them to
interp-engine's. Each model, device and dtype is also checked once (``static_matches``): a short greedy run
of both on left-padded random prompts must choose the same tokens, else the growing cache stays (a
transformers whose cache or masks mean something else). The CUDA graph is checked once per model and device
too: its replay of a step must give the eager step's logits bit for bit, else steps run eagerly.
``SAEJOBS_CUDA_GRAPHS=0`` (``saejobs worker --no-cuda-graphs``) turns graphs, and so the static cache, off.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator
from weakref import WeakKeyDictionary

import torch

MIN_GRAPH_STEPS = 4  # fewer decode steps than this: capturing costs more than it saves
GRAPH_MAX_ROWS = 512  # more rows: the GPU, not the host, bounds a step (graph_pays)
HEAD_SLICE = 2048  # words per slice of the output projection in a CPU decode step (sliced_head)


def cache_argument(model) -> str:
    """The name the model's forward takes its cache by (transformers renames ``past_key_values`` to ``cache``);
    the class's own signature: an instance's forward may be wrapped (a test's, a profiler's) as *args/**kwargs."""
    import inspect

    return "cache" if "cache" in inspect.signature(type(model).forward).parameters else "past_key_values"


def graphs_enabled() -> bool:
    return os.environ.get("SAEJOBS_CUDA_GRAPHS", "1") != "0"


def static_enabled() -> bool:
    """``SAEJOBS_STATIC_CACHE=0``: the growing cache everywhere (bench/gpu.py's reruns that classify a bf16
    difference use it: a row alone on the growing cache is what interp-engine runs)."""
    return os.environ.get("SAEJOBS_STATIC_CACHE", "1") != "0"


class DynamicDecoder:
    """transformers' growing cache: new shapes every step, each step launched from Python."""

    def __init__(self, model, cache_arg: str, input_ids: torch.Tensor, mask: torch.Tensor, n: int, room: int = 0):
        """``room`` is ``StaticDecoder``'s; a growing cache has room for every token fed."""
        self.model, self.cache_arg = model, cache_arg
        self.ids, self.mask = input_ids, mask
        self.positions = position_ids(mask)
        self.cache = None

    def prompt(self) -> torch.Tensor:
        with contiguous_head(self.model), sliced_head(self.model):
            res = self.model(input_ids=self.ids, attention_mask=self.mask, position_ids=self.positions,
                             use_cache=True, logits_to_keep=1)
        self.cache = getattr(res, self.cache_arg)
        return res.logits[:, -1, :]

    def step(self, step: int, nxt: torch.Tensor, done: torch.Tensor, eager: bool = False) -> torch.Tensor:
        """Feed ``nxt`` (B,) (a stopped row's already replaced by padding), the ``step``-th generated token
        (always eagerly here)."""
        self.mask = torch.cat([self.mask, (~done).long()[:, None]], dim=1)
        self.positions = self.positions[:, -1:] + 1
        with sliced_head(self.model):
            res = self.model(input_ids=nxt[:, None], attention_mask=self.mask, position_ids=self.positions,
                             use_cache=True, logits_to_keep=1, **{self.cache_arg: self.cache})
        self.cache = getattr(res, self.cache_arg)
        return res.logits[:, -1, :]


class StaticDecoder:
    """A static cache, masks, ids and positions updated in place; with ``graph``, each decode step after the
    first replayed as a CUDA graph captured in this chunk."""

    def __init__(self, model, cache_arg: str, input_ids: torch.Tensor, mask: torch.Tensor, n: int,
                 graph: bool = False, room: int = 0):
        """``room``: slots past the ``n - 1`` fed tokens (1: the last token is fed too, by a final eager step)."""
        from transformers import StaticCache

        self.model, self.cache_arg, self.n = model, cache_arg, n
        B, P = input_ids.shape
        self.P, self.L = P, P + max(n - 1, 0) + room
        dtype = next(model.parameters()).dtype
        self.neg = torch.finfo(dtype).min
        self.cache = StaticCache(config=model.config, max_cache_len=self.L)
        self.prompt_ids = input_ids
        self.ids = torch.zeros((B, 1), dtype=torch.long, device=input_ids.device)
        self.positions = position_ids(mask)
        self.pos = self.positions[:, -1:].clone()
        seen = torch.zeros((B, 1, 1, self.L), dtype=torch.bool, device=mask.device)
        seen[:, 0, 0, :P] = mask.bool()
        self.seen = seen  # which keys each row's next query sees
        self.step_mask = additive_mask(seen, dtype)
        self.masks = _layer_masks(self.step_mask)
        self.graph = graph
        self._graph = None  # torch.cuda.CUDAGraph once captured
        self._out: torch.Tensor | None = None

    def prompt(self) -> torch.Tensor:
        P, dtype = self.P, self.step_mask.dtype
        causal = torch.ones((P, self.L), dtype=torch.bool, device=self.seen.device).tril()
        seen = causal[None, None] & self.seen  # (B, 1, P, L): causal, and never a padding key
        with contiguous_head(self.model), sliced_head(self.model):
            res = self.model(input_ids=self.prompt_ids, attention_mask=_layer_masks(additive_mask(seen, dtype)),
                             position_ids=self.positions, use_cache=True, logits_to_keep=1,
                             **{self.cache_arg: self.cache})
        return res.logits[:, -1, :]

    def _forward(self) -> torch.Tensor:
        with sliced_head(self.model):  # a CPU's: on CUDA, where steps are captured, the head is left as it is
            return self.model(input_ids=self.ids, attention_mask=self.masks, position_ids=self.pos, use_cache=True,
                              logits_to_keep=1, **{self.cache_arg: self.cache}).logits

    def step(self, step: int, nxt: torch.Tensor, done: torch.Tensor, eager: bool = False) -> torch.Tensor:
        """Feed ``nxt``, the ``step``-th generated token, at its slot; ``eager``: run it eagerly, not replayed."""
        slot = self.P + step
        self.ids.copy_(nxt[:, None])
        self.pos.add_(1)
        self.step_mask[:, 0, 0, slot] = torch.where(done, self.neg, 0.0).to(self.step_mask.dtype)
        if eager or not self.graph or self.n - 1 < MIN_GRAPH_STEPS:
            return self._forward()[:, -1, :]
        if self._graph is None:
            return self._capture()
        self._graph.replay()
        return self._out[:, -1, :]

    def _capture(self) -> torch.Tensor:
        """Capture this decode step and replay it. The first time for a model and device, the step runs
        eagerly first and the replay, rewound onto the same cache slot, must give its logits bit for bit;
        else graphs stay off there (and the slot is rewritten eagerly)."""
        verdicts = _GRAPH_OK.setdefault(self.model, {})
        key = str(self.ids.device)
        verdict = verdicts.get(key)
        if verdict is False:
            self.graph = False
            return self._forward()[:, -1, :]
        eager = None
        if verdict is None:
            eager = self._forward()[:, -1, :].clone()
            self._rewind()
        graph, self._out = capture_graph(self._forward)
        graph.replay()
        if verdict is None:
            verdicts[key] = verdict = bool(torch.equal(self._out[:, -1, :], eager))
            if not verdict:
                self.graph, self._out = False, None
                self._rewind()
                return self._forward()[:, -1, :]
        self._graph = graph
        return self._out[:, -1, :]

    def _rewind(self) -> None:
        """Step the cache back one token, so that the next forward rewrites the same slot."""
        for layer in self.cache.layers:
            layer.cumulative_length.sub_(1)
            if hasattr(layer, "cumulative_length_int"):
                layer.cumulative_length_int -= 1


@contextmanager
def contiguous_head(model) -> Iterator[None]:
    """The output projection fed a contiguous copy of its input inside the block. transformers slices the
    kept positions (``logits_to_keep``) out of a batch of longer sequences, a non-contiguous (B, k, d) view
    that ``F.linear`` multiplies as a batched matmul over B copies of the (vocab, d) weight: 274 ms for one
    1,024-row prompt pass of Gemma 2 2B on an H200, against 1.6 ms for a decode step's contiguous (1024, 2304)
    input. The copy is (B, k, d), the logits (B, k, vocab)."""
    head = model.get_output_embeddings()
    if head is None:
        yield
        return

    def contiguous(_module, args):
        return None if args[0].is_contiguous() else (args[0].contiguous(), *args[1:])

    handle = head.register_forward_pre_hook(contiguous)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def sliced_head(model) -> Iterator[None]:
    """Inside the block, the output projection computed ``HEAD_SLICE`` words at a time into one logits tensor
    (a plain ``nn.Linear`` head on a CPU; anything else as it is). Each logit is the same product over the
    same ``d`` either way (test: equal to ``F.linear``'s). On two of three 2-core machines measured, one
    (rows, d) × (d, 262,144) product ran slower than its 2,048-word slices: Gemma 3 270M's head over 34 rows,
    165 → 121 ms a step on an AMD EPYC (the head is about half of a CPU decode step; bench/score.py's first
    grid generates in 8.5-9.0 s instead of 9.6-10.1), 151 → 93-125 ms on another; equal on the third."""
    head = model.get_output_embeddings()
    if type(head) is not torch.nn.Linear or head.weight.device.type != "cpu":
        yield
        return
    w, bias, words, own = head.weight, head.bias, HEAD_SLICE, head.__dict__.get("forward")

    def forward(x: torch.Tensor) -> torch.Tensor:
        if x.dtype != w.dtype or (torch.is_grad_enabled() and (w.requires_grad or x.requires_grad)):
            return torch.nn.functional.linear(x, w, bias)  # as the head would (an error, or a graph to keep)
        flat = x.reshape(-1, x.shape[-1])
        out = torch.empty((flat.shape[0], w.shape[0]), dtype=x.dtype)
        for v0 in range(0, w.shape[0], words):
            torch.mm(flat, w[v0:v0 + words].T, out=out[:, v0:v0 + words])
        if bias is not None:
            out += bias
        return out.reshape(*x.shape[:-1], w.shape[0])

    head.forward = forward
    try:
        yield
    finally:
        if own is None:
            del head.forward
        else:
            head.forward = own


def position_ids(mask: torch.Tensor) -> torch.Tensor:
    """Each column's position in its left-padded row, counting real tokens only (padding at 0): a row's logits
    then do not depend on how much its neighbours pad it."""
    return (mask.cumsum(-1) - 1).clamp_min(0)


def additive_mask(seen: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """What attention adds to its scores: 0 where a query may see a key, the dtype's most negative value where
    it may not (a 4-D mask in this form is what transformers' attention takes as given)."""
    return torch.where(seen, torch.zeros((), dtype=dtype, device=seen.device), torch.finfo(dtype).min)


def _layer_masks(m: torch.Tensor) -> dict:
    """The 4-D mask for every layer type (transformers takes a prepared mask per type; within the sliding
    window, which ``static_fits`` requires, both are the causal mask)."""
    return {"full_attention": m, "sliding_attention": m}


def capture_graph(fn):
    """(a CUDA graph of ``fn``'s kernels, the tensor its replays write): capturing runs nothing."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph, out


# one-time verdicts per model object (held weakly: a model the engine cache drops takes its verdicts along)
_GRAPH_OK: WeakKeyDictionary = WeakKeyDictionary()  # model -> {device: replay equals the eager step}
_STATIC_OK: WeakKeyDictionary = WeakKeyDictionary()  # model -> {(device, dtype): same greedy tokens}


def static_fits(model, length: int) -> bool:
    """A static cache of ``length`` behaves as the growing one here: every layer's attention sees the whole
    sequence (no sliding window shorter than it) and transformers has the cache this module drives."""
    try:
        from transformers import StaticCache  # noqa: F401
    except ImportError:
        return False
    window = getattr(model.config.get_text_config(), "sliding_window", None)
    return window is None or length <= window


def decoder(model, cache_arg: str, input_ids: torch.Tensor, mask: torch.Tensor, n: int, room: int = 0):
    """The decoder for this chunk: static and graph-replayed where that pays (``graph_pays``) and the static
    cache is checked to choose the growing cache's tokens on this device and dtype, else the growing cache.
    ``room``: cache slots past the ``n - 1`` fed tokens (``StaticDecoder``)."""
    rows, width = input_ids.shape
    if (n > 1 and graph_pays(input_ids.device.type, rows) and static_fits(model, width + n - 1 + room)
            and static_matches(model, cache_arg)):
        return StaticDecoder(model, cache_arg, input_ids, mask, n, graph=True, room=room)
    return DynamicDecoder(model, cache_arg, input_ids, mask, n)


def graph_pays(device_type: str, rows: int) -> bool:
    """On CUDA, up to ``GRAPH_MAX_ROWS`` rows (graphs and the static cache not turned off). Measured on an H200
    (Gemma 2 2B, bf16, 32 tokens, ms per step, eager growing cache → graph-replayed static cache): 1 row 42.5 →
    9.3, 64 rows 51.7 → 11.7, 256 rows 30.9 → 19.0, but 1,024 rows 44.2 → 48.8 and 4,096 rows 148.6 → 182.2:
    with many rows the step is bound by the GPU, where attending over the whole static cache (transformers
    copies every key and value to each query head) costs more than launching from Python. On a CPU nothing
    is saved: no graphs, and the growing cache does less work."""
    return device_type == "cuda" and rows <= GRAPH_MAX_ROWS and graphs_enabled() and static_enabled()


def static_matches(model, cache_arg: str) -> bool:
    """Whether the static cache's eager steps choose the dynamic cache's greedy tokens for this model on its
    device and dtype: 4 left-padded random prompts, 6 steps, one stopped row; checked once."""
    param = next(model.parameters())
    verdicts = _STATIC_OK.setdefault(model, {})
    key = (str(param.device), param.dtype)
    if key not in verdicts:
        try:
            verdicts[key] = _compare(model, cache_arg, param.device)
        except Exception:  # noqa: BLE001 -- a transformers without this cache API: the growing cache stays
            verdicts[key] = False
    return verdicts[key]


@torch.no_grad()
def _compare(model, cache_arg: str, device) -> bool:
    g = torch.Generator().manual_seed(0)
    vocab = model.config.get_text_config().vocab_size  # as LoadedModel.config reads it
    B, P, n = 4, 7, 6
    ids = torch.randint(3, min(vocab, 1000), (B, P), generator=g)
    mask = torch.ones((B, P), dtype=torch.long)
    for b, pad in enumerate((0, 2, 5, 1)):
        mask[b, :pad] = 0
        ids[b, :pad] = 0
    ids, mask = ids.to(device), mask.to(device)
    runs = []
    for cls in (DynamicDecoder, StaticDecoder):
        d = cls(model, cache_arg, ids, mask, n)
        logits = [d.prompt()]
        done = torch.zeros(B, dtype=torch.bool, device=device)
        for step in range(n - 1):
            nxt = logits[-1].argmax(-1)
            done = done | (torch.arange(B, device=device) == 3) & (step >= 2)
            logits.append(d.step(step, torch.where(done, 0, nxt), done))
        runs.append(torch.stack(logits).argmax(-1))
    return bool(torch.equal(runs[0], runs[1]))
