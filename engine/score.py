"""Scores of generations, measured with the sweep's own model and SAE (no external judge).

- concept: the steered feature's JumpReLU activation, read by the SAE at its hook in an *unsteered*
  forward pass over prompt + completion: the mean over the completion's tokens and the fraction of
  them where it fires. A DEFAULT row is scored on every feature its sweep steers, as the baseline.
- fluency: the unsteered model's mean negative log-likelihood of the completion given the prompt
  (the EOS that ended it included: stopping is a choice the model makes) and its perplexity; and
  ``nll_novel``, the same mean over the completion's *novel* tokens only — a token that repeats a bigram
  already in the completion is left out. Repetition, which the model predicts well (a phrase looped
  twenty times has a lower NLL than fluent text), cannot lower it: the strength search's measure.
- degeneration: distinct-1/2 and the longest n-gram that occurs twice (tokens), and whether the
  completion stopped at EOS.

The completion excludes its final EOS for concept and degeneration. One batched forward pass per group
of rows, on the model's device; only one small tensor of per-row sums comes to the host per group. Only the
steered features' encoder columns are computed (a JumpReLU feature's activation depends on its own column
alone). The output projection, the pass's largest cost with a large vocabulary, runs once per distinct
prefix of the group's completions (rows of one prompt share their first position, weakly steered rows their
DEFAULT's first tokens) and one vocabulary slice at a time, so the (rows, tokens, vocabulary) logits are
never held and a group is sized by its forward pass. Rows a sweep generated ``for_scoring`` carry the
unsteered stream their generation recorded below its lowest hook (``engine.residual``): their pass runs only
the layers from there up, in generation's own layout, each distinct prompt's columns once (``_prompts_once``),
and a row generation did not steer, whose concepts are read at the record point, runs none (``_known``);
other rows (``saejobs score`` on old rows) get one whole unsteered pass, prompt and completion left-padded.
torch is imported where it is used, so ``Score`` (the field names) is cheap to import.
"""

from __future__ import annotations

import math
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

if TYPE_CHECKING:
    import torch

MEMORY_SHARE = 0.25  # of free device memory that one group's forward pass, or one vocabulary slice, may take
CPU_GROUP_BYTES = 512 << 20  # on a CPU: one group's forward pass
CPU_SLICE_BYTES = 4 << 20  # on a CPU: one vocabulary slice's logits and their temporaries (near the cores' caches)
MIN_SLICE = 1024  # words per vocabulary slice at least (the projection stays one efficient matmul)
SLICE_ALIGN = 256  # a slice's words are a multiple of this: the product's kernels run aligned widths at full speed


class Score(StrEnum):
    """The per-row score fields, as stored in ``generations.scores`` (and DataFrame columns)."""

    CONCEPT = "concept"  # {"index" (or another SAE's "SAE_ID:index"): {"mean": activation, "fire_rate": share}}
    CONCEPT_TOKENS = "concept_tokens"  # {the same keys: [activation at each completion token (EOS excluded)]}
    CONCEPT_MEAN = "concept_mean"  # mean over the row's concept features (one for a one-feature row)
    CONCEPT_FIRE_RATE = "concept_fire_rate"
    NLL = "nll"
    NLL_NOVEL = "nll_novel"  # NLL over the tokens that repeat no earlier bigram of the completion
    PERPLEXITY = "perplexity"
    DISTINCT_1 = "distinct_1"
    DISTINCT_2 = "distinct_2"
    LONGEST_REPEAT = "longest_repeat"  # tokens in the longest n-gram that occurs at least twice
    STOPPED_AT_EOS = "stopped_at_eos"
    COMPLETION_TOKENS = "completion_tokens"  # tokens scored for concept and degeneration (EOS excluded)


MAPPINGS = (Score.CONCEPT, Score.CONCEPT_TOKENS)  # a mapping per feature each: one column each as JSON text
FLAT = tuple(s.value for s in Score if s not in MAPPINGS)  # one column each in CSV, Parquet and DataFrames
TOKEN_DIGITS = 5  # significant digits kept of each per-token activation (what `serve` highlights)


@dataclass(frozen=True)
class Item:
    """One generation to score: its prompt ids (BOS included), generated ids, and concept features (of
    the sweep's SAE; ``others``: (SAE id, index) of other SAEs a steer named, scored as ``"ID:index"``)."""

    prompt_ids: Sequence[int]
    token_ids: Sequence[int]
    features: Sequence[int]
    others: Sequence[tuple[str, int]] = ()


def concept_features(features: Sequence[dict], sweep_features: Sequence[int], sae_id: str | None = None) -> list[int]:
    """A row's concept features: the features of the sweep's SAE (``sae_id``; an intervention naming no
    SAE is its) it steers; a DEFAULT row (none) gets the sweep's."""
    own = [int(f["index"]) for f in features if "index" in f and f.get("sae", sae_id) == sae_id]
    return list(dict.fromkeys(own)) if features else [int(i) for i in sweep_features]


def other_concepts(features: Sequence[dict], sae_id: str | None) -> list[tuple[str, int]]:
    """A row's features of SAEs other than the sweep's (a multi-SAE steer's), as (SAE id, index)."""
    return list(dict.fromkeys((f["sae"], int(f["index"])) for f in features
                              if "index" in f and f.get("sae", sae_id) != sae_id))


def score_outputs(runner, outs: list, sweep_features: Sequence[int], sae_id: str | None = None) -> list[dict]:
    """Scores of a chunk ``runner.run`` produced ((config, generated, text) triples), in order; features
    of the other SAEs ``runner.saes`` holds are each read by their own SAE at its hook. Rows generated
    ``for_scoring`` are scored from their recorded stream (``engine.residual``): the layers below it are
    not run again."""
    items = [Item(runner.ids(c), g.token_ids, concept_features(c.features, sweep_features, sae_id),
                  other_concepts(c.features, sae_id)) for c, g, _ in outs]
    streams = [getattr(g, "stream", None) for _, g, _ in outs]  # None: generated without recording
    return score(runner.lm, runner.sae, runner.hook_name, items, others=getattr(runner, "saes", None),
                 streams=streams if all(st is not None for st in streams) else None)


def score(lm, sae, hook_name: str, items: list[Item], on_group: Callable[[int], None] | None = None,
          others: dict[str, tuple] | None = None, streams: list[tuple] | None = None) -> list[dict]:
    """Scores of ``items`` (a dict each, keys from ``Score``), in groups sized by device memory.
    ``others``: SAE id -> (loaded SAE, hook name) for the items' ``others``. ``streams``: each item's
    (``ResidualCapture``, row) from its generation, else one full unsteered pass per group.

    Items with the same prompt and completion have the same unsteered pass, so it runs once for all of them
    (reading the union of their concepts) and each keeps its own concepts: a sweep's zero-strength rows, and
    the rows steered too weakly to change a token, are scored as their DEFAULT row is."""
    keys: dict[tuple, int] = {}
    owner = [keys.setdefault((tuple(it.prompt_ids), tuple(it.token_ids)), len(keys)) for it in items]
    first: dict[int, int] = {}
    features: list[dict] = [{} for _ in keys]
    other: list[dict] = [{} for _ in keys]
    for i, (it, u) in enumerate(zip(items, owner)):
        first.setdefault(u, i)
        features[u].update(dict.fromkeys(it.features))
        other[u].update(dict.fromkeys(it.others))
    distinct = [replace(items[first[u]], features=list(features[u]), others=list(other[u])) for u in range(len(keys))]
    shared = Counter(owner)
    done = [0]  # items scored so far: each distinct one stands for the items that share its pass

    def scored_group(part: list[int]) -> None:
        done[0] += sum(shared[u] for u in part)
        on_group(done[0])
    scored = _score_distinct(lm, sae, hook_name, distinct, None if on_group is None else scored_group,
                             others, None if streams is None else [streams[first[u]] for u in range(len(keys))])
    return [_own(scored[u], it) for it, u in zip(items, owner)]


def _own(row: dict, item: Item) -> dict:
    """A distinct pass's scores as one of its items reports them: that item's concepts only."""
    mine = {str(f) for f in item.features} | {f"{sae_id}:{f}" for sae_id, f in item.others}
    if set(row[Score.CONCEPT]) == mine:
        return dict(row)  # items that share a pass share no dict
    concept = {k: v for k, v in row[Score.CONCEPT].items() if k in mine}
    return {**row, Score.CONCEPT: concept,
            Score.CONCEPT_TOKENS: {k: v for k, v in row[Score.CONCEPT_TOKENS].items() if k in mine},
            Score.CONCEPT_MEAN: _mean([c["mean"] for c in concept.values()]),
            Score.CONCEPT_FIRE_RATE: _mean([c["fire_rate"] for c in concept.values()])}


def _score_distinct(lm, sae, hook_name: str, items: list[Item], on_group: Callable[[list[int]], None] | None,
                    others: dict[str, tuple] | None, streams: list[tuple] | None) -> list[dict]:
    """Rows whose generation computed everything scoring needs (``_known``) are scored from it, the others in
    groups of one forward pass each; then all in order. ``on_group``: the indices of each group scored."""
    import torch

    others = others or {}
    free = set() if streams is None else {i for i, it in enumerate(items) if _known(it, streams[i], hook_name, others)}
    order = sorted(free) + [i for i in range(len(items)) if i not in free]
    out: dict[int, dict] = {}
    width = max([1] + [len(i.prompt_ids) + len(i.token_ids) for i in items] + [st[0].width + st[0].n for st in streams or ()])
    size = _group_rows(lm, width)
    start = 0
    while start < len(order):
        end = min(start + size, len(order))
        if streams is not None:  # a group replays one capture's rows, all known or none
            first = order[start]
            end = next((k for k in range(start, end) if streams[order[k]][0] is not streams[first][0]
                        or (order[k] in free) != (first in free)), end)
        part = order[start:end]
        with torch.no_grad():
            scored = _score_group(lm, sae, hook_name, [items[i] for i in part], others,
                                  None if streams is None else [streams[i] for i in part], known=part[0] in free)
        out.update(zip(part, scored))
        start = end
        if on_group is not None:
            on_group(part)
    return [out[i] for i in range(len(items))]


def _known(item: Item, stream: tuple, hook_name: str, others: dict[str, tuple]) -> bool:
    """Whether a row's scores need no forward pass: its generation was unsteered (the capture holds its
    log-probabilities) and every SAE reading its concepts reads them at the record point."""
    capture, row = stream
    hooks = ({hook_name} if item.features else set()) | {others[sae_id][1] for sae_id, _ in item.others}
    return capture.known(row) and hooks <= {capture.hook_name}


def _group_rows(lm, width: int) -> int:
    """Rows per group: what one row's forward pass over ``width`` tokens may hold at once (per token the
    residual stream and its copies, the MLP's three intermediates and each head's attention row, in float32,
    an upper estimate) within the device's budget. The logits are never held whole (``_log_probs``)."""
    import torch

    cfg = lm.config
    per_row = width * (8 * cfg.hidden_size + 3 * cfg.intermediate_size + 2 * cfg.num_attention_heads * width) * 4
    return max(1, int(_budget(torch.device(lm.device), CPU_GROUP_BYTES) // per_row))


def _budget(device: "torch.device", cpu_bytes: int) -> float:
    """Bytes one group's pass or one vocabulary slice may take: a share of the GPU's free memory, else ``cpu_bytes``."""
    import torch

    return torch.cuda.mem_get_info(device)[0] * MEMORY_SHARE if device.type == "cuda" else cpu_bytes


def _vocab_slice(device: "torch.device", n: int, vocab: int) -> int:
    """Words per slice of the output projection for ``n`` positions: a slice's float32 logits and two
    temporaries of their size within the budget (a CPU's small one: the slice is reduced while it is hot),
    rounded down to a multiple of ``SLICE_ALIGN``, at least ``MIN_SLICE``. On a 2-core AMD EPYC, 995
    positions' head and logsumexp took 3.6 s in slices of 4,215 words (the old 48 MiB budget's, unaligned)
    and 2.1 s in slices of 1,024; an aligned 4,224 took 2.4 s (measured apart, at ``bench/score.py``'s first
    grid's shape)."""
    words = _budget(device, CPU_SLICE_BYTES) // (max(n, 1) * 4 * 3) // SLICE_ALIGN * SLICE_ALIGN
    return int(min(vocab, max(MIN_SLICE, words)))


def _prefix_slots(items: list[Item], offsets: list[int], L: int) -> tuple[list[int], list[int]]:
    """Which positions need logits of their own. The unsteered model's next-token distribution after a
    prefix depends on the prefix alone, so completions that share a prefix (every row of a prompt shares its
    first position; weakly steered rows often follow their DEFAULT row for several tokens) share those
    positions' logits. Returns, for each of the (B, L) window's positions, flattened, the index of its
    distinct prefix (-1: no completion token there), and each distinct prefix's first position."""
    node: dict[tuple, int] = {}  # ("prompt", ids) or (node, token) -> node: a prefix tree of the group's texts
    slot, first = [-1] * (len(items) * L), []
    where: dict[int, int] = {}  # node -> its distinct prefix's index
    for b, it in enumerate(items):
        u = node.setdefault(("prompt", tuple(it.prompt_ids)), len(node))
        for t, token in enumerate(it.token_ids):
            pos = b * L + offsets[b] + t
            k = where.setdefault(u, len(where))
            if k == len(first):
                first.append(pos)
            slot[pos] = k
            u = node.setdefault((u, int(token)), len(node))
    return slot, first


def _log_probs(lm, hidden: "torch.Tensor", targets: "torch.Tensor", slot: list[int], first: list[int]) -> "torch.Tensor":
    """(B, L) log-probabilities of ``targets`` under the model's head, from the head's (B, L, d) input:
    the head runs only at each distinct prefix's first position, one vocabulary slice at a time (a slice's
    logits are reduced to their logsumexp and the targets in it are picked out, then freed), with the
    model's own final soft-capping. Where ``slot`` is -1 the value means nothing (the caller masks)."""
    import torch

    B, L, d = hidden.shape
    if not first:  # no completion token in the group
        return torch.zeros((B, L), dtype=torch.float32, device=hidden.device)
    head = lm.model.get_output_embeddings()
    cap = lm.config.final_logit_softcapping  # Gemma 2: 30; Gemma 3: None
    device = hidden.device
    h = hidden.reshape(B * L, d)[torch.tensor(first, device=device)]  # (N, d)
    slots = torch.tensor(slot, device=device)
    rows = slots.clamp_min(0)
    want = targets.reshape(-1)
    V = head.weight.shape[0]
    step = _vocab_slice(device, len(first), V)
    out = torch.empty((len(first), min(step, V)), dtype=h.dtype, device=device)  # reused: no fresh pages per slice
    lse, picked = [], torch.zeros(B * L, device=device)
    for v0 in range(0, V, step):
        w = head.weight[v0:v0 + step]
        z = torch.mm(h, w.T, out=out) if len(w) == out.shape[1] else h @ w.T
        if head.bias is not None:
            z += head.bias[v0:v0 + step]
        if cap is not None:  # as the model's forward: logits / cap, tanh, * cap, in the model's dtype
            z.div_(cap).tanh_().mul_(cap)
        z = z.float()
        # targets from this slice on: a later slice overwrites those that are its own
        picked = torch.where(want >= v0, z[rows, (want - v0).clamp(0, len(w) - 1)], picked)
        top = z.amax(dim=1, keepdim=True)  # then logsumexp in place: the slice's logits are not needed again
        lse.append(z.sub_(top).exp_().sum(dim=1).log_().add_(top[:, 0]))
    total = torch.logsumexp(torch.stack(lse, dim=1), dim=1)  # (N,)
    return (picked - total[rows]).reshape(B, L)


@dataclass
class _Layout:
    """One group's forward pass: (B, T) ids and mask; each row's completion in the window of ``L`` columns
    from column ``start`` (the last ``L``), from ``offsets[b]`` within it (right-aligned in the one-pass
    layout, from the window's first column in generation's)."""

    ids: "torch.Tensor"
    mask: "torch.Tensor"
    start: int
    L: int
    offsets: list[int]


def _full_layout(items: list[Item], pad: int) -> _Layout:
    """Prompt and completion right-aligned, left-padded: the one-pass layout."""
    import torch

    L = max(len(i.token_ids) for i in items)
    seqs = [list(i.prompt_ids) + list(i.token_ids) for i in items]
    W = max(len(s) for s in seqs)
    ids = torch.full((len(items), W), pad, dtype=torch.long)
    mask = torch.zeros((len(items), W), dtype=torch.long)
    for b, s in enumerate(seqs):
        ids[b, W - len(s):] = torch.tensor(s)
        mask[b, W - len(s):] = 1
    return _Layout(ids, mask, W - L, L, [L - len(i.token_ids) for i in items])


def _generation_layout(items: list[Item], pad: int, width: int, n: int) -> _Layout:
    """Generation's layout: prompts right-aligned in ``width`` columns, completions from column ``width``."""
    import torch

    ids = torch.full((len(items), width + n), pad, dtype=torch.long)
    mask = torch.zeros((len(items), width + n), dtype=torch.long)
    for b, it in enumerate(items):
        ids[b, width - len(it.prompt_ids):width] = torch.tensor(list(it.prompt_ids))
        ids[b, width:width + len(it.token_ids)] = torch.tensor(list(it.token_ids))
        mask[b, width - len(it.prompt_ids):width + len(it.token_ids)] = 1
    return _Layout(ids, mask, width, n, [0] * len(items))


def _score_group(lm, sae, hook_name: str, items: list[Item], others: dict[str, tuple],
                 streams: list[tuple] | None, *, known: bool) -> list[dict]:
    """One group's scores. ``known``: every row is ``_known``: its log-probabilities and concept activations are
    read from its capture, no layer runs."""
    import torch
    from contextlib import ExitStack

    from saejobs.engine.decode import position_ids, static_fits
    from saejobs.engine.hooks import hook
    from saejobs.engine.residual import replaying

    device = torch.device(lm.device)
    tok = lm.tokenizer
    eos = tok.eos_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    B = len(items)
    capture = streams[0][0] if streams else None
    lay = (_full_layout(items, pad) if capture is None
           else _generation_layout(items, pad, capture.width, capture.n))
    L, start = lay.L, lay.start
    gen = torch.zeros((B, L), dtype=torch.bool)  # the window's columns that are this row's completion
    novel = torch.zeros((B, L), dtype=torch.bool)  # those whose token repeats no earlier bigram of it
    text = torch.zeros((B, L), dtype=torch.bool)  # the completion without the EOS that ended it
    for b, it in enumerate(items):
        o, k = lay.offsets[b], len(it.token_ids)
        gen[b, o:o + k] = True
        novel[b, o:o + k] = torch.tensor(novel_tokens(it.token_ids), dtype=torch.bool)
        text[b, o:o + k - int(bool(it.token_ids) and eos is not None and it.token_ids[-1] == eos)] = True
    ids, mask = lay.ids.to(device), lay.mask.to(device)
    gen, novel, text = gen.to(device), novel.to(device), text.to(device)
    # every concept as (SAE id or None for the sweep's, index), each SAE reading its own hook
    feats = sorted({(None, f) for it in items for f in it.features} | {o for it in items for o in it.others},
                   key=lambda k: (k[0] or "", k[1]))
    member = torch.zeros((B, max(len(feats), 1)), dtype=torch.bool)
    for b, it in enumerate(items):
        for k in [(None, f) for f in it.features] + list(it.others):
            member[b, feats.index(k)] = True
    readers = {None: (sae, hook_name), **{k: others[k] for k in {s for s, _ in feats if s is not None}}}
    hooks = {name for _, name in readers.values()}

    seen: dict[str, torch.Tensor] = {}  # each hook's activations over the window (the completion's L columns)

    def read(name: str):
        return hook(lm, name, lambda a: seen.__setitem__(name, a[:, a.shape[1] - L:].detach()))  # not -L: L may be 0
    rows = None if capture is None else torch.tensor([r for _, r in streams], device=capture.stream.device)
    prompts: dict[tuple, int] = {}
    prompt_of = [prompts.setdefault(tuple(it.prompt_ids), len(prompts)) for it in items]  # each row's distinct prompt
    if known:  # generation's own log-probabilities, and the record where the concepts are read
        lines = torch.tensor([capture.unsteered[r] for _, r in streams], device=capture.logp.device)
        seen[capture.hook_name] = capture.stream.index_select(0, rows)[:, capture.width:]
        logp = torch.where(gen, capture.logp.index_select(0, lines).to(device), 0.0)  # steps after its EOS: nothing
    elif capture is not None and len(prompts) < B and static_fits(lm.model, capture.width + capture.n):
        hidden = _prompts_once(lm, capture, rows, ids, mask, prompt_of, [read(n) for n in hooks])
    else:
        kept: list[torch.Tensor] = []  # the head's input; the head itself is handed no position (``_log_probs``)
        with ExitStack() as stack:
            if capture is not None:
                stack.enter_context(replaying(capture, rows))
            for name in hooks:
                stack.enter_context(read(name))
            stack.enter_context(_head_input(lm.model, kept))
            lm.model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask),
                     use_cache=False, logits_to_keep=L + 1)
        hidden = kept[0]
    if not known:
        slot, first = _prefix_slots(items, lay.offsets, L)
        logp = _log_probs(lm, hidden[:, :-1], ids[:, start:start + L], slot, first)  # column j's state predicts token j
        del hidden
    nll_sum = -(logp * gen).sum(1)  # (B, L) -> per row
    n_gen = gen.sum(1)
    novel_sum, n_novel = -(logp * novel).sum(1), novel.sum(1)
    n_text = text.sum(1)
    cols = [nll_sum, n_gen.float(), n_text.float(), novel_sum, n_novel.float()]
    if feats:
        means, fires, per_token = [], [], []
        for key in dict.fromkeys(s for s, _ in feats):  # per SAE, its features' columns only, in ``feats`` order
            reader, name = readers[key]
            idx = torch.tensor([f for s, f in feats if s == key], device=reader.W_enc.device)
            x = seen[name].to(device=reader.W_enc.device, dtype=reader.W_enc.dtype)
            pre = x @ reader.W_enc[:, idx] + reader.b_enc[idx]
            act = pre.masked_fill(pre <= reader.threshold_floor[idx], 0).to(device)  # JumpReLU, as JumpReLUSAE.encode
            w = text[..., None].to(act.dtype)
            means.append((act * w).sum(1).T.float())
            fires.append(((act > 0) * w).sum(1).T.float())
            per_token.append(act.float())  # (B, L, F of this SAE); _row reads a row's text columns only
        acts = torch.cat(per_token, dim=-1)  # (B, L, F)
        cols += [torch.cat(means), torch.cat(fires), acts.permute(1, 2, 0)]  # (F, B), (F, B), (L, F, B)
    sums = torch.cat([c.reshape(-1, B).float() for c in cols]).T.cpu().tolist()  # one copy to the host
    return [_row(items[b], sums[b], feats, member[b], eos, lay.offsets[b]) for b in range(B)]


def _prompts_once(lm, capture, rows: "torch.Tensor", ids: "torch.Tensor", mask: "torch.Tensor", prompt_of: list[int],
                  reads: list) -> "torch.Tensor":
    """The layers from the recording up in two passes, for a group whose rows share prompts: the distinct
    prompts' columns once, into a static cache, then every row's completion columns attending to its prompt's
    cached keys and values (the cache copied out to the rows). A chat-length prompt is most of a row's
    columns, so most of the pass is no longer repeated per row. The same meaning as one pass over generation's
    layout: explicit positions and additive masks (causal, padding never seen), as ``engine.decode``'s static
    cache has them (only where no sliding window is shorter than the row: ``static_fits``). ``ids``, ``mask``:
    generation's layout on the model's device. ``reads``: the
    concept hooks, entered for the completion pass; ``prompt_of``: each row's distinct prompt, numbered in order
    of first appearance. Returns the head's (B, n + 1, d) input: each prompt's last column, then the
    completion's."""
    import torch
    from contextlib import ExitStack

    from transformers import StaticCache

    from saejobs.engine.decode import _layer_masks, additive_mask, cache_argument, position_ids
    from saejobs.engine.residual import replaying

    model, W, n = lm.model, capture.width, capture.n
    device = ids.device
    positions = position_ids(mask)
    dtype = next(model.parameters()).dtype
    causal = torch.ones((W + n, W + n), dtype=torch.bool, device=device).tril()

    def additive(seen: "torch.Tensor") -> dict:  # (rows, queries, keys) -> each layer type's (rows, 1, q, k) mask
        return _layer_masks(additive_mask(seen[:, None], dtype))

    cache = StaticCache(config=model.config, max_cache_len=W + n)
    arg = {cache_argument(model): cache}
    first: dict[int, int] = {}  # each distinct prompt's first row (in the prompts' order: numbered as they appear)
    for b, u in enumerate(prompt_of):
        first.setdefault(u, b)
    firsts = torch.tensor(list(first.values()), device=device)
    last: list = []
    with replaying(capture, rows[firsts.to(rows.device)], slice(None, W)), _head_input(model, last):
        model(input_ids=ids[firsts, :W], attention_mask=additive(causal[None, :W] & mask[firsts, None].bool()),
              position_ids=positions[firsts, :W], logits_to_keep=1, **arg)  # a cache given is written
    which = torch.tensor(prompt_of, device=device)
    for layer in cache.layers:  # the layers below the recording never ran: they hold nothing
        if layer.is_initialized:
            layer.keys, layer.values = layer.keys.index_select(0, which), layer.values.index_select(0, which)
    kept: list = []
    with ExitStack() as stack:
        stack.enter_context(replaying(capture, rows, slice(W, None)))
        for r in reads:
            stack.enter_context(r)
        stack.enter_context(_head_input(model, kept))
        model(input_ids=ids[:, W:], attention_mask=additive(causal[None, W:] & mask[:, None].bool()),
              position_ids=positions[:, W:], **arg)  # every column kept
    return torch.cat([last[0].index_select(0, which), kept[0]], dim=1)


@contextmanager
def _head_input(model, kept: list) -> Iterator[None]:
    """Inside the block, the output projection's input is appended to ``kept`` and the projection is handed
    none of its positions: the forward pass stops short of the (B, L, vocab) logits."""
    def keep(_module, args):
        kept.append(args[0])
        return (args[0][:, :0],)  # the projection's one argument

    handle = model.get_output_embeddings().register_forward_pre_hook(keep)
    try:
        yield
    finally:
        handle.remove()


def _row(item: Item, sums: list[float], feats: list[tuple], member: "torch.Tensor", eos: int | None,
         offset: int) -> dict:
    nll_sum, n_gen, n_text, novel_sum, n_novel = sums[0], int(sums[1]), int(sums[2]), sums[3], int(sums[4])
    F, c0 = len(feats), 5  # the concept columns follow the five above: means, fire counts, then (L, F) activations
    first = c0 + 2 * F + offset * F  # this row's first completion token in the window
    concept, tokens = {}, {}
    for k, (sae_id, f) in enumerate(feats):
        if member[k]:
            key = str(f) if sae_id is None else f"{sae_id}:{f}"
            concept[key] = {"mean": sums[c0 + k] / n_text if n_text else 0.0,
                            "fire_rate": sums[c0 + F + k] / n_text if n_text else 0.0}
            tokens[key] = [float(f"{sums[first + t * F + k]:.{TOKEN_DIGITS}g}") for t in range(n_text)]
    nll = nll_sum / n_gen if n_gen else None
    stopped = bool(item.token_ids) and eos is not None and item.token_ids[-1] == eos
    body = list(item.token_ids[:-1] if stopped else item.token_ids)
    return {Score.CONCEPT: concept, Score.CONCEPT_TOKENS: tokens,
            Score.CONCEPT_MEAN: _mean([c["mean"] for c in concept.values()]),
            Score.CONCEPT_FIRE_RATE: _mean([c["fire_rate"] for c in concept.values()]),
            Score.NLL: nll, Score.NLL_NOVEL: novel_sum / n_novel if n_novel else None,
            Score.PERPLEXITY: None if nll is None else math.exp(min(nll, 700.0)),
            **repetition(body), Score.STOPPED_AT_EOS: stopped, Score.COMPLETION_TOKENS: n_text}


def novel_tokens(tokens: Sequence[int]) -> list[bool]:
    """Per token, whether it is novel: the first, and each whose bigram with the token before it has not
    occurred earlier in ``tokens``."""
    seen, out = set(), []
    for i, t in enumerate(tokens):
        pair = (tokens[i - 1], t) if i else None
        out.append(pair is None or pair not in seen)
        seen.add(pair)
    return out


def repetition(tokens: Sequence[int]) -> dict:
    """distinct-1, distinct-2 (unique n-grams / n-grams; 1.0 when there are none) and the longest
    n-gram occurring at least twice (overlaps allowed; 0 when no token repeats)."""
    t = list(tokens)
    longest, n = 0, 1
    # a repeated (n+1)-gram contains a repeated n-gram: stop at the first n with no repeat
    while n < len(t) and len({tuple(t[i:i + n]) for i in range(len(t) - n + 1)}) < len(t) - n + 1:
        longest, n = n, n + 1
    bigrams = list(zip(t, t[1:]))
    return {Score.DISTINCT_1: len(set(t)) / len(t) if t else 1.0,
            Score.DISTINCT_2: len(set(bigrams)) / len(bigrams) if bigrams else 1.0,
            Score.LONGEST_REPEAT: longest}


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None
