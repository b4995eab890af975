"""Every row's ``Exp(1)`` noise in one CUDA kernel, as each row's own ``torch.Generator`` would draw it.

Sampling needs one ``exponential_`` per row per step (each row has its own seed, as Neuronpedia's
``torch.manual_seed(seed)`` gives it): 1,024 rows are 1,024 kernel launches a step. PyTorch's CUDA
generator is Philox4x32-10 through cuRAND, so a row's stream is a pure function of (seed, offset, element):

- ``exponential_`` on ``numel`` elements runs PyTorch's grid-stride distribution kernel
  (``ATen/native/cuda/DistributionTemplates.h``: ``calc_execution_policy``,
  ``distribution_elementwise_grid_stride_kernel``): 256-thread blocks, ``grid = min(ceil(numel / 256),
  SMs × maxThreadsPerSM / 256)``, stride ``S = 256 × grid``; thread ``t`` calls ``curand_init(seed, t,
  offset)`` and each ``curand_uniform4`` call ``k`` gives 4 floats, lane ``i`` going to element
  ``t + S × (4k + i)``; the generator's offset then grows by ``4 × ceil(numel / 4S)``.
- cuRAND's Philox (``curand_philox4x32_x.h``): counter ``(offset / 4 + k, subsequence t)`` as four 32-bit
  words, key ``(seed lo, seed hi)``, ten rounds; ``curand_uniform`` maps ``x`` to ``x × 2⁻³² + 2⁻³³``.
- ``transformation::exponential`` on CUDA: ``-log(u)``, where ``u ≥ 1 − ε/2`` gives ``ε/2``, cast to the
  tensor's dtype.

``RowNoise`` evaluates that for all rows in one Triton kernel. Nothing here is trusted blindly:
``engine.generate`` uses it only where a check, once per device, dtype and row length, finds it equal bit
for bit to each row's own generator (``matching_transform``); else it draws per row. On a CPU (mt19937) it
is never used. Measured on an H200 (torch 2.11, 1,024 rows × 256,000): 1.3 ms against 10 ms per row.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache

import torch

BLOCK_THREADS = 256  # PyTorch's block_size_bound
UNROLL = 4  # float4 from curand_uniform4, for float, half and bfloat16 tensors
BLOCK = 1024  # elements per Triton program


def grid_stride(numel: int, device: torch.device) -> int:
    """``S``: threads in PyTorch's distribution launch for ``numel`` elements on ``device``."""
    props = torch.cuda.get_device_properties(device)
    grid = min(-(-numel // BLOCK_THREADS), props.multi_processor_count * (props.max_threads_per_multi_processor // BLOCK_THREADS))
    return BLOCK_THREADS * grid


def counter_offset(numel: int, stride: int) -> int:
    """How far one ``exponential_`` of ``numel`` elements moves the generator's Philox offset."""
    return ((numel - 1) // (stride * UNROLL) + 1) * 4


@lru_cache(maxsize=None)
def kernel(interpret: bool = False):
    """The Triton kernel, imported on first use (Triton is loaded only where it runs); ``interpret``: through
    Triton's interpreter, on a CPU (tests)."""
    if interpret:  # read as Triton's own library is wrapped on import, and at every launch: set for good
        os.environ["TRITON_INTERPRET"] = "1"  # (tests alone ask for it, in a process that has not imported Triton)
    import triton
    import triton.language as tl
    from triton.language.extra import libdevice

    from saejobs.engine import philox_kernel

    philox_kernel.tl, philox_kernel.libdevice = tl, libdevice
    return triton.jit(philox_kernel.noise)


class Logarithm(StrEnum):
    """The logarithm the kernel takes (``philox_kernel.noise``'s ``LOG`` is the member's position). To add
    one: a member here and its branch in ``philox_kernel.noise``."""

    FAST = "fast"  # __logf (lg2.approx × ln 2): PyTorch's at::log for float in CUDA code
    ACCURATE = "accurate"  # logf
    TRITON = "triton"  # tl.log: the only one Triton's interpreter has

    @property
    def code(self) -> int:
        return list(Logarithm).index(self)


@dataclass(frozen=True)
class Transform:
    """How uniforms become ``Exp(1)``: the logarithm and whose ε sets the near-1 threshold. PyTorch's
    ``ExponentialFunctor`` calls ``transformation::exponential<accscalar_t>`` (float's ε for float, half and
    bfloat16) and ``at::log`` on a float is ``__logf`` in CUDA code; measured on an H200 (torch 2.11), plain
    ``logf`` differed in 85% of float32 draws. ``matching_transform`` tries ``TRANSFORMS`` in order."""

    log: Logarithm = Logarithm.FAST
    eps_of: str = "float32"  # "float32" or "dtype"

    def half_eps(self, dtype: torch.dtype) -> float:
        return torch.finfo(torch.float32 if self.eps_of == "float32" else dtype).eps / 2


TRANSFORMS = tuple(Transform(log, eps) for log in (Logarithm.FAST, Logarithm.ACCURATE) for eps in ("float32", "dtype"))


def launch(out: torch.Tensor, words: tuple[torch.Tensor, torch.Tensor], offset: torch.Tensor, stride: int, *,
           raw: bool = False, transform: Transform = Transform(), interpret: bool = False) -> None:
    """Fill ``out`` (B, V) with each row's draw at the generator offset ``offset`` (a one-element int64
    tensor on ``out``'s device); ``words``: each row's seed as its two 32-bit halves (``seed_words``). ``raw``:
    the 32-bit Philox outputs as int64 instead (for tests); ``interpret``: through Triton's interpreter."""
    B, V = out.shape
    half_eps = transform.half_eps(out.dtype) if out.is_floating_point() else 0.0
    log = (Logarithm.TRITON if interpret else transform.log).code
    kernel(interpret)[(B, -(-V // BLOCK))](out, *words, offset, V, stride, half_eps, RAW=raw, LOG=log, BLOCK=BLOCK)


def seed_words(seeds: list[int], device) -> tuple[torch.Tensor, torch.Tensor]:
    """(low, high) 32-bit halves of each seed as ``manual_seed`` takes it (modulo 2**64), int64 tensors: the
    Philox key. Split once per generation, not at every draw."""
    seeds = [s % (1 << 64) for s in seeds]
    return (torch.tensor([s & 0xFFFFFFFF for s in seeds], dtype=torch.int64, device=device),
            torch.tensor([s >> 32 for s in seeds], dtype=torch.int64, device=device))


class RowNoise:
    """All rows' streams: row b starts where ``torch.Generator(device).manual_seed(seeds[b])`` starts, and
    every ``exponential`` moves all rows on as one ``exponential_`` of a row's length would."""

    def __init__(self, seeds: list[int], device: torch.device, transform: Transform = Transform()):
        self.words = seed_words(seeds, device)
        self.offset = torch.zeros(1, dtype=torch.int64, device=device)
        self.transform = transform

    def exponential(self, like: torch.Tensor) -> torch.Tensor:
        """(B, V) noise in ``like``'s dtype: row b equals ``q.exponential_(1, generator=gen_b)`` on a [V] row."""
        out = torch.empty_like(like)
        stride = grid_stride(like.shape[-1], like.device)
        launch(out, self.words, self.offset, stride, transform=self.transform)
        self.offset += counter_offset(like.shape[-1], stride)
        return out


_HOLDS: dict[tuple, Transform | None] = {}


def matching_transform(device: torch.device, dtype: torch.dtype, numel: int) -> Transform | None:
    """The first of ``TRANSFORMS`` with which ``RowNoise`` equals per-row ``exponential_`` bit for bit on this
    device, dtype and row length (a few seeds, a 64-bit one too, three consecutive draws), checked once each;
    None when none does, without CUDA or without Triton: a PyTorch or cuRAND that draws otherwise costs speed,
    not exactness."""
    key = (str(device), dtype, numel)
    if key not in _HOLDS:
        _HOLDS[key] = None
        if torch.device(device).type == "cuda":
            seeds = [0, 42, 7 + (1 << 40), (1 << 64) - 3]
            refs = []
            gens = [torch.Generator(device=device).manual_seed(s) for s in seeds]
            for _ in range(3):
                ref = torch.empty((len(seeds), numel), dtype=dtype, device=device)
                for b, g in enumerate(gens):
                    ref[b].exponential_(1, generator=g)
                refs.append(ref)
            for transform in TRANSFORMS:
                try:
                    noise = RowNoise(seeds, device, transform)
                    if all(torch.equal(noise.exponential(ref), ref) for ref in refs):
                        _HOLDS[key] = transform
                        break
                except Exception:  # noqa: BLE001 -- no Triton, a compile error: the next, or the per-row path
                    continue
    return _HOLDS[key]
