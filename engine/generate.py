"""Batched generation on the model's device, in which every row produces exactly what it would alone.

Rows are left-padded; padding is masked out of attention and position ids count only real tokens,
so a row's logits do not depend on its neighbours. Logits never leave the device: greedy is one
batched ``argmax``; sampling draws what one ``torch.Generator`` per row on the logits' device, seeded with
the row's seed, draws: exactly what the reference's ``torch.manual_seed(seed)`` + one draw per step gives on
that device (``RowStreams``: rows of one seed share one draw; on CUDA all seeds in one kernel, where
``engine.philox`` is checked to match).
The forward passes (growing or static cache, CUDA graphs) are ``engine.decode``'s. Only token ids (and
requested logprobs) come to the host, once, at the end; which
rows have stopped is a device tensor. Two sampling semantics, recorded with each run, each computed
in the dtype the reference computes it in:

- ``transformerlens`` (Neuronpedia's TransformerLens-era server; TransformerLens 4.3
  ``utilities/logits_utils.py:sample_logits``): temperature 0 is argmax; otherwise ``logits /
  temperature`` in the logits' dtype, minus ``freq_penalty * bincount(tokens so far, prompt
  included)`` (rounded back to that dtype, as its in-place row assignment does), then ``float32`` and
  ``Categorical(logits=...).sample()``: ``logits - logsumexp``, softmax, ``torch.multinomial`` with
  replacement on a ``[1, vocab]`` tensor.
- ``interp-engine`` (Neuronpedia's server today; interp-engine 1.14 ``steer.py:_sample_next``), in
  the logits' own dtype: the presence penalty subtracted once from every token generated so far
  (not the prompt's), before the greedy shortcut; then ``/ temperature``, top-k, softmax, top-p, and
  ``torch.multinomial(probs, 1)`` on a ``[vocab]`` tensor.

Element-wise steps and the softmax run batched (they are per-row computations whatever the batch);
reductions whose order could depend on the batch shape (TransformerLens' ``logsumexp``, the top-p
sort and sum) run batched where, checked once per device, dtype and shape, that rounds (and sorts ties) as
the row alone does, else per row on a tensor shaped as the reference's, that loop replayed as one CUDA graph
per chunk on a GPU (``engine.row_graph``). The draw is ``torch.multinomial``'s
own algorithm for one sample (``argmax(probs / q)``, ``q ~ Exp(1)`` drawn from the row's generator in
a tensor shaped as the reference's), checked once per device and dtype against ``torch.multinomial``
itself; where they differ, each row calls ``torch.multinomial``.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from enum import StrEnum
from typing import Callable, Sequence

import torch

from saejobs.engine import philox
from saejobs.engine.decode import cache_argument, decoder
from saejobs.engine.hooks import PassEnded, hook
from saejobs.engine.residual import ResidualCapture
from saejobs.engine.row_graph import RowGraph, outputs_equal
from saejobs.engine.sampling import Sampling, SamplingSemantics  # noqa: F401 (Sampling re-exported)
SYNC_EVERY = 8  # off the CPU, look whether every row has stopped once per this many steps (one host sync)


@dataclass
class Row:
    prompt_ids: list[int]
    seed: int


@dataclass
class Generated:
    token_ids: list[int]  # generated tokens only (the EOS that stopped it included)
    logprobs: list[dict] | None = None  # per generated token: {"token", "logprob", "top": [[id, logprob], ...]}
    stopped_at_eos: bool = False
    stream: tuple[ResidualCapture, int] | None = None  # (the chunk's recorded stream, this row's index in it)


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    """The prompt's tokens with BOS first, added only when the text does not already start with it."""
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    if bos is not None and (not ids or ids[0] != bos):
        ids = [bos] + ids
    return ids


def output_text(tokenizer, prompt_ids_: list[int], generated: list[int]) -> str:
    """Prompt (without BOS) followed by the completion, as Neuronpedia returns ``output``."""
    ids = list(prompt_ids_)
    if ids and ids[0] == tokenizer.bos_token_id:
        ids = ids[1:]
    gen = [t for t in generated if t != tokenizer.eos_token_id]
    return tokenizer.decode(ids + gen, skip_special_tokens=False)


@torch.no_grad()
def generate(lm, rows: list[Row], sampling: Sampling, *, on_step: Callable[[int, int], None] | None = None,
             steering: dict[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
             record_at: str | None = None, unsteered: Sequence[int] = ()) -> list[Generated]:
    """Generate for all rows in one batch; each of ``steering``'s functions edits the activation at its
    hook (several hooks: several layers). ``record_at``: record the unsteered stream at that hook (a
    ``residual.record_point``: no steering hook below it) for scoring; each row's ``Generated.stream`` holds it,
    and for the rows listed in ``unsteered`` (no steering term) each step's log-probability of the token chosen.

    ``on_step(step, n_tokens)`` is called on the host after each step is queued (it never waits for
    the device), so a caller can report progress or stop a long chunk.
    """
    model, tok = lm.model, lm.tokenizer
    device = next(model.parameters()).device
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    eos = tok.eos_token_id  # the tokenizer's EOS only, as both references
    B, n = len(rows), sampling.n_tokens
    input_ids, mask = _left_padded(rows, pad, device)
    choose = TokenSampler(rows, sampling, lm.config.vocab_size, device, input_ids, mask)
    tokens = torch.full((B, n), pad, dtype=torch.long, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    k = sampling.n_logprobs
    chosen_lp = torch.zeros((B, n), dtype=torch.float32, device=device) if k else None
    top_lp = torch.zeros((B, n, k), dtype=torch.float32, device=device) if k else None
    top_ids = torch.zeros((B, n, k), dtype=torch.long, device=device) if k else None
    sync_every = 1 if device.type == "cpu" else SYNC_EVERY

    cache_arg = cache_argument(model)
    # before the hooks: its one-time check runs the model; a recorded stream needs a slot for the last token
    dec = decoder(model, cache_arg, input_ids, mask, n, room=int(record_at is not None))
    rec = None if record_at is None else ResidualCapture(lm, record_at, B, input_ids.shape[1], n, device,
                                                         next(model.parameters()).dtype, unsteered)

    ran = 0
    with ExitStack() as hooks:
        if rec is not None:  # first: a steering hook at the same point runs after it
            hooks.enter_context(hook(lm, rec.hook_name, rec.record))
        for name, fn in (steering or {}).items():
            hooks.enter_context(hook(lm, name, fn))
        logits = dec.prompt()
        for step in range(n):
            plain = None if rec is None else rec.plain_logits(logits)
            nxt = choose(logits)
            tokens[:, step] = nxt
            if rec is not None:
                rec.note(step, plain, nxt)
            if k:
                lp = torch.log_softmax(logits.float(), dim=-1)
                chosen_lp[:, step] = lp.gather(1, nxt[:, None])[:, 0]
                top = torch.topk(lp, k, dim=-1)
                top_lp[:, step], top_ids[:, step] = top.values, top.indices
            choose.update_penalties(nxt)
            ran = step + 1
            if eos is not None:
                done |= nxt == eos
            if on_step is not None:
                on_step(ran, n)
            if step == n - 1 or (eos is not None and ran % sync_every == 0 and bool(done.all())):
                break
            logits = dec.step(step, torch.where(done, torch.full_like(nxt, pad), nxt), done)
            if rec is not None:
                rec.advance()
        if rec is not None and ran == n:  # the last token's stream: the layers below the recorded one only
            rec.last = True
            try:
                dec.step(n - 1, torch.where(done, torch.full_like(nxt, pad), nxt), done, eager=True)
            except PassEnded:
                pass
    out = _collect(tokens[:, :ran], eos, chosen_lp, top_lp, top_ids, ran)
    if rec is not None:
        for b, g in enumerate(out):
            g.stream = (rec, b)
    return out


def _left_padded(rows: list[Row], pad: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask) built on the host and moved to the device once."""
    width = max(len(r.prompt_ids) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, width - len(r.prompt_ids):] = torch.tensor(r.prompt_ids)
        mask[b, width - len(r.prompt_ids):] = 1
    return ids.to(device), mask.to(device)


def _collect(tokens, eos, chosen_lp, top_lp, top_ids, ran) -> list[Generated]:
    """One copy to the host; each row cut after its first EOS."""
    ids = tokens.cpu().tolist()
    lps = None if chosen_lp is None else (chosen_lp[:, :ran].cpu().tolist(), top_lp[:, :ran].cpu().tolist(),
                                          top_ids[:, :ran].cpu().tolist())
    out = []
    for b, row in enumerate(ids):
        stop = row.index(eos) + 1 if eos is not None and eos in row else len(row)
        logprobs = None
        if lps is not None:
            logprobs = [{"token": row[i], "logprob": lps[0][b][i],
                         "top": [[t, v] for t, v in zip(lps[2][b][i], lps[1][b][i])]} for i in range(stop)]
        out.append(Generated(row[:stop], logprobs, stopped_at_eos=eos is not None and eos in row))
    return out


class TokenSampler:
    """The next token of every row, on the device: per-step state (penalties) and per-row generators."""

    def __init__(self, rows: list[Row], s: Sampling, vocab: int, device: torch.device, input_ids: torch.Tensor,
                 mask: torch.Tensor):
        self.s = s
        self.interp = s.sampling_semantics == SamplingSemantics.INTERP_ENGINE
        sampled = s.temperature > 0
        self.gens = RowStreams([int(r.seed) for r in rows], device) if sampled else None
        self.counts = None  # TransformerLens: tokens so far (prompt included), float32
        self.seen = None  # interp-engine: tokens generated so far
        if not self.interp and sampled and s.freq_penalty:
            self.counts = torch.zeros((len(rows), vocab), dtype=torch.float32, device=device)
            self.counts.scatter_add_(1, input_ids, mask.to(torch.float32))
        if self.interp and s.presence_penalty:
            self.seen = torch.zeros((len(rows), vocab), dtype=torch.bool, device=device)
        # a reduction that must run row by row: that loop replayed as one CUDA graph per chunk on a GPU
        self.row_loops = {op: RowGraph(op.value, lambda x, _op=op: row_by_row(_op, x)) for op in Reduction}

    def reduce(self, op: Reduction, x: torch.Tensor):
        """``op`` on every row of ``x``, each row's result what the reference computes on that row alone."""
        return batched(op, x) if _batch_rounds_as_rows(op, x) else self.row_loops[op](x)

    def update_penalties(self, nxt: torch.Tensor) -> None:
        if self.counts is not None:
            self.counts.scatter_add_(1, nxt[:, None], torch.ones_like(nxt[:, None], dtype=torch.float32))
        if self.seen is not None:
            self.seen.scatter_(1, nxt[:, None], True)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        return self._interp_engine(logits) if self.interp else self._transformerlens(logits)

    def _transformerlens(self, logits: torch.Tensor) -> torch.Tensor:
        s = self.s
        if s.temperature == 0:
            return logits.argmax(dim=-1)
        x = logits / s.temperature
        if self.counts is not None:
            x = (x - s.freq_penalty * self.counts).to(x.dtype)
        x = x.to(torch.float32)
        probs = torch.softmax(x - self.reduce(Reduction.LOGSUMEXP, x), dim=-1)
        return draw(probs, self.gens, as_2d=True)

    def _interp_engine(self, logits: torch.Tensor) -> torch.Tensor:
        s = self.s
        x = logits
        if self.seen is not None:  # `out[ids] -= penalty`: the same rounding as an element-wise subtraction
            x = torch.where(self.seen, x - s.presence_penalty, x)
        if s.temperature <= 0:
            return x.argmax(dim=-1)
        x = x / s.temperature
        if s.top_k:
            kth = torch.topk(x, s.top_k, dim=-1).values[..., -1, None]
            x = torch.where(x < kth, torch.full_like(x, float("-inf")), x)
        probs = torch.softmax(x, dim=-1)
        if not (s.top_p and s.top_p < 1.0):
            return draw(probs, self.gens, as_2d=False)
        sorted_probs, sorted_idx = nucleus(probs, s.top_p, self.reduce)
        return sorted_idx.gather(-1, draw(sorted_probs, self.gens, as_2d=False)[:, None])[:, 0]


class Reduction(StrEnum):
    """Sampling's reductions whose rounding (or order among ties) may depend on the batch's shape. Each has a
    batched form and the form the reference runs on one row (``_FORMS``); which one runs is checked once per
    device, dtype and shape (``_batch_rounds_as_rows``). To add one: a member here and its two forms in
    ``_FORMS``."""

    LOGSUMEXP = "logsumexp"  # TransformerLens' Categorical, on [1, V]
    SORT = "sort"  # interp-engine's top-p, on [V]: values descending, and their token ids
    CUMSUM = "cumsum"  # top-p's running total of the sorted probabilities
    SUM = "sum"  # top-p's renormalising total of what the nucleus keeps


_FORMS: dict[Reduction, tuple[Callable, Callable]] = {  # (batched over (B, V), one row as the reference shapes it)
    Reduction.LOGSUMEXP: (lambda x: x.logsumexp(dim=-1, keepdim=True), lambda x, b: x[b:b + 1].logsumexp(-1, keepdim=True)),
    Reduction.SORT: (lambda x: torch.sort(x, dim=-1, descending=True), lambda x, b: torch.sort(x[b], descending=True)),
    Reduction.CUMSUM: (lambda x: torch.cumsum(x, dim=-1), lambda x, b: torch.cumsum(x[b], dim=-1)),
    Reduction.SUM: (lambda x: x.sum(dim=-1, keepdim=True), lambda x, b: x[b].sum()[None]),
}


def batched(op: Reduction, x: torch.Tensor):
    return _FORMS[op][0](x)


def row_by_row(op: Reduction, x: torch.Tensor):
    """``op`` on each row alone, stacked: what the reference computes for each row, (B, ...) as ``batched``."""
    rows = [_FORMS[op][1](x, b) for b in range(x.shape[0])]
    if isinstance(rows[0], tuple):
        return tuple(torch.stack(parts) for parts in zip(*rows))
    return torch.cat(rows) if rows[0].dim() == 2 else torch.stack(rows)


def nucleus(probs: torch.Tensor, top_p: float, reduce: Callable = batched) -> tuple[torch.Tensor, torch.Tensor]:
    """interp-engine's top-p on each row ([V] alone: sort descending, cumsum, zero what lies past ``top_p``,
    renormalise): the sorted, renormalised probabilities and their token ids, (B, V) each. interp-engine
    assigns the zeros through a boolean index (a host sync); ``masked_fill`` writes the same zeros, and the
    element-wise steps round alike batched or not."""
    sorted_probs, sorted_idx = reduce(Reduction.SORT, probs)
    cum = reduce(Reduction.CUMSUM, sorted_probs)
    sorted_probs = sorted_probs.masked_fill(cum - sorted_probs > top_p, 0.0)
    return sorted_probs / reduce(Reduction.SUM, sorted_probs), sorted_idx


_BATCHED: dict[tuple, bool] = {}


def _batch_rounds_as_rows(op: Reduction, like: torch.Tensor) -> bool:
    """Whether ``batched(op)`` equals ``row_by_row(op)`` bit for bit for tensors shaped, typed and placed as
    ``like``: checked once per (op, device, dtype, shape) on random rows rich in ties (a reduction's order, and
    a sort's order among equal values, may depend on the shape), as the op meets them (logits for logsumexp,
    probabilities for the sort, sorted probabilities for cumsum and sum), so a kernel that rounds otherwise
    costs speed, not exactness."""
    key = (Reduction(op).value, str(like.device), like.dtype, tuple(like.shape))
    if key not in _BATCHED:
        g = torch.Generator().manual_seed(0)
        x = (torch.randn(like.shape, generator=g) * 4).round(decimals=1)  # many equal values
        if op != Reduction.LOGSUMEXP:
            x = torch.softmax(x, dim=-1)
            if op != Reduction.SORT:
                x = x.sort(dim=-1, descending=True).values
        x = x.to(device=like.device, dtype=like.dtype)
        _BATCHED[key] = outputs_equal(batched(op, x), row_by_row(op, x))
    return _BATCHED[key]


class RowStreams:
    """Each row's random stream, as ``torch.manual_seed(row.seed)`` starts it on the device. Rows of one seed
    draw the same noise at every step (each row draws once per step, all rows together), so the noise is drawn
    once per distinct seed and spread to the rows: a sweep's usual single seed costs one draw whatever the
    batch. Per distinct seed: a generator, or on CUDA, where ``engine.philox`` draws what those generators
    would (checked once per device, dtype and row length), one kernel for all seeds."""

    def __init__(self, seeds: list[int], device: torch.device):
        self.seeds, self.device = seeds, device
        self.distinct = list(dict.fromkeys(seeds))
        self._row_seed: torch.Tensor | None = None  # row -> its seed's noise, where seeds repeat among rows
        self._gens: list[torch.Generator] | None = None
        self._seed_gens: list[torch.Generator] | None = None
        self._noise: philox.RowNoise | None = None
        self.batched: bool | None = None  # decided at the first draw; a row's stream never changes path

    @property
    def gens(self) -> list[torch.Generator]:
        """One generator per row (``torch.multinomial``'s fallback draws from these)."""
        if self._gens is None:
            self._gens = [torch.Generator(device=self.device).manual_seed(s) for s in self.seeds]
        return self._gens

    def exponential(self, probs: torch.Tensor, as_2d: bool) -> torch.Tensor:
        """(B, V) ``Exp(1)`` noise, row b as ``exponential_`` on a [1, V] (``as_2d``) or [V] tensor from its
        generator (the same stream: the kernel sees numel V either way); (1, V), which broadcasts, for one seed."""
        like = probs[:len(self.distinct)]
        if self.batched is None:
            transform = philox.matching_transform(probs.device, probs.dtype, probs.shape[-1])
            self.batched = transform is not None
            if self.batched:
                self._noise = philox.RowNoise(self.distinct, probs.device, transform)
        if self.batched:
            q = self._noise.exponential(like)
        else:
            if self._seed_gens is None:
                self._seed_gens = [torch.Generator(device=self.device).manual_seed(s) for s in self.distinct]
            q = torch.empty_like(like)
            for d, g in enumerate(self._seed_gens):
                (q[d:d + 1] if as_2d else q[d]).exponential_(1, generator=g)
        return self._spread(q)

    def _spread(self, q: torch.Tensor) -> torch.Tensor:
        """Each row's seed's noise: ``q`` itself where seeds are distinct or there is one (it broadcasts, so one seed
        costs the same operators for any batch), else one gather."""
        if len(self.distinct) in (1, len(self.seeds)):
            return q
        if self._row_seed is None:
            at = {s: d for d, s in enumerate(self.distinct)}
            self._row_seed = torch.tensor([at[s] for s in self.seeds], device=q.device)
        return q.index_select(0, self._row_seed)


def draw(probs: torch.Tensor, streams: RowStreams, *, as_2d: bool) -> torch.Tensor:
    """One sample per row of ``probs`` (B, V) from row b's stream, as ``torch.multinomial`` draws it
    from a ``[1, V]`` (``as_2d``, with replacement: ``Categorical.sample``) or ``[V]`` tensor."""
    if _exponential_trick_holds(probs.device, probs.dtype):
        return _draw_exponential(probs, streams, as_2d)
    return _draw_multinomial(probs, streams.gens, as_2d)


def _draw_exponential(probs: torch.Tensor, streams: RowStreams, as_2d: bool) -> torch.Tensor:
    """``torch.multinomial``'s one-sample algorithm (PyTorch ``multinomial_out``): ``argmax(p / q)``,
    ``q ~ Exp(1)`` from each row's stream; the division and argmax batched."""
    return (probs / streams.exponential(probs, as_2d)).argmax(dim=-1)


def _draw_multinomial(probs: torch.Tensor, gens: list[torch.Generator], as_2d: bool) -> torch.Tensor:
    if as_2d:
        return torch.cat([torch.multinomial(probs[b:b + 1], 1, True, generator=g)[:, 0] for b, g in enumerate(gens)])
    return torch.cat([torch.multinomial(probs[b], 1, generator=g) for b, g in enumerate(gens)])


_TRICK: dict[tuple, bool] = {}


def _exponential_trick_holds(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether ``_draw_exponential`` reproduces ``torch.multinomial`` on this device and dtype: checked
    once (a few rows, seeds and consecutive draws), so a PyTorch that changes its algorithm costs
    speed, not exactness."""
    key = (str(device), dtype)
    if key not in _TRICK:
        cpu = torch.Generator().manual_seed(0)
        probs = torch.softmax(torch.randn((3, 4099), generator=cpu) * 3, dim=-1).to(device=device, dtype=dtype)
        ok = True
        for as_2d in (False, True):
            for seed in range(3):
                mine = RowStreams([seed + b for b in range(3)], device)
                ref = [torch.Generator(device=device).manual_seed(seed + b) for b in range(3)]
                for _ in range(2):
                    ok &= torch.equal(_draw_exponential(probs, mine, as_2d), _draw_multinomial(probs, ref, as_2d))
        _TRICK[key] = bool(ok)
    return _TRICK[key]
