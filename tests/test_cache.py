"""The worker's engine cache: least recently used out first, within a byte budget."""

from __future__ import annotations

import torch

from engine.cache import EngineCache


def module(n_floats: int) -> torch.nn.Module:
    m = torch.nn.Linear(1, 1, bias=False)
    m.weight = torch.nn.Parameter(torch.zeros(n_floats, 1))
    return m


def test_lru_eviction_within_budget():
    cache = EngineCache(budget=4 * 250, device="cpu")
    loads = []

    def loader(name):
        def load():
            loads.append(name)
            return module(100)
        return load

    a = cache.get(("m", "a"), loader("a"))
    cache.get(("m", "b"), loader("b"))
    assert cache.get(("m", "a"), loader("a")) is a  # hit: no reload, and a is now the most recent
    cache.get(("m", "c"), loader("c"))  # 3 × 400 bytes > 1000: b (least recent) goes
    assert [d["name"] for d in cache.describe()] == ["a", "c"]
    cache.get(("m", "b"), loader("b"))
    assert loads == ["a", "b", "c", "b"] and (cache.hits, cache.misses) == (1, 4)


def test_an_item_larger_than_the_budget_is_kept_alone():
    cache = EngineCache(budget=10, device="cpu")
    cache.get(("m", "a"), lambda: module(100))
    cache.get(("m", "b"), lambda: module(100))
    assert [d["name"] for d in cache.describe()] == ["b"]
