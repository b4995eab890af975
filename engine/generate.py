"""Batched generation in which every row produces exactly what it would produce alone.

Rows are left-padded; padding is masked out of attention and position ids count only real tokens,
so a row's logits do not depend on its neighbours. Each row samples from its own ``torch.Generator``
seeded with its seed, drawing as ``torch.manual_seed(seed)`` + one categorical sample per step would,
so a row's text does not depend on the batch either. Two sampling semantics, recorded with each run:

- ``transformerlens`` (Neuronpedia's TransformerLens-era server; TransformerLens 4.3
  ``utilities/logits_utils.py:sample_logits``): temperature 0 is argmax; otherwise ``logits /
  temperature`` minus ``freq_penalty * bincount(tokens so far, prompt included)``, then a float32
  categorical sample (``torch.multinomial`` with replacement, as ``Categorical.sample`` draws).
- ``interp-engine`` (Neuronpedia's server today; interp-engine 1.14 ``steer.py:_sample_next``): the
  presence penalty is subtracted once from every token generated so far (not the prompt's), before
  the greedy shortcut; then ``/ temperature``, top-k, softmax, top-p, and ``torch.multinomial(probs,
  1)`` without replacement, drawing from the row's generator exactly as interp-engine draws from the
  global one after ``torch.manual_seed(seed)``.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Callable

import torch

from engine.hooks import hook

SAMPLING_SEMANTICS = {
    "transformerlens": "transformerlens-4.3 sample_logits (temperature, freq_penalty); per-row torch.Generator(seed)",
    "interp-engine": "interp-engine-1.14 _sample_next (presence_penalty, temperature, top_k, top_p); "
                     "per-row torch.Generator(seed)",
}


@dataclass
class Row:
    prompt_ids: list[int]
    seed: int


@dataclass
class Generated:
    token_ids: list[int]  # generated tokens only (the EOS that stopped it included)
    logprobs: list[dict] | None = None  # per generated token: {"token", "logprob", "top": [[id, logprob], ...]}
    stopped_at_eos: bool = False


@dataclass
class Sampling:
    n_tokens: int = 32
    temperature: float = 0.0
    freq_penalty: float = 0.0
    n_logprobs: int = 0
    stop_at_eos: bool = True
    semantics: str = "transformerlens"  # a key of SAMPLING_SEMANTICS
    presence_penalty: float = 0.0  # interp-engine semantics only
    top_k: int = 0  # interp-engine semantics only; 0 = off
    top_p: float = 1.0  # interp-engine semantics only; 1 = off
    extra: dict = field(default_factory=dict)


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
def generate(lm, rows: list[Row], sampling: Sampling, *, hook_name: str | None = None,
             steer: Callable[[torch.Tensor], torch.Tensor] | None = None) -> list[Generated]:
    """Generate for all rows in one batch; ``steer`` (if given) edits the activation at ``hook_name``."""
    model, tok = lm.model, lm.tokenizer
    device = next(model.parameters()).device
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    eos = _eos_ids(lm) if sampling.stop_at_eos else set()
    width = max(len(r.prompt_ids) for r in rows)
    B = len(rows)
    input_ids = torch.full((B, width), pad, dtype=torch.long)
    mask = torch.zeros((B, width), dtype=torch.long)
    for b, r in enumerate(rows):
        input_ids[b, width - len(r.prompt_ids):] = torch.tensor(r.prompt_ids)
        mask[b, width - len(r.prompt_ids):] = 1
    input_ids, mask = input_ids.to(device), mask.to(device)
    gens = [torch.Generator(device="cpu").manual_seed(int(r.seed)) for r in rows]
    counts = _token_counts(rows, lm, sampling)
    out = [Generated([], [] if sampling.n_logprobs else None) for _ in rows]
    done = torch.zeros(B, dtype=torch.bool)

    ctx = hook(lm, hook_name, steer) if steer is not None else _nullcontext()
    with ctx:
        positions = (mask.cumsum(-1) - 1).clamp_min(0)
        res = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
        cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        for step in range(sampling.n_tokens):
            logits = res.logits[:, -1, :].float().cpu()
            nxt = _choose(logits, sampling, gens, counts, [o.token_ids for o in out])
            for b in range(B):
                if done[b]:
                    continue
                t = int(nxt[b])
                out[b].token_ids.append(t)
                if out[b].logprobs is not None:
                    out[b].logprobs.append(_logprob_entry(logits[b], t, sampling.n_logprobs))
                if counts is not None:
                    counts[b, t] += 1
                if t in eos:
                    done[b] = True
                    out[b].stopped_at_eos = True
            if bool(done.all()) or step == sampling.n_tokens - 1:
                break
            nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
            mask = torch.cat([mask, (~done).long().to(device)[:, None]], dim=1)
            positions = positions[:, -1:] + 1
            res = model(input_ids=nxt[:, None].to(device), attention_mask=mask, position_ids=positions,
                        use_cache=True, logits_to_keep=1, **{cache_arg: getattr(res, cache_arg)})
    return out


def _choose(logits: torch.Tensor, s: Sampling, gens: list[torch.Generator], counts: torch.Tensor | None,
            generated: list[list[int]]) -> torch.Tensor:
    if s.semantics == "interp-engine":
        return torch.tensor([_interp_engine_next(logits[b], s, gens[b], generated[b]) for b in range(logits.shape[0])])
    if s.temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / s.temperature
    if counts is not None:
        logits = logits - s.freq_penalty * counts
    picks = []
    for b in range(logits.shape[0]):  # Categorical(logits=...).sample(), with this row's own generator
        normed = logits[b] - logits[b].logsumexp(dim=-1, keepdim=True)
        probs = torch.softmax(normed, dim=-1)
        picks.append(torch.multinomial(probs[None, :], 1, True, generator=gens[b])[0, 0])
    return torch.stack(picks)


def _interp_engine_next(logits: torch.Tensor, s: Sampling, gen: torch.Generator, generated: list[int]) -> int:
    """interp-engine 1.14 ``_sample_next`` for one row, with the row's generator in place of the global one."""
    if s.presence_penalty and generated:
        logits = logits.clone()
        logits[torch.tensor(sorted(set(generated)))] -= s.presence_penalty
    if s.temperature <= 0:
        return int(logits.argmax().item())
    logits = logits / s.temperature
    if s.top_k:
        kth = torch.topk(logits, s.top_k).values[..., -1, None]
        logits = torch.where(logits < kth, torch.full_like(logits, float("-inf")), logits)
    probs = torch.nn.functional.softmax(logits, dim=-1)
    if s.top_p and s.top_p < 1.0:
        sorted_probs, sorted_idx = torch.sort(probs, descending=True)
        cum = torch.cumsum(sorted_probs, dim=-1)
        sorted_probs[cum - sorted_probs > s.top_p] = 0.0
        sorted_probs = sorted_probs / sorted_probs.sum()
        return int(sorted_idx[torch.multinomial(sorted_probs, 1, generator=gen)].item())
    return int(torch.multinomial(probs, 1, generator=gen).item())


def _token_counts(rows: list[Row], lm, s: Sampling) -> torch.Tensor | None:
    if s.temperature == 0 or s.freq_penalty == 0:
        return None
    vocab = lm.model.config.get_text_config().vocab_size
    counts = torch.zeros(len(rows), vocab)
    for b, r in enumerate(rows):
        counts[b] += torch.bincount(torch.tensor(r.prompt_ids), minlength=vocab)[:vocab].float()
    return counts


def _logprob_entry(logits: torch.Tensor, token: int, k: int) -> dict:
    lp = torch.log_softmax(logits, dim=-1)
    top = torch.topk(lp, k)
    return {"token": token, "logprob": float(lp[token]),
            "top": [[int(i), float(v)] for v, i in zip(top.values, top.indices)]}


def _eos_ids(lm) -> set[int]:
    """The tokenizer's EOS only, as TransformerLens' ``stop_at_eos`` (not generation_config's list)."""
    eos = lm.tokenizer.eos_token_id
    return {int(eos)} if eos is not None else set()


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False
