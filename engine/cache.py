"""What a worker keeps loaded between jobs: models and SAEs, least recently used first out.

A second sweep on the same model and SAE finds both here and skips all loading. The budget is in
bytes of weights (``SAEJOBS_CACHE_BYTES``; default half the RAM, or 60% of the GPU's memory, the rest
left to KV caches and activations: batches are sized by the free memory). A new item's size is
estimated before it loads and older items are evicted first, so a second model on a full GPU
replaces the first instead of running out of memory beside it.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import psutil

GPU_SHARE = 0.6  # of a GPU's memory for cached weights; the rest for KV caches and activations


def default_device() -> str:
    """``SAEJOBS_DEVICE``, else ``cuda`` where torch sees a GPU. Asked at a cache's first load, not when the cache is
    made: a job that loads nothing (a download) never imports torch."""
    if named := os.environ.get("SAEJOBS_DEVICE"):
        return named
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def default_budget(device: str) -> int:
    env = os.environ.get("SAEJOBS_CACHE_BYTES")
    if env:
        return int(float(env))
    if device.startswith("cuda"):
        import torch

        if torch.cuda.is_available():
            return int(torch.cuda.get_device_properties(torch.device(device)).total_memory * GPU_SHARE)
    return psutil.virtual_memory().total // 2


def nbytes(obj: Any) -> int:
    import torch

    module = getattr(obj, "model", obj)
    if isinstance(module, torch.nn.Module):
        return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])
    return 0


class EngineCache:
    def __init__(self, budget: int | None = None, device: str | None = None):
        self._device, self._budget = device, budget  # None: the defaults, decided at first use
        self._items: OrderedDict[tuple, tuple[Any, int]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @property
    def device(self) -> str:
        if self._device is None:
            self._device = default_device()
        return self._device

    @property
    def budget(self) -> int:
        if self._budget is None:
            self._budget = default_budget(self.device)
        return self._budget

    def get(self, key: tuple, load: Callable[[], Any], estimate: int | None = None) -> Any:
        """The cached value, or ``load()``'s; with ``estimate`` (bytes), room is made before loading."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.hits += 1
                return self._items[key][0]
        self.misses += 1
        if estimate:
            with self._lock:
                evicted = self._evict(keep=None, incoming=estimate)
            if evicted:
                release_memory(self.device)
        value = load()
        size = nbytes(value)
        with self._lock:
            self._items[key] = (value, size)
            self._items.move_to_end(key)
            self._evict(keep=key)
        return value

    def _evict(self, keep: tuple | None, incoming: int = 0) -> int:
        """Drop least recently used items until the rest (and ``incoming`` bytes) fit; never ``keep``."""
        evicted = 0
        while (sum(s for _, s in self._items.values()) + incoming > self.budget
               and any(k != keep for k in self._items)):
            oldest = next(k for k in self._items if k != keep)
            del self._items[oldest]
            evicted += 1
        return evicted

    def model(self, source: str, dtype=None):
        import torch

        from saejobs.engine.models import estimate_bytes, load_model

        dtype = dtype or torch.float32
        return self.get(("model", source, str(dtype), self.device),
                        lambda: load_model(source, dtype=dtype, device=self.device), estimate_bytes(source, dtype))

    def sae(self, entry, folder: Path):
        from saejobs.engine.sae import load_sae

        weights = 4 * (2 * entry.d_model * entry.d_sae + 3 * entry.d_sae + entry.d_model)  # float32, threshold floor
        return self.get(("sae", entry.id, str(folder), self.device), lambda: load_sae(entry, folder, device=self.device),
                        weights)

    def describe(self) -> list[dict]:
        with self._lock:
            return [{"kind": k[0], "name": k[1], "bytes": s} for k, (_, s) in self._items.items()]

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


def release_memory(device) -> None:
    """Give evicted weights back before the next load (Python's references, then CUDA's allocator cache)."""
    import gc

    gc.collect()
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.empty_cache()
