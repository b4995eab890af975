"""Running a sweep's configurations (``engine.request`` builds them) in batched chunks on a loaded model."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from saejobs.engine import chat
from saejobs.engine.cache import release_memory
from saejobs.engine.errors import FormatError, OutOfMemory, UsageError
from saejobs.engine.generate import Generated, Row, generate, output_text, prompt_ids
from saejobs.engine.request import SweepConfig, Settings
from saejobs.engine.hooks import hook_width
from saejobs.engine.residual import record_point
from saejobs.engine.steering import (BatchSteering, Checks, Steer, SteerMethod, coefficient, prepare_vector,
                                     steer_method)


def load_vector(path: str | Path) -> torch.Tensor:
    """A raw steering vector from .npy (no pickle) or .safetensors (one tensor)."""
    path = Path(path)
    try:
        if path.suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
        elif path.suffix == ".safetensors":
            from safetensors.numpy import load_file

            tensors = load_file(str(path))
            if len(tensors) != 1:
                raise FormatError(f"{path}: expected one tensor, found {len(tensors)} ({', '.join(tensors)})")
            arr = next(iter(tensors.values()))
        else:
            raise UsageError(f"{path}: a steering vector must be .npy or .safetensors")
    except (ValueError, OSError) as e:
        raise FormatError(f"{path}: not a readable vector file ({str(e).splitlines()[0]})") from None
    arr = np.asarray(arr, dtype=np.float32).squeeze()
    if arr.ndim != 1:
        raise FormatError(f"{path}: expected a 1-D vector, found shape {tuple(arr.shape)}")
    return torch.from_numpy(arr.copy())


class SweepGenerator:
    """Runs configurations of one sweep against a loaded model and SAE, chunk by chunk."""

    def __init__(self, lm, sae, hook_name: str, settings: Settings, vectors: dict[str, torch.Tensor] | None = None,
                 chat_template: str | None = None, saes: dict[str, tuple] | None = None):
        """``chat_template``: the Jinja text chat configurations are rendered with (None: the tokenizer's).
        ``saes``: further SAEs an intervention names (``"sae": id``), id -> (loaded SAE, its hook name)."""
        self.lm, self.sae, self.hook_name, self.settings = lm, sae, hook_name, settings
        self.vectors = vectors or {}
        self.saes = saes or {}
        self.chat_template = chat_template
        self._ids: dict[str, list[int]] = {}
        self._chats: dict[chat.Conversation, tuple[str, list[int]]] = {}
        self.max_rows = 1 << 30  # lowered when a batch runs out of memory

    def prompt_ids(self, prompt: str) -> list[int]:
        if prompt not in self._ids:
            self._ids[prompt] = prompt_ids(self.lm.tokenizer, prompt)
        return self._ids[prompt]

    def _chat(self, conv: chat.Conversation) -> tuple[str, list[int]]:
        if conv not in self._chats:
            text = chat.render(self.lm.tokenizer, conv, self.chat_template, self.lm.model_id)
            self._chats[conv] = text, chat.text_ids(self.lm.tokenizer, text)  # rendered once
        return self._chats[conv]

    def ids(self, cfg: SweepConfig) -> list[int]:
        """The token ids a configuration's generation continues: the prompt with BOS, or the rendered chat."""
        return self._chat(cfg.chat)[1] if cfg.chat else self.prompt_ids(cfg.prompt)

    def prompt_text(self, cfg: SweepConfig) -> str:
        """What a generation row stores as its prompt: the prompt, or the chat as the template rendered it."""
        return self._chat(cfg.chat)[0] if cfg.chat else cfg.prompt

    def steers(self, cfg: SweepConfig, checks: Checks | None = None) -> dict[str, list[Steer]]:
        """A configuration's terms per hook, each hook's in the configuration's order (interp-engine's
        ``steer()`` groups its specs per hook the same way; across hooks the forward pass orders them).
        ``checks``: where the vectors' checks go (None: made at once)."""
        out: dict[str, list[Steer]] = {}
        s = self.settings
        for f in cfg.features:
            hook, v = self._direction(f, checks=checks)
            method = steer_method(f.get("method", s.method))
            coeff = coefficient(f.get("strength", 0.0), s.strength_multiplier if cfg.multiplier is None else cfg.multiplier)
            lo, hi = f.get("min"), f.get("max")
            if method is SteerMethod.PROJECTION_CAP and lo is None and hi is None:
                hi = coeff  # Neuronpedia's PROJECTION_CAP: ProjectionCapSpec(v, min=None, max=coeff)
            target = self._direction(f["target"], normalize=False, checks=checks)[1] if "target" in f else None
            out.setdefault(hook, []).append(Steer(v, coeff, method, min=lo, max=hi,
                                                  max_fraction=f.get("max_fraction", 1.0), target=target))
        return out

    def _direction(self, f: dict, normalize: bool | None = None, checks: Checks | None = None
                   ) -> tuple[str, torch.Tensor]:
        """(hook, prepared vector) of a feature ({"index", "sae"?}) or raw vector ({"vector", "hook"?}); with
        ``checks``, each distinct vector of the chunk is prepared (and checked) once, however many rows use it."""
        normalize = self.settings.normalize if normalize is None else normalize
        key = ("feature", f.get("sae"), f["index"], normalize) if "index" in f else ("vector", f["vector"], f.get("hook"), normalize)
        if checks is not None and key in checks.prepared:
            return checks.prepared[key]
        if "index" in f:
            sae, hook = self.saes[f["sae"]] if "sae" in f else (self.sae, self.hook_name)
            what = f"feature {f['index']}" + (f" of {f['sae']}" if "sae" in f else "")
            out = hook, prepare_vector(sae.feature_vector(f["index"]), normalize, what, checks)
        else:
            out = f.get("hook", self.hook_name), prepare_vector(self.vectors[f["vector"]], normalize,
                                                                f"vector {f['vector']}", checks)
        if checks is not None:
            checks.prepared[key] = out
        return out

    def run(self, configs: list[SweepConfig], on_step: Callable[[int, int], None] | None = None,
            for_scoring: bool = False) -> list[tuple[SweepConfig, Generated, str]]:
        """Generate ``configs`` in batches of at most ``max_rows``: (config, generated tokens, output text) each.
        ``for_scoring``: each batch records its unsteered stream below its lowest hook (``Generated.stream``),
        from which ``engine.score`` scores it without recomputing those layers.

        A batch that runs out of device memory is split in half and retried, and ``max_rows`` remembers
        the size that fitted; one row that does not fit is an ``OutOfMemory`` error (permanent).
        """
        if len(configs) > self.max_rows:
            step = self.max_rows  # fixed for this split; a part that does not fit splits itself further
            return [o for i in range(0, len(configs), step)
                    for o in self.run(configs[i:i + step], on_step, for_scoring)]
        try:
            return self._run(configs, on_step, for_scoring)
        except Exception as e:
            if not is_out_of_memory(e):
                raise
        release_memory(self.lm.device)
        if len(configs) == 1:
            raise OutOfMemory(f"out of memory generating one row of {self.settings.n_tokens} tokens on "
                              f"{self.lm.device}; a smaller model, dtype or --n-tokens is needed")
        self.max_rows = max(1, len(configs) // 2)
        return self.run(configs, on_step, for_scoring)

    def _run(self, configs: list[SweepConfig], on_step, for_scoring: bool) -> list[tuple[SweepConfig, Generated, str]]:
        rows = [Row(self.ids(c), c.seed) for c in configs]
        keep = None if self.settings.steer_special_tokens else self._non_special(rows)
        checks = Checks()  # every vector of the chunk checked with one look at the device
        per_row = [self.steers(c, checks) for c in configs]
        steering = {}
        for name in dict.fromkeys(h for r in per_row for h in r):  # hooks in order of first use
            batch = BatchSteering([r.get(name, []) for r in per_row], hook_width(self.lm, name), self.settings.method, keep,
                                  checks)
            if batch.active:
                steering[name] = batch
        checks.verify()
        record, unsteered = None, []
        if for_scoring:  # below every hook that steers or reads a concept, the stream is the unsteered one
            hooks = [*steering, self.hook_name, *(name for _, name in self.saes.values())]
            record = record_point(hooks)
            unsteered = [b for b, r in enumerate(per_row)
                         if all(s.adds_nothing(self.settings.method) for terms in r.values() for s in terms)]
        gens = generate(self.lm, rows, self.settings.sampling(), steering=steering, on_step=on_step,
                        record_at=record, unsteered=unsteered)
        return [(c, g, self._output(c, r, g)) for c, r, g in zip(configs, rows, gens)]

    def _output(self, cfg: SweepConfig, row: Row, g: Generated) -> str:
        """A prompt's output is the prompt and its completion; a chat's is the assistant turn alone, read
        as Neuronpedia's chat endpoint reads it: each token decoded alone and the pieces joined (EOS too:
        interp-engine's ``GenStep.token_str``), then cut at the first end-of-turn marker."""
        if not cfg.chat:
            return output_text(self.lm.tokenizer, row.prompt_ids, g.token_ids)
        tok = self.lm.tokenizer
        return chat.assistant_turn("".join(tok.decode([t], clean_up_tokenization_spaces=False) for t in g.token_ids))

    def _non_special(self, rows: list[Row]) -> torch.Tensor:
        """(B, T) 0 at the prompts' special tokens in the left-padded layout generate() builds, else 1.

        Special = the tokenizer's ``all_special_ids`` plus its BOS/EOS/PAD ids, as interp-engine's
        ``special_token_ids`` has it (what Neuronpedia's ``steer_special_tokens=False`` masks, for
        prompts and chats alike: ``engine.steering`` states the rule and its source).
        """
        tok = self.lm.tokenizer
        special = {int(t) for t in (getattr(tok, "all_special_ids", None) or []) if t is not None}
        special |= {int(t) for t in (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) if t is not None}
        width = max(len(r.prompt_ids) for r in rows)
        keep = torch.ones(len(rows), width)
        for b, r in enumerate(rows):
            offset = width - len(r.prompt_ids)
            for i, t in enumerate(r.prompt_ids):
                if t in special:
                    keep[b, offset + i] = 0.0
        return keep


def chunks(configs: list[SweepConfig], size: int) -> Iterator[list[SweepConfig]]:
    for i in range(0, len(configs), size):
        yield configs[i:i + size]


MEMORY_SHARE = 0.5  # of the free device memory (RAM on a CPU) a chunk may plan to use
GPU_MAX_ROWS = 4096
CPU_MAX_ROWS = 64  # on a CPU a batch is compute-bound well before this; a chunk is also the unit a kill loses


def row_bytes(lm, n_prompt_tokens: int, n_tokens: int) -> int:
    """Device memory one row of a chunk needs at its peak: its KV cache, the prompt pass's activations
    (eager attention scores in float32 included) and the per-step logits with the sampling buffers."""
    cfg = lm.config
    el = torch.empty((), dtype=lm.dtype).element_size()
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    seq = n_prompt_tokens + n_tokens
    kv = 2 * cfg.num_hidden_layers * kv_heads * head_dim * seq * el
    prompt = n_prompt_tokens * (8 * cfg.hidden_size + 3 * cfg.intermediate_size) * el + 3 * heads * n_prompt_tokens ** 2 * 4
    # logits, float32 copies (logprobs, probs, noise; an unsteered row's kept for its log-probability), penalty state
    logits = cfg.vocab_size * (2 * el + 7 * 4)
    stream = seq * cfg.hidden_size * el  # the stream recorded for scoring (engine.residual: prompt + tokens)
    return kv + prompt + logits + stream


def default_batch_size(lm, n_prompt_tokens: int, n_tokens: int) -> int:
    """Rows per chunk: what fits in ``MEMORY_SHARE`` of the free memory of the model's device, capped
    at ``GPU_MAX_ROWS`` (``CPU_MAX_ROWS`` on a CPU). ``--batch-size`` overrides it."""
    device = torch.device(lm.device)
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
        cap = GPU_MAX_ROWS
    else:
        import psutil

        free = psutil.virtual_memory().available
        cap = CPU_MAX_ROWS
    return int(max(1, min(cap, free * MEMORY_SHARE // max(row_bytes(lm, n_prompt_tokens, n_tokens), 1))))


def is_out_of_memory(e: BaseException) -> bool:
    """An allocation failure on any device (CUDA raises ``OutOfMemoryError``; the CPU allocator a
    ``RuntimeError`` that says so)."""
    oom = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
    return isinstance(e, oom) or (isinstance(e, RuntimeError) and (
        "not enough memory" in str(e) or "can't allocate memory" in str(e) or "out of memory" in str(e).lower()))
