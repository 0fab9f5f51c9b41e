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
