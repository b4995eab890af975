"""The unsteered residual stream, captured while a chunk generates, so that scoring recomputes only what
steering changed (issue 27 item 4).

Steering edits the stream at its hooks; every layer below the lowest hook of a chunk (steering's, and the
SAEs' that read concepts) computes what an unsteered pass over the same tokens computes. So generation
records the stream there (``record_point``), for the prompt and every token it feeds, and one extra step, cut
short once it is recorded, feeds the last generated token. Where every hook of the lowest layer L is at
``resid_post`` (a residual SAE's, the usual case), the record is L's output taken before steering edits it
(its hook runs first), which is what an unsteered pass computes there: scoring starts at layer L + 1 and reads
those SAEs' concepts from the record itself. Otherwise it is L's input, and scoring runs L too. Scoring runs
the model with the layers below ``layer`` (the first it runs) replaced by pass-through stubs and the recorded
stream substituted where it was taken, over generation's own layout (prompts left-padded to one width,
completions from the same column): the layers from ``layer`` up and the output projection, not the whole
model. The stream differs from a one-pass forward's only in rounding (generation computed it a token at a
time); ``tests/test_residual.py`` holds the scores to an unpadded plain-torch pass (NLL within 1e-4, concept
within 1e-3 relative).

The record is one (rows, prompt width + tokens, d_model) tensor in the model's dtype, written in place: on
CUDA the graph-replayed decode step writes it through a device-side column index.

Rows that generation did not steer (a sweep's DEFAULT rows, zero-strength additive ones) computed the
unsteered model's own next-token distribution at every step: the capture keeps each step's log-probability of
the token chosen (``logp``), so scoring runs no pass for such a row when its concepts are read at the record
point (``known``).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch

from saejobs.engine.hook_names import RESID_PRE, HookPoint, parse_hook
from saejobs.engine.hooks import PassEnded, hook
from saejobs.engine.registry.entry import SaeSite


def record_point(hooks: list[str]) -> str:
    """Where a chunk whose steering and concept hooks are ``hooks`` records its unsteered stream: the lowest
    layer's ``resid_post`` when all of that layer's hooks are there (the record is taken before steering edits
    it), else that layer's ``resid_pre``."""
    points = [parse_hook(h) for h in hooks]
    low = min(p.layer for p in points)
    site = SaeSite.RES if all(p.site == SaeSite.RES for p in points if p.layer == low) else RESID_PRE
    return HookPoint(low, site).name


class ResidualCapture:
    """The unsteered stream at ``hook_name`` (a ``record_point``) for a chunk of ``rows`` × (``width`` prompt
    columns + ``n`` tokens); ``layer``: the first decoder layer scoring runs (the one the stream enters).
    ``unsteered``: the rows generation does not steer; ``logp`` (their count, ``n``) holds each one's
    log-probability of its token at each step (float32), row ``unsteered[i]`` in line ``i``."""

    def __init__(self, lm, hook_name: str, rows: int, width: int, n: int, device, dtype: torch.dtype,
                 unsteered: Sequence[int] = ()):
        point = parse_hook(hook_name)
        if point.site not in (RESID_PRE, SaeSite.RES):
            raise ValueError(f"a stream is recorded at resid_pre or resid_post, not {hook_name}")
        self.lm, self.hook_name, self.width, self.n = lm, point.name, width, n
        self.layer = point.layer + (point.site == SaeSite.RES)
        self.stream = torch.zeros((rows, width + n, lm.config.hidden_size), dtype=dtype, device=device)
        self.column = torch.full((1,), width, dtype=torch.long, device=device)  # where the next fed token goes
        self.prompt_seen = False
        self.last = False  # the final step: record, then stop the forward pass
        self.unsteered = {int(b): i for i, b in enumerate(dict.fromkeys(unsteered))}  # row -> its line of ``logp``
        self.plain = torch.tensor(list(self.unsteered), dtype=torch.long, device=device)
        self.logp = torch.zeros((len(self.unsteered), n), dtype=torch.float32, device=device)

    def known(self, row: int) -> bool:
        """Whether ``row``'s log-probabilities came with its generation (it was not steered)."""
        return row in self.unsteered

    def plain_logits(self, logits: torch.Tensor) -> torch.Tensor | None:
        """The unsteered rows' (V-wide) logits of a step, copied before sampling may edit them in place."""
        return logits.index_select(0, self.plain).float() if self.unsteered else None

    def note(self, step: int, plain: torch.Tensor | None, chosen: torch.Tensor) -> None:
        """The unsteered rows' log-probabilities of ``chosen`` (all rows' tokens) at ``step``: one set of
        operations whatever the number of rows."""
        if plain is not None:
            picked = plain.gather(1, chosen.index_select(0, self.plain)[:, None])[:, 0]
            self.logp[:, step] = picked - torch.logsumexp(plain, dim=1)

    def record(self, act: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.stream[:, :self.width] = act
            self.prompt_seen = True
            return
        self.stream.index_copy_(1, self.column, act)
        if self.last:
            raise PassEnded  # the final, partial step: the stream is recorded, nothing above it runs

    def advance(self) -> None:
        """One more token fed (called on the host after each step; the column moves on the device)."""
        self.column.add_(1)


@contextmanager
def replaying(capture: ResidualCapture, rows: torch.Tensor, columns: slice = slice(None)) -> Iterator[None]:
    """Inside the block, a forward pass over ``rows``' (B, width + n) layout (or those of its ``columns``)
    skips the layers below ``capture.layer`` and starts that layer from the recorded stream (a hook at the
    record point entered inside the block sees the record)."""
    layers = capture.lm.layers
    below = [layers[i] for i in range(capture.layer)]
    stream = capture.stream.index_select(0, rows)[:, columns]
    try:
        for i in range(capture.layer):
            layers[i] = _PassThrough()
        with hook(capture.lm, capture.hook_name, lambda a: stream):
            yield
    finally:
        for i, layer in enumerate(below):
            layers[i] = layer


class _PassThrough(torch.nn.Module):
    """A decoder layer skipped: its output is its input (transformers 5.x layers return the stream)."""

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states
