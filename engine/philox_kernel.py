"""The Triton kernel of ``engine.philox`` (its docstring says what it reproduces and from which sources).

Plain Python until ``engine.philox.kernel`` gives it Triton's ``tl`` and ``libdevice`` as globals and compiles
it with ``triton.jit``: Triton (the ``cuda`` extra; PyTorch's CUDA wheels bring it) is imported only where a
kernel is built.
"""

from __future__ import annotations  # the annotations stay text until Triton reads them

tl = libdevice = None  # set by engine.philox.kernel


def noise(out_ptr, seed_lo_ptr, seed_hi_ptr, offset_ptr, V, S, half_eps,
          RAW: tl.constexpr, LOG: tl.constexpr, BLOCK: tl.constexpr):
    """Row ``program_id(0)``, elements of block ``program_id(1)``: cuRAND Philox4x32-10 (counter
    (offset / 4 + k, t), key (seed lo, seed hi)), lane ``(v // S) % 4``, then curand_uniform and PyTorch's
    exponential transform (or the raw 32 bits with ``RAW``); ``LOG`` picks the logarithm (``engine.philox.Logarithm``'s position)."""
    row = tl.program_id(0)
    v = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    inside = v < V
    k = v // (4 * S)
    lane = (v // S) % 4
    t = v % S
    base = tl.load(offset_ptr) // 4 + k  # the counter's low 64 bits (int64: an offset stays far below 2**63)
    c0 = (base & 0xFFFFFFFF).to(tl.uint32)
    c1 = (base >> 32).to(tl.uint32)
    c2 = t.to(tl.uint32)
    c3 = c2 * 0  # a builtin: Triton's own @jit helpers fail in an interpreter entered after import
    k0 = tl.load(seed_lo_ptr + row).to(tl.uint32)
    k1 = tl.load(seed_hi_ptr + row).to(tl.uint32)
    for _ in tl.static_range(10):
        m0 = tl.full(c0.shape, 0xD2511F53, tl.uint32)
        m1 = tl.full(c0.shape, 0xCD9E8D57, tl.uint32)
        hi0, lo0 = tl.umulhi(m0, c0), m0 * c0
        hi1, lo1 = tl.umulhi(m1, c2), m1 * c2
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = k0 + 0x9E3779B9
        k1 = k1 + 0xBB67AE85
    x = tl.where(lane == 0, c0, tl.where(lane == 1, c1, tl.where(lane == 2, c2, c3)))
    if RAW:
        tl.store(out_ptr + row * V + v, x.to(tl.int64), mask=inside)
    else:
        u = x.to(tl.float32) * 2.3283064365386963e-10 + 1.1641532182693481e-10
        if LOG == 0:  # __logf, which PyTorch's at::log is for float in CUDA code ("for peak bandwidth")
            log_u = libdevice.fast_logf(u)
        elif LOG == 1:  # logf, correctly rounded to within an ulp
            log_u = libdevice.log(u)
        else:  # Triton's interpreter (tests on a CPU) has no libdevice
            log_u = tl.log(u)
        e = tl.where(u >= 1.0 - half_eps, -half_eps, log_u)
        if out_ptr.dtype.element_ty == tl.float32:
            tl.store(out_ptr + row * V + v, -e, mask=inside)
        else:  # static_cast<scalar_t>: to nearest, ties to even
            tl.store(out_ptr + row * V + v, (-e).to(out_ptr.dtype.element_ty, fp_downcast_rounding="rtne"), mask=inside)

