"""Numpy golden models for the binary32 components in :mod:`rtl.arith.fp32`.

All functions are vectorised over arrays of raw bit patterns (``uint32`` for
binary32, ``uint16`` for binary16); NaN results are canonicalised to
``canonical_nan32`` (0x7FC00000), as in :mod:`sim.golden.fp`.
"""

import numpy as np

from .fp import canonical_nan32, fp32_add, fp32_to_fp16  # noqa: F401  (re-exported)

__all__ = [
    "canonical_nan32",
    "fp32_add",
    "fp32_sub",
    "fp32_mul",
    "fp32_max",
    "fp32_min",
    "fp32_ldexp",
    "fp32_frexp",
    "fp16_to_fp32",
    "fp32_to_fp16",
    "is_nan32",
    "f32",
    "bits",
    "random32",
]


def _u32(x):
    return np.asarray(x).astype(np.uint32, copy=False)


def f32(b):
    """Bit patterns -> float32 values (a view, no conversion)."""
    return _u32(b).view(np.float32)


def bits(x):
    """float32 values -> bit patterns, NaN canonicalised."""
    x = np.asarray(x, dtype=np.float32)
    out = x.view(np.uint32).copy()
    out[np.isnan(x)] = canonical_nan32
    return out


def is_nan32(b):
    b = _u32(b)
    inf = np.uint32(0x7F800000)
    return ((b & inf) == inf) & ((b & np.uint32(0x007FFFFF)) != 0)


def fp32_mul(a_bits, b_bits):
    """binary32 * binary32 rounded to nearest even (bit patterns)."""
    with np.errstate(all="ignore"):
        return bits(np.multiply(f32(a_bits), f32(b_bits), dtype=np.float32))


def fp32_sub(a_bits, b_bits):
    """a - b, i.e. ``a + (b with its sign flipped)`` (bit patterns)."""
    return fp32_add(a_bits, _u32(b_bits) ^ np.uint32(0x80000000))


def _key(b):
    """Unsigned key whose order is IEEE totalOrder on non-NaN values (-0 < +0)."""
    b = _u32(b)
    return np.where(b >> np.uint32(31) != 0, ~b, b | np.uint32(0x80000000))


def fp32_max(a_bits, b_bits):
    """max(a, b); -0 < +0; any NaN operand -> canonical NaN."""
    a, b = np.broadcast_arrays(_u32(a_bits), _u32(b_bits))
    out = np.where(_key(a) > _key(b), a, b).astype(np.uint32)
    out[is_nan32(a) | is_nan32(b)] = canonical_nan32
    return out


def fp32_min(a_bits, b_bits):
    """min(a, b); -0 < +0; any NaN operand -> canonical NaN."""
    a, b = np.broadcast_arrays(_u32(a_bits), _u32(b_bits))
    out = np.where(_key(a) > _key(b), b, a).astype(np.uint32)
    out[is_nan32(a) | is_nan32(b)] = canonical_nan32
    return out


def fp32_ldexp(a_bits, n):
    """``a * 2^n`` rounded RNE to binary32 (one rounding, in the subnormal range).

    Computed as an exact float64 product (24-bit significand times a power of two
    inside float64's range) followed by one float64 -> float32 RNE conversion.
    """
    n = np.clip(np.asarray(n, dtype=np.int64), -1000, 1000)
    with np.errstate(all="ignore"):
        a = f32(a_bits).astype(np.float64)
        return bits((a * np.ldexp(1.0, n)).astype(np.float32))


def fp32_frexp(a_bits):
    """``(m_bits, e)``: a = m * 2^e with |m| in [1, 2) carrying a's sign (finite,
    nonzero a; other inputs give unspecified values)."""
    with np.errstate(all="ignore"):
        a = f32(a_bits).astype(np.float64)
        mant, exp = np.frexp(a)  # |mant| in [0.5, 1)
    m = bits((mant * 2.0).astype(np.float32))
    return m, (exp - 1).astype(np.int64)


def fp16_to_fp32(h_bits):
    """Exact binary16 -> binary32 (bit patterns); NaN -> canonical NaN."""
    h = np.asarray(h_bits).astype(np.uint16, copy=False).view(np.float16)
    return bits(h.astype(np.float32))


def random32(rng, n, lo_exp=0, hi_exp=255):
    """``n`` binary32 patterns: half uniform bits, half with biased exponents
    uniform in [lo_exp, hi_exp) and random sign/fraction."""
    k = n // 2
    u = rng.integers(0, 1 << 32, n - k, dtype=np.uint32)
    exp = rng.integers(lo_exp, hi_exp, k, dtype=np.uint32)
    r = rng.integers(0, 1 << 32, k, dtype=np.uint32) & np.uint32(0x807FFFFF)
    r |= exp << np.uint32(23)
    out = np.concatenate([u, r])
    return out[rng.permutation(n)]
