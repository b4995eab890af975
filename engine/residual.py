"""The unsteered residual stream, captured while a chunk generates, so that scoring recomputes only what
steering changed (issue 27 item 4).

Steering edits the stream at its hooks; every layer below the lowest hook of a chunk (steering's, and the
SAEs' that read concepts) computes what an unsteered pass over the same tokens computes. So generation
records the input of that layer, ``layer``, for the prompt and every token it feeds, and one extra step, cut
short once that layer's input is recorded, feeds the last generated token. Scoring then runs the model
with the layers below ``layer`` replaced by pass-through stubs and the recorded stream substituted at its
input, over generation's own layout (prompts left-padded to one width, completions from the same column):
the layers from ``layer`` up and the output projection, not the whole model. The stream differs from a
one-pass forward's only in rounding (generation computed it a token at a time); ``tests/test_residual.py``
holds the scores to an unpadded plain-torch pass (NLL within 1e-4, concept within 1e-3 relative).

The record is one (rows, prompt width + tokens, d_model) tensor in the model's dtype, written in place: on
CUDA the graph-replayed decode step writes it through a device-side column index.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

from saejobs.engine.hooks import hook


class StreamRecorded(Exception):
    """Raised inside the final, partial step once the stream at ``layer`` is recorded: nothing above it runs."""


class ResidualCapture:
    """The stream entering decoder layer ``layer`` for a chunk of ``rows`` × (``width`` prompt columns +
    ``n`` tokens)."""

    def __init__(self, lm, layer: int, rows: int, width: int, n: int, device, dtype: torch.dtype):
        self.lm, self.layer, self.width, self.n = lm, layer, width, n
        self.stream = torch.zeros((rows, width + n, lm.config.hidden_size), dtype=dtype, device=device)
        self.column = torch.full((1,), width, dtype=torch.long, device=device)  # where the next fed token goes
        self.prompt_seen = False
        self.last = False  # the final step: record, then stop the forward pass

    @property
    def hook_name(self) -> str:
        return f"blocks.{self.layer}.hook_resid_pre"

    def record(self, act: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.stream[:, :self.width] = act
            self.prompt_seen = True
            return
        self.stream.index_copy_(1, self.column, act)
        if self.last:
            raise StreamRecorded

    def advance(self) -> None:
        """One more token fed (called on the host after each step; the column moves on the device)."""
        self.column.add_(1)


@contextmanager
def replaying(capture: ResidualCapture, rows: torch.Tensor, columns: slice = slice(None)) -> Iterator[None]:
    """Inside the block, a forward pass over ``rows``' (B, width + n) layout (or those of its ``columns``)
    skips the layers below ``capture.layer`` and starts that layer from the recorded stream."""
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
