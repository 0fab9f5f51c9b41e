"""Numpy golden models for the bit-exact FP components in :mod:`rtl.arith.fp`.

All functions are vectorised and operate on arrays of raw IEEE bit patterns
(``uint16`` for binary16, ``uint32`` for binary32). NaN results are
canonicalised to ``canonical_nan32`` / ``canonical_nan16`` (sign 0, quiet),
matching the hardware convention.
"""

import numpy as np

__all__ = [
    "canonical_nan16",
    "canonical_nan32",
    "fp16_mul",
    "fp32_add",
    "fp32_to_fp16",
    "special_values16",
    "special_values32",
    "random16",
    "random32_add_pairs",
    "random32_cvt",
]

canonical_nan32 = 0x7FC00000
canonical_nan16 = 0x7E00


def _u16(x):
    return np.asarray(x).astype(np.uint16, copy=False)


def _u32(x):
    return np.asarray(x).astype(np.uint32, copy=False)


def fp16_mul(a_bits, b_bits):
    """Exact binary16 x binary16 -> binary32 product (bit patterns)."""
    a = _u16(a_bits).view(np.float16).astype(np.float32)
    b = _u16(b_bits).view(np.float16).astype(np.float32)
    with np.errstate(all="ignore"):
        p = np.multiply(a, b, dtype=np.float32)
    out = p.view(np.uint32).copy()
    out[np.isnan(p)] = canonical_nan32
    return out


def fp32_add(a_bits, b_bits):
    """binary32 + binary32 rounded to nearest even (bit patterns)."""
    a = _u32(a_bits).view(np.float32)
    b = _u32(b_bits).view(np.float32)
    with np.errstate(all="ignore"):
        s = np.add(a, b, dtype=np.float32)
    out = s.view(np.uint32).copy()
    out[np.isnan(s)] = canonical_nan32
    return out


def fp32_to_fp16(a_bits):
    """binary32 -> binary16 conversion rounded to nearest even (bit patterns)."""
    a = _u32(a_bits).view(np.float32)
    with np.errstate(all="ignore"):
        h = a.astype(np.float16)
    out = h.view(np.uint16).copy()
    out[np.isnan(h)] = canonical_nan16
    return out


def _with_neg16(pos):
    pos = np.asarray(sorted(set(pos)), dtype=np.uint16)
    return np.concatenate([pos, pos | np.uint16(0x8000)])


def _with_neg32(pos):
    pos = np.asarray(sorted(set(pos)), dtype=np.uint32)
    return np.concatenate([pos, pos | np.uint32(0x80000000)])


def special_values16():
    """Interesting binary16 bit patterns (both signs)."""
    pos = [
        0x0000,  # zero
        0x0001,  # min subnormal
        0x0002,
        0x0155,
        0x0200,  # half of min normal
        0x03FF,  # max subnormal
        0x0400,  # min normal
        0x0401,
        0x1000,
        0x2E66,  # ~0.1
        0x3555,  # ~1/3
        0x3BFF,  # largest < 1
        0x3C00,  # 1.0
        0x3C01,  # 1 + ulp
        0x3E00,  # 1.5
        0x3FFF,
        0x4000,  # 2.0
        0x5BFF,
        0x7800,  # 32768
        0x7BFE,
        0x7BFF,  # max finite 65504
        0x7C00,  # inf
        0x7C01,  # sNaN
        0x7D55,  # sNaN with payload
        0x7E00,  # qNaN
        0x7FFF,  # qNaN all-ones payload
    ]
    return _with_neg16(pos)


def special_values32():
    """Interesting binary32 bit patterns (both signs).

    Includes subnormal boundaries, values around 1.0 (cancellation and
    rounding ties when added), values whose sum overflows after rounding, and
    values at binary16 conversion boundaries (overflow, subnormal rounding,
    round-to-zero thresholds, ties).
    """
    pos = [
        0x00000000,  # zero
        0x00000001,  # min subnormal
        0x00000002,
        0x00000003,
        0x00400000,  # mid subnormal
        0x007FFFFF,  # max subnormal
        0x00800000,  # min normal
        0x00800001,
        0x00FFFFFF,
        0x01000000,
        0x0C000000,  # 2^-103
        0x33000000,  # 2^-25 (half fp16 min subnormal: ties to zero)
        0x33000001,  # just above 2^-25: rounds to fp16 min subnormal
        0x337FFFFF,
        0x33800000,  # 2^-24 = fp16 min subnormal
        0x33C00000,  # 1.5 * 2^-24: tie -> 2^-23
        0x34200000,  # 2.5 * 2^-24: tie -> 2 * 2^-24
        0x387FC000,  # fp16 max subnormal
        0x387FE000,  # tie between fp16 max subnormal and min normal
        0x387FF000,  # rounds up to fp16 min normal
        0x38800000,  # fp16 min normal 2^-14
        0x3F7FFFFF,  # largest < 1
        0x3F800000,  # 1.0
        0x3F800001,  # 1 + ulp
        0x3F801000,  # 1 + fp16 half-ulp (tie, even -> 1.0)
        0x3F801001,  # just above tie
        0x3F803000,  # tie, odd -> round up
        0x3FC00000,  # 1.5
        0x3FFFFFFF,
        0x40000000,  # 2.0
        0x4B000000,  # 2^23
        0x4B7FFFFF,
        0x4C000000,  # 2^25
        0x477FE000,  # 65504 = fp16 max finite
        0x477FEFFF,  # just below 65520: rounds to 65504
        0x477FF000,  # 65520: tie -> inf in fp16
        0x47800000,  # 65536
        0x7E967699,  # 1e38
        0x7F000000,  # 2^127
        0x7F7FFFFE,
        0x7F7FFFFF,  # max finite
        0x7F800000,  # inf
        0x7F800001,  # sNaN
        0x7FA00000,  # sNaN
        0x7FC00000,  # qNaN
        0x7FFFFFFF,  # qNaN all-ones payload
    ]
    return _with_neg32(pos)


# --------------------------------------------------------------------------
# Random operand generators (shared by the unit tests and the Verilator test)
# --------------------------------------------------------------------------


def _signs(rng, n, dtype, bit):
    return rng.integers(0, 2, n, dtype=dtype) << dtype(bit)


def random16(rng, n):
    """``n`` binary16 patterns: 1/3 uniform bits, 1/3 subnormals/zeros, 1/3
    magnitudes in [2^-3, 2^4) (products that stay in an ordinary range)."""
    k = n // 3
    u = rng.integers(0, 1 << 16, n - 2 * k, dtype=np.uint16)
    sub = rng.integers(0, 0x400, k, dtype=np.uint16) | _signs(rng, k, np.uint16, 15)
    near = rng.integers(0x3000, 0x5000, k, dtype=np.uint16) | _signs(rng, k, np.uint16, 15)
    out = np.concatenate([u, sub, near])
    return out[rng.permutation(n)]


def random32_add_pairs(rng, n):
    """``n`` binary32 operand pairs for addition, from a mix of distributions:
    uniform bit patterns; exponents within +-3 of each other (random signs:
    cancellation and rounding); equal exponents, opposite signs and nearly
    equal significands (massive cancellation); subnormal / min-normal region;
    and one operand near max-finite (overflow after rounding)."""
    k = n // 6
    nu = n - 4 * k
    a_u = rng.integers(0, 1 << 32, nu, dtype=np.uint32)
    b_u = rng.integers(0, 1 << 32, nu, dtype=np.uint32)
    # close exponents
    a_c = rng.integers(0, 1 << 32, k, dtype=np.uint32) & np.uint32(0xBFFFFFFF)
    exp = ((a_c >> np.uint32(23)) & np.uint32(0xFF)).astype(np.int64) + rng.integers(-3, 4, k)
    exp = np.clip(exp, 0, 254).astype(np.uint32)
    b_c = (rng.integers(0, 1 << 32, k, dtype=np.uint32) & np.uint32(0x807FFFFF)) | (exp << np.uint32(23))
    # massive cancellation: same exponent, opposite sign, few low bits differ
    a_m = rng.integers(0, 1 << 32, k, dtype=np.uint32) & np.uint32(0xFF7FFFFF)
    flip = rng.integers(0, 1 << 8, k, dtype=np.uint32) >> rng.integers(0, 9, k, dtype=np.uint32)
    b_m = (a_m ^ flip) ^ np.uint32(0x80000000)
    # subnormal / min-normal region
    a_s = rng.integers(0, 0x01800000, k, dtype=np.uint32) | _signs(rng, k, np.uint32, 31)
    b_s = rng.integers(0, 0x01800000, k, dtype=np.uint32) | _signs(rng, k, np.uint32, 31)
    # near overflow: large exponent, with the other operand a few exponents lower
    a_o = rng.integers(0x7E000000, 0x7F800000, k, dtype=np.uint32) | _signs(rng, k, np.uint32, 31)
    b_o = (a_o & np.uint32(0x80000000)) | (
        rng.integers(0x7E000000, 0x7F800000, k, dtype=np.uint32) - rng.integers(0, 30, k, dtype=np.uint32) * np.uint32(1 << 23))
    a = np.concatenate([a_u, a_c, a_m, a_s, a_o])
    b = np.concatenate([b_u, b_c, b_m, b_s, b_o])
    swap = rng.integers(0, 2, n).astype(bool)
    a, b = np.where(swap, b, a), np.where(swap, a, b)
    perm = rng.permutation(n)
    return a[perm], b[perm]


def random32_cvt(rng, n):
    """``n`` binary32 patterns for conversion to binary16: 1/3 uniform bits;
    2/3 with exponents spanning binary16's range and just outside it
    (2^-29 .. 2^17), half of those with the low 12 fraction bits cleared or
    set to a tie pattern so that exact ties are frequent."""
    k = n // 3
    u = rng.integers(0, 1 << 32, n - 2 * k, dtype=np.uint32)
    exp = rng.integers(98, 145, 2 * k, dtype=np.uint32)
    r = (rng.integers(0, 1 << 32, 2 * k, dtype=np.uint32) & np.uint32(0x807FFFFF)) | (exp << np.uint32(23))
    half = k
    r[:half] &= np.uint32(0xFFFFE000)
    r[: half // 2] |= np.uint32(0x1000)  # tie pattern for normal results
    out = np.concatenate([u, r])
    return out[rng.permutation(n)]
