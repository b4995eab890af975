"""How an SAE behaves on real text at its hook: L0, FVU, cosine, delta loss, features that never fired.

The text is bundled (``engine/data/alice-chapter-1.txt``, public domain, see ``data/SOURCES.md``),
cut into windows of ``context`` tokens, each with BOS prepended as Gemma Scope trained. BOS
positions are excluded from every statistic and never spliced (Gemma Scope reports L0 without BOS;
the BOS residual is huge and atypical). Delta loss is the mean next-token cross-entropy with the
reconstruction spliced in at the hook minus the clean one; "loss recovered" compares it with zero
ablation at the same positions: 1 is a perfect SAE, 0 no better than deleting the activation.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from saejobs.engine.hooks import hook
from saejobs.engine.sae import JumpReLUSAE

DATA = Path(__file__).parent / "data"
EVAL_TEXT = DATA / "alice-chapter-1.txt"
CALIBRATION_TEXT = DATA / "alice-chapter-2.txt"
EVAL_SOURCE = ("Lewis Carroll, Alice's Adventures in Wonderland (1865), chapter I, "
               "Project Gutenberg EBook #11, public domain")


def windows(tokenizer, text: str | None = None, context: int = 128) -> torch.Tensor:
    """(n, context + 1) token ids: BOS then ``context`` tokens of the text; the last partial window dropped."""
    text = EVAL_TEXT.read_text() if text is None else text
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    n = len(ids) // context
    body = torch.tensor(ids[: n * context], dtype=torch.long).view(n, context)
    bos = torch.full((n, 1), tokenizer.bos_token_id, dtype=torch.long)
    return torch.cat([bos, body], dim=1)


@dataclass
class Metrics:
    tokens: int
    l0: float
    fvu: float
    cosine: float
    clean_loss: float
    spliced_loss: float
    zero_ablation_loss: float
    dead_fraction: float

    @property
    def delta_loss(self) -> float:
        return self.spliced_loss - self.clean_loss

    @property
    def loss_recovered(self) -> float:
        gap = self.zero_ablation_loss - self.clean_loss
        return (self.zero_ablation_loss - self.spliced_loss) / gap if gap > 0 else float("nan")

    def as_dict(self) -> dict:
        return {**self.__dict__, "delta_loss": self.delta_loss, "loss_recovered": self.loss_recovered}


def _loss(logits: torch.Tensor, ids: torch.Tensor) -> tuple[float, int]:
    """Summed next-token cross-entropy (targets are every token after BOS) and its count. The last position,
    which predicts nothing here, is ignored rather than sliced off: slicing would copy the (batch × 128 × 262,144)
    logits, hundreds of MB, once per pass."""
    targets = torch.nn.functional.pad(ids[:, 1:], (0, 1), value=-100)  # cross_entropy's ignore_index
    lp = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="sum")
    return float(lp), ids[:, 1:].numel()


@torch.no_grad()
def evaluate(lm, sae: JumpReLUSAE, hook_name: str, ids: torch.Tensor, batch_size: int = 8,
             progress: Callable[[float, str], None] = lambda f, m: None) -> Metrics:
    """Three forward passes per batch (clean, spliced, zero-ablated); statistics in float64."""
    d = sae.d_model
    fired = torch.zeros(sae.d_sae, dtype=torch.bool, device=sae.W_enc.device)
    n = l0 = sse = cos = 0.0
    s1 = torch.zeros(d, dtype=torch.float64)
    s2 = 0.0
    loss = {"clean": 0.0, "spliced": 0.0, "zero": 0.0}
    count = 0
    batches = ids.split(batch_size)
    for b, batch in enumerate(batches):
        batch = batch.to(lm.device)
        seen: dict[str, torch.Tensor] = {}

        def splice(act: torch.Tensor) -> torch.Tensor:
            x = act[:, 1:]
            acts = sae.encode(x.to(sae.W_enc.dtype))
            recon = sae.decode(acts)
            seen.update(x=x.double(), recon=recon.double(), acts=acts)
            return torch.cat([act[:, :1], recon.to(act.dtype)], dim=1)

        def zero(act: torch.Tensor) -> torch.Tensor:
            return torch.cat([act[:, :1], torch.zeros_like(act[:, 1:])], dim=1)

        for name, edit in (("clean", None), ("spliced", splice), ("zero", zero)):
            with hook(lm, hook_name, edit) if edit else nullcontext():
                logits = lm.model(input_ids=batch).logits
            total, k = _loss(logits, batch)
            loss[name] += total
        count += k
        x, recon, acts = seen["x"].flatten(0, 1).cpu(), seen["recon"].flatten(0, 1).cpu(), seen["acts"].flatten(0, 1)
        active = acts > 0
        n += x.shape[0]
        l0 += float(active.sum())
        fired |= active.any(0)
        sse += float(((x - recon) ** 2).sum())
        s1 += x.sum(0)
        s2 += float((x ** 2).sum())
        cos += float(torch.nn.functional.cosine_similarity(x, recon, dim=-1).nan_to_num(0.0).sum())
        progress((b + 1) / len(batches), f"evaluated {int(n)} tokens")
    variance = s2 - float((s1 ** 2).sum()) / n  # sum over tokens of |x - mean|^2
    return Metrics(tokens=int(n), l0=l0 / n, fvu=sse / variance if variance > 0 else float("inf"), cosine=cos / n,
                   clean_loss=loss["clean"] / count, spliced_loss=loss["spliced"] / count,
                   zero_ablation_loss=loss["zero"] / count, dead_fraction=1.0 - float(fired.float().mean()))
