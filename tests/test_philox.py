"""engine.philox's kernel against cuRAND's Philox4x32-10 as Random123 publishes it, on a CPU through Triton's
interpreter. The reference here is written from the Random123 specification (Salmon et al., SC'11) and checked
against its published known-answer vectors; the counter layout is PyTorch's grid-stride distribution kernel's
(engine/philox.py's docstring). Whether the whole draw equals PyTorch's own ``exponential_`` bit for bit can
only be seen on a GPU: engine.philox.matching_transform checks it there once per device, dtype and length."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from saejobs.engine import philox

M0, M1, W0, W1 = 0xD2511F53, 0xCD9E8D57, 0x9E3779B9, 0xBB67AE85
MASK = 0xFFFFFFFF


def philox4x32_10(ctr: tuple[int, int, int, int], key: tuple[int, int]) -> list[int]:
    c, k = list(ctr), list(key)
    for _ in range(10):
        p0, p1 = M0 * c[0], M1 * c[2]
        c = [(p1 >> 32) ^ c[1] ^ k[0], p1 & MASK, (p0 >> 32) ^ c[3] ^ k[1], p0 & MASK]
        k = [(k[0] + W0) & MASK, (k[1] + W1) & MASK]
    return c


def test_the_reference_gives_random123s_known_answers():
    """Random123 1.09 ``kat_vectors``, philox4x32 with 10 rounds."""
    assert philox4x32_10((0, 0, 0, 0), (0, 0)) == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    assert philox4x32_10((MASK,) * 4, (MASK,) * 2) == [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]
    assert philox4x32_10((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0)) == \
        [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]


def expected(seed: int, offset: int, v: int, stride: int) -> int:
    """Element v of one ``exponential_`` at generator ``offset``: thread v % S, curand_uniform4 call
    v // 4S, lane (v // S) % 4 of Philox at counter (offset / 4 + call, thread), key (seed lo, seed hi)."""
    call, lane, thread = v // (4 * stride), (v // stride) % 4, v % stride
    base = offset // 4 + call
    seed %= 1 << 64
    return philox4x32_10((base & MASK, base >> 32, thread, 0), (seed & MASK, seed >> 32))[lane]


SEEDS = [0, 42, 7 + (1 << 40), (1 << 64) - 3]  # the last one is negative in int64


@pytest.mark.parametrize("offset", [0, 4, 8, 4 << 34])
def test_the_kernel_draws_each_rows_philox_stream_in_pytorchs_layout(offset):
    """Four rows, each with its own seed; a small stride so that every lane and later curand calls are
    used; a row length that is not a multiple of the kernel's block; offsets past 32 bits."""
    stride, V = 8, 1100
    out = torch.full((len(SEEDS), V), -1, dtype=torch.int64)
    philox.launch(out, philox.seed_words(SEEDS, "cpu"), torch.tensor([offset]), stride, raw=True, interpret=True)
    want = [[expected(s, offset, v, stride) for v in range(V)] for s in SEEDS]
    assert out.tolist() == want


def exponential_of(raw: np.ndarray) -> torch.Tensor:
    """32-bit Philox outputs as ``Exp(1)`` in float32: curand_uniform, then -log with float's ε/2 near 1."""
    u = raw.astype(np.float32) * np.float32(2.0 ** -32) + np.float32(2.0 ** -33)
    half = np.float32(torch.finfo(torch.float32).eps / 2)
    return torch.from_numpy(-np.where(u >= np.float32(1) - half, -half, np.log(u)))


def test_the_transform_is_curand_uniform_then_minus_log():
    """x -> u = x·2⁻³² + 2⁻³³ (curand_uniform), then -log(u), with ε/2 where u ≥ 1 − ε/2; in float32
    then cast to nearest (here with the interpreter's logarithm, numpy's; float32 and float16: the interpreter
    does not round a cast to bfloat16 to nearest. The device's own logarithm and casts are checked there)."""
    stride, V = 16, 300
    raw = torch.empty((len(SEEDS), V), dtype=torch.int64)
    seeds, offset = philox.seed_words(SEEDS, "cpu"), torch.tensor([4])
    philox.launch(raw, seeds, offset, stride, raw=True, interpret=True)
    want = exponential_of(raw.numpy())
    for dtype in (torch.float32, torch.float16):
        out = torch.empty((len(SEEDS), V), dtype=dtype)
        philox.launch(out, seeds, offset, stride, interpret=True)
        assert torch.equal(out, want.to(dtype)) and (out > 0).all()


def test_the_offset_moves_as_pytorchs_does():
    """``calc_execution_policy``: 4 × ceil(numel / 4S) per draw, S the launch's threads (256 × grid, the grid
    at most SMs × maxThreadsPerSM / 256)."""
    assert philox.counter_offset(262144, 262144) == 4
    assert philox.counter_offset(600000, 270336) == 4
    assert philox.counter_offset(1081345, 270336) == 8
    assert philox.counter_offset(5_000_000, 270336) == 20


def test_no_batched_draw_without_cuda():
    """On a CPU the generator is mt19937: never Philox, so no transform matches and rows draw on their own."""
    assert philox.matching_transform(torch.device("cpu"), torch.float32, 4099) is None


COMPILE = """
import sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from saejobs.engine import philox

dtype, log = sys.argv[1], int(sys.argv[2])
sig = {"out_ptr": f"*{dtype}", "seed_lo_ptr": "*i64", "seed_hi_ptr": "*i64", "offset_ptr": "*i64", "V": "i32",
       "S": "i32", "half_eps": "fp32", "RAW": "constexpr", "LOG": "constexpr", "BLOCK": "constexpr"}
src = ASTSource(fn=philox.kernel(False), signature=sig, constexprs={"RAW": False, "LOG": log, "BLOCK": philox.BLOCK})
print(triton.compile(src, target=GPUTarget("cuda", 90, 32)).asm["ptx"])
"""


@pytest.mark.parametrize("dtype, log", [("fp32", 1), ("bf16", 0)])
def test_the_kernel_compiles_for_a_hopper_gpu_here(dtype, log):
    """Triton's real compiler (not the interpreter, so in a process of its own) builds the kernel for sm_90 on
    this CPU host, down to the PTX the GPU will run: cuRAND's mulhi, the logarithm asked for, the cast to
    nearest."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    ptx = subprocess.run([sys.executable, "-c", COMPILE, dtype, str(log)], capture_output=True, text=True, env=env,
                         check=True, timeout=300).stdout
    assert "mul.hi.u32" in ptx
    assert ("lg2.approx" in ptx) is (log == 0)
    assert ("cvt.rn.bf16.f32" in ptx) is (dtype == "bf16")
