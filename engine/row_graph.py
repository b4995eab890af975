"""A per-row loop replayed as one CUDA graph: each row's kernels exactly as the row alone runs them, launched once.

Where a batched reduction does not round as the reference's one-row tensor does, ``engine.generate`` runs it
row by row (on the H200 at (1,024, 262,144): TransformerLens' ``logsumexp``, top-p's cumsum, and its sum in
float32). On a GPU that costs launches, not arithmetic: a few kernels a row, each several µs of host time.
Captured once per chunk as a CUDA graph and replayed, the same kernels on the same shapes run without the
host between them, so the values are the row-alone values by construction; the first replay is checked bit
for bit against the eager loop anyway, and a loop whose capture fails (a kernel that synchronises the host)
or whose replay differs (a kernel that is not deterministic) stays eager on that device from then on.
Measured on the H200 (2026-12-04, bench/results/2026-12-04-h200-row-graphs): 1,024 rows' ``logsumexp``
replayed in 25 ms a step (the first call, eager loop and capture, 200–320 ms), TransformerLens sampling 154 →
72 ms a step; the cumsum's replay differed from its eager loop, so it stays eager. Graphs are off where
``SAEJOBS_CUDA_GRAPHS=0`` (``saejobs worker --no-cuda-graphs``) and on CPUs, where there is nothing to save.
"""

from __future__ import annotations

from typing import Callable

import torch

from saejobs.engine.decode import capture_graph, graphs_enabled

Out = torch.Tensor | tuple[torch.Tensor, ...]
_OFF: set[tuple[str, str]] = set()  # (loop name, device) where a capture failed or its replay differed


class RowGraph:
    """``fn`` ((B, V) -> tensor or tuple of tensors, one fixed shape per instance's life: one chunk), eager on
    the first call and replayed from a graph after. The returned tensors are the graph's own: each call
    overwrites the last call's, so a caller uses them before calling again."""

    def __init__(self, name: str, fn: Callable[[torch.Tensor], Out]):
        self.name, self.fn = name, fn
        self._graph: torch.cuda.CUDAGraph | None = None
        self._in: torch.Tensor | None = None
        self._out: Out | None = None
        self._eager = False

    def __call__(self, x: torch.Tensor) -> Out:
        if self._graph is not None and x.shape == self._in.shape and x.dtype == self._in.dtype:
            self._in.copy_(x)
            self._graph.replay()
            return self._out
        key = (self.name, str(x.device))
        eager = self.fn(x)
        if self._eager or not graphs_here(x.device) or key in _OFF:
            return eager
        self._eager = True  # one attempt per instance, whatever happens
        try:
            self._in = x.clone()
            graph, out = capture_graph(lambda: self.fn(self._in))
            graph.replay()
            same = outputs_equal(out, eager)
        except Exception:  # noqa: BLE001 -- not capturable here (a host sync inside): the loop stays eager
            same = False
        if not same:
            _OFF.add(key)
            self._in = None
            return eager
        self._graph, self._out = graph, out
        return eager


def graphs_here(device: torch.device) -> bool:
    return device.type == "cuda" and graphs_enabled()


def outputs_equal(a: Out, b: Out) -> bool:
    """Two results of one loop (a tensor, or a tuple of them) equal bit for bit."""
    return all(torch.equal(u, v) for u, v in zip(_tuple(a), _tuple(b), strict=True))


def _tuple(out: Out) -> tuple[torch.Tensor, ...]:
    return out if isinstance(out, tuple) else (out,)
