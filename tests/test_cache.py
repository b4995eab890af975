"""The worker's engine cache: least recently used out first, within a byte budget."""

from __future__ import annotations

import torch

from saejobs.engine.cache import EngineCache


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


def test_room_is_made_before_a_new_item_loads():
    """With the new item's size known, the least recently used items go first: a second model on a
    full GPU replaces the first instead of running out of memory beside it."""
    cache = EngineCache(budget=4 * 250, device="cpu")
    cache.get(("m", "a"), lambda: module(100))
    cache.get(("m", "b"), lambda: module(100))
    held_during_load = []

    def load_c():
        held_during_load.extend(d["name"] for d in cache.describe())
        return module(150)
    cache.get(("m", "c"), load_c, estimate=4 * 150)
    assert held_during_load == ["b"]  # a went before c loaded: 400 + 600 fits, 800 + 600 would not
    assert [d["name"] for d in cache.describe()] == ["b", "c"]


def test_model_size_is_estimated_from_the_files_a_load_reads(tiny_gemma2_dir):
    from saejobs.engine.cache import nbytes
    from saejobs.engine.models import estimate_bytes, load_model

    lm, lm16 = load_model(str(tiny_gemma2_dir)), load_model(str(tiny_gemma2_dir), torch.bfloat16)
    for model, dtype in ((lm, torch.float32), (lm16, torch.bfloat16)):
        est, actual = estimate_bytes(str(tiny_gemma2_dir), dtype), nbytes(model)
        assert 0 <= actual - est <= actual * 0.001  # the weights; a few small buffers (rotary) are not in the files
    assert estimate_bytes("google/not-on-this-machine", torch.float32) is None
