"""Golden model of the NPU vector unit (:mod:`rtl.npu.vector`), bit for bit.

Every op is written out in numpy with the hardware's algorithm and order of
operations: each step is one binary32 operation rounded to nearest even
(:mod:`sim.golden.fp32`, numpy ``float32`` arithmetic, canonical NaN). The
constants (clamps, Cody-Waite split of ln 2, polynomial, seed tables, GELU
coefficients) are imported from the RTL module, so they are written once.
Arrays are ``uint32`` bit patterns with the lanes on the last axis; any leading
axes are independent vectors.

Compositions (built only from vector-unit ops, as generators of op requests so the
same sequence drives the golden model and the RTL): :func:`softmax`,
:func:`layernorm`, :func:`residual_add`. A vector of ``n`` elements is cut into
``ceil(n / lanes)`` chunks of ``lanes`` elements, chunk ``c`` holding elements
``c*lanes .. c*lanes + lanes - 1``; the last chunk is padded (softmax: -inf;
layernorm and residual add: +0; layernorm's centred values are zeroed in pad
lanes by the driver). A sum over the vector is accumulated lane-wise over the
chunks in order (``acc = c0; acc = acc + c1; acc = acc + c2; ...``, ADD), then
reduced over the lanes by the SUM tree ((0,1), (2,3), ..., then (0,2), ...);
the max likewise with MAX and RMAX. Reduction results are broadcast and used as
scalar ``b`` operands.

Error bounds (golden vs float64 of the exact function of the same binary32
input; ``python -c "from sim.golden.vector import error_report; error_report()"``
prints the measured table, ``tests/test_vector.py`` asserts the bounds; "measured"
is the worst case seen over 10^6 inputs per row (RECIP and RSQRT also over every
mantissa, which covers all their normal results; EXP over 6e7 inputs: 1.35 ulp)):

=======================  ===================================  =========  ============
function                 domain swept                          measured   bound
=======================  ===================================  =========  ============
EXP                      x in [-87.3, 88.7] (normal results)   1.35 ulp   1.5 ulp
EXP                      x in [-103.9, -87.3] (subnormal)      0.85 ulp   1 ulp
RECIP                    all finite x, |1/x| < 2^128           1.24 ulp   1.5 ulp
RSQRT                    all finite positive x                 1.02 ulp   1.25 ulp
GELU                     x in [-3, 10]                         13.2 ulp   16 ulp
GELU                     x in [-10, -3] (relative error)       1.3e-5     2^-15
softmax (spread <= 10)   64..1024 logits, relative error       1.1e-6     2^-19
softmax                  logits spread up to +-30, rel / B_i   0.82       1
layernorm                64..1024 values, |abs err| / max|y|   1.9e-7     2^-20
=======================  ===================================  =========  ============

ulp: units of the binary32 spacing at the exact value (2^-149 in the subnormal
range). Softmax: the relative error of element i is bounded by
``B_i = (|x_i - max| + log2(n) + 4) * 2^-24``; it is dominated by the rounding of
``x_i - max`` before EXP (amplified by its size), then the EXP, sum and RECIP
roundings. GELU is compared with the tanh formula it implements (the erf GELU
differs from it by that approximation's own < 5e-4 absolute). GELU's error grows
with |w| = |2z| through the EXP argument (relative error ~ |w| 2^-24), hence the
relative bound for x < -3; below x = -10.06, exp(-2z) overflows and GELU returns -0
(the exact value is below 3e-38 in magnitude). LayerNorm inputs: mean in [-2, 2],
standard deviation 3, gamma in [0.5, 1.5], beta in [-0.5, 0.5], eps = 1e-5.
"""
from __future__ import annotations

import math

import numpy as np

from rtl.npu.vector import (EXP_CLAMP_HI, EXP_CLAMP_LO, EXP_POLY, GELU_NEG_C1, GELU_NEG_C2,
                            HALF, LN2_HI, LN2_LO, LOG2E, N_WIDTH, ONE, RCP_SEED, ROUND_MAGIC,
                            RSQ_SEED, VectorOp)

from .fp import fp32_add, fp32_to_fp16
from .fp32 import (canonical_nan32, f32, fp16_to_fp32, fp32_frexp, fp32_ldexp, fp32_max,
                   fp32_min, fp32_mul, fp32_sub, is_nan32)

__all__ = ["execute", "exp", "recip", "rsqrt", "gelu", "tree_reduce", "run",
           "softmax", "softmax_program", "layernorm", "layernorm_program",
           "residual_add", "residual_add_program", "chunks", "measure_errors",
           "error_report", "ERROR_BOUNDS", "ulp_error"]

_RCP_TABLE = np.array(RCP_SEED, dtype=np.uint32)
_RSQ_TABLE = np.array(RSQ_SEED, dtype=np.uint32)
_SIGN = np.uint32(0x80000000)
_U = np.uint32


def _u32(x):
    return np.asarray(x).astype(np.uint32, copy=False)


# ---------------------------------------------------------------------------
# The non-linear ops, step by step as the micro-code runs them
# ---------------------------------------------------------------------------

def exp(x):
    """EXP: clamp, Cody-Waite reduction, degree-6 Horner polynomial, ldexp."""
    x = _u32(x)
    xc = fp32_max(fp32_min(x, _U(EXP_CLAMP_HI)), _U(EXP_CLAMP_LO))
    t = fp32_mul(xc, _U(LOG2E))
    s = fp32_add(t, _U(ROUND_MAGIC))
    # N = bits(s) - bits(magic), kept in a signed N_WIDTH-bit register.
    n = (s.astype(np.int64) - ROUND_MAGIC) & ((1 << N_WIDTH) - 1)
    n = np.where(n >= 1 << (N_WIDTH - 1), n - (1 << N_WIDTH), n)
    nf = fp32_sub(s, _U(ROUND_MAGIC))
    r1 = fp32_sub(xc, fp32_mul(nf, _U(LN2_HI)))
    r = fp32_sub(r1, fp32_mul(nf, _U(LN2_LO)))
    p = fp32_add(fp32_mul(r, _U(EXP_POLY[6])), _U(EXP_POLY[5]))
    for c in reversed(EXP_POLY[:5]):
        p = fp32_add(fp32_mul(p, r), _U(c))
    return fp32_ldexp(p, n)


def _classes(x):
    x = _u32(x)
    mag = x & _U(0x7FFFFFFF)
    return x >> _U(31) != 0, mag == 0, mag == _U(0x7F800000), is_nan32(x)


def recip(x):
    """RECIP: frexp, 64-entry seed, two Newton-Raphson steps y + y*(1 - m*y), ldexp."""
    x = _u32(x)
    m, e = fp32_frexp(x)
    y = (m & _SIGN) | _U(126 << 23) | (_RCP_TABLE[(m >> _U(17)) & _U(63)] << _U(15))
    for _ in range(2):
        t = fp32_mul(m, y)
        t = fp32_sub(_U(ONE), t)
        t = fp32_mul(y, t)
        y = fp32_add(y, t)
    y = fp32_ldexp(y, -e)
    neg, zero, inf, nan = _classes(x)
    sign = x & _SIGN
    y = np.where(inf, sign, y)
    y = np.where(zero, sign | _U(0x7F800000), y)
    return np.where(nan, _U(canonical_nan32), y).astype(np.uint32)


def rsqrt(x):
    """RSQRT: frexp to m' in [1, 4) with an even exponent, 128-entry seed, h = m'/2,
    two Newton-Raphson steps y + y*(0.5 - h*(y*y)), ldexp by -e'/2."""
    x = _u32(x)
    m, e = fp32_frexp(x)
    odd = (e & 1).astype(np.uint32)
    mp = (m & _U(0x007FFFFF)) | ((_U(127) + odd) << _U(23))
    index = ((mp >> _U(17)) & _U(63)) | (((mp >> _U(23)) & _U(1)) << _U(6))
    y = _U(126 << 23) | (_RSQ_TABLE[index] << _U(15))
    h = fp32_mul(mp, _U(HALF))
    for _ in range(2):
        t = fp32_mul(y, y)
        t = fp32_mul(h, t)
        t = fp32_sub(_U(HALF), t)
        t = fp32_mul(y, t)
        y = fp32_add(y, t)
    y = fp32_ldexp(y, -(e >> 1))
    neg, zero, inf, nan = _classes(x)
    y = np.where(inf, _U(0), y)
    y = np.where(neg | nan, _U(canonical_nan32), y)
    y = np.where(zero, (x & _SIGN) | _U(0x7F800000), y)
    return y.astype(np.uint32)


def gelu(x):
    """GELU (tanh form) = x / (1 + exp(-2z)), -2z = x * ((x*x)*(-C2) + (-C1))."""
    x = _u32(x)
    u = fp32_mul(x, x)
    u = fp32_mul(u, _U(GELU_NEG_C2))
    u = fp32_add(u, _U(GELU_NEG_C1))
    w = fp32_mul(x, u)
    d = fp32_add(exp(w), _U(ONE))
    g = fp32_mul(x, recip(d))
    return np.where(x == _U(0xFF800000), _U(0x80000000), g).astype(np.uint32)


def tree_reduce(values, fn):
    """Balanced pairwise reduction over the last axis: level 1 (0,1), (2,3), ...;
    a trailing element without a partner passes up unchanged."""
    values = _u32(values)
    while values.shape[-1] > 1:
        pairs = values.shape[-1] // 2
        joined = fn(values[..., 0:2 * pairs:2], values[..., 1:2 * pairs:2])
        if values.shape[-1] % 2:
            joined = np.concatenate([joined, values[..., -1:]], axis=-1)
        values = joined
    return values


def execute(op, a, b=None, scalar_b=False):
    """One vector-unit op on ``a``, ``b`` (uint32, lanes on the last axis).

    ``scalar_b``: lane 0 of ``b`` is used in every lane. Reductions return their result
    in every lane. An undefined opcode copies ``a``.
    """
    a = _u32(a)
    b = np.zeros_like(a) if b is None else np.broadcast_to(_u32(b), a.shape)
    if scalar_b:
        b = np.broadcast_to(b[..., :1], a.shape)
    try:
        op = VectorOp(op)
    except ValueError:
        return a.copy()
    if op is VectorOp.ADD:
        out = fp32_add(a, b)
    elif op is VectorOp.SUB:
        out = fp32_sub(a, b)
    elif op is VectorOp.MUL:
        out = fp32_mul(a, b)
    elif op is VectorOp.MAX:
        out = fp32_max(a, b)
    elif op is VectorOp.SUM:
        out = np.broadcast_to(tree_reduce(a, fp32_add), a.shape)
    elif op is VectorOp.RMAX:
        out = np.broadcast_to(tree_reduce(a, fp32_max), a.shape)
    elif op is VectorOp.EXP:
        out = exp(a)
    elif op is VectorOp.RECIP:
        out = recip(a)
    elif op is VectorOp.RSQRT:
        out = rsqrt(a)
    elif op is VectorOp.GELU:
        out = gelu(a)
    elif op is VectorOp.CVT16TO32:
        out = fp16_to_fp32((a & _U(0xFFFF)).astype(np.uint16))
    else:  # CVT32TO16
        out = fp32_to_fp16(a).astype(np.uint32)
    return np.array(out, dtype=np.uint32)


# ---------------------------------------------------------------------------
# Compositions: generators of (op, a, b, scalar_b) requests
# ---------------------------------------------------------------------------

def run(program, executor=None):
    """Drive a program generator with ``executor(op, a, b, scalar_b)`` (default: the
    golden :func:`execute`); return the program's result."""
    executor = executor or execute
    try:
        request = next(program)
        while True:
            request = program.send(executor(*request))
    except StopIteration as done:
        return done.value


def chunks(x, lanes, pad):
    """Split ``x`` (1-D uint32) into ``ceil(n/lanes)`` chunks, the last padded with ``pad``."""
    x = _u32(x)
    count = max(1, -(-len(x) // lanes))
    padded = np.full(count * lanes, pad, dtype=np.uint32)
    padded[:len(x)] = x
    return [padded[c * lanes:(c + 1) * lanes] for c in range(count)]


def _f32bits(value: float) -> np.uint32:
    return np.array([value], dtype=np.float32).view(np.uint32)[0]


def _accumulate(parts, op):
    acc = parts[0]
    for part in parts[1:]:
        acc = yield (op, acc, part, False)
    return acc


def softmax_program(x, lanes, fp16=False):
    """Softmax of ``x`` (FP32 bits; FP16 bits with ``fp16``: converted in and out with
    CVT ops): max (MAX over chunks, RMAX), x - max (SUB, scalar b), EXP, sum (ADD over
    chunks, SUM), RECIP, multiply (MUL, scalar b)."""
    n = len(x)
    zero = np.zeros(lanes, dtype=np.uint32)
    if fp16:
        parts = chunks(np.asarray(x, dtype=np.uint16).astype(np.uint32), lanes, 0xFC00)
        converted = []
        for part in parts:
            converted.append((yield (VectorOp.CVT16TO32, part, zero, False)))
        parts = converted
    else:
        parts = chunks(x, lanes, 0xFF800000)
    acc = yield from _accumulate(parts, VectorOp.MAX)
    top = yield (VectorOp.RMAX, acc, zero, False)
    exps = []
    for part in parts:
        shifted = yield (VectorOp.SUB, part, top, True)
        exps.append((yield (VectorOp.EXP, shifted, zero, False)))
    acc = yield from _accumulate(exps, VectorOp.ADD)
    total = yield (VectorOp.SUM, acc, zero, False)
    inv = yield (VectorOp.RECIP, total, zero, False)
    out = []
    for e in exps:
        y = yield (VectorOp.MUL, e, inv, True)
        if fp16:
            y = yield (VectorOp.CVT32TO16, y, zero, False)
        out.append(y)
    result = np.concatenate(out)[:n]
    return result.astype(np.uint16) if fp16 else result


def softmax(x, lanes, fp16=False):
    """Golden softmax (bit patterns) computed with vector-unit ops; see softmax_program."""
    return run(softmax_program(x, lanes, fp16))


def layernorm_program(x, gamma, beta, eps, lanes):
    """LayerNorm of ``x`` (FP32 bits) with FP32 ``gamma``, ``beta`` and float ``eps``:
    mean = SUM(x) * (1/n); d = x - mean; var = SUM(d*d) * (1/n);
    r = RSQRT(var + eps); y = (d * r) * gamma + beta. (1/n and eps are binary32
    constants held by the driver, RNE from float64.)"""
    n = len(x)
    zero = np.zeros(lanes, dtype=np.uint32)
    inv_n = np.full(lanes, _f32bits(1.0 / n), dtype=np.uint32)
    eps_v = np.full(lanes, _f32bits(eps), dtype=np.uint32)
    xs = chunks(x, lanes, 0)
    gs = chunks(gamma, lanes, 0)
    bs = chunks(beta, lanes, 0)
    acc = yield from _accumulate(xs, VectorOp.ADD)
    total = yield (VectorOp.SUM, acc, zero, False)
    mean = yield (VectorOp.MUL, total, inv_n, True)
    ds = []
    for c, part in enumerate(xs):
        d = yield (VectorOp.SUB, part, mean, True)
        valid = n - c * lanes
        if valid < lanes:  # the driver zeroes pad lanes of the centred values
            d = d.copy()
            d[valid:] = 0
        ds.append(d)
    squares = []
    for d in ds:
        squares.append((yield (VectorOp.MUL, d, d, False)))
    acc = yield from _accumulate(squares, VectorOp.ADD)
    total = yield (VectorOp.SUM, acc, zero, False)
    var = yield (VectorOp.MUL, total, inv_n, True)
    var = yield (VectorOp.ADD, var, eps_v, True)
    r = yield (VectorOp.RSQRT, var, zero, False)
    out = []
    for d, g, b in zip(ds, gs, bs):
        y = yield (VectorOp.MUL, d, r, True)
        y = yield (VectorOp.MUL, y, g, False)
        out.append((yield (VectorOp.ADD, y, b, False)))
    return np.concatenate(out)[:n]


def layernorm(x, gamma, beta, eps, lanes):
    return run(layernorm_program(x, gamma, beta, eps, lanes))


def residual_add_program(x, y, lanes, fp16=False):
    """x + y chunk by chunk (FP32 bits; with ``fp16``, FP16 bits converted to FP32 by
    CVT16TO32, added, and rounded back by CVT32TO16)."""
    n = len(x)
    zero = np.zeros(lanes, dtype=np.uint32)
    xs = chunks(np.asarray(x).astype(np.uint32), lanes, 0)
    ys = chunks(np.asarray(y).astype(np.uint32), lanes, 0)
    out = []
    for a, b in zip(xs, ys):
        if fp16:
            a = yield (VectorOp.CVT16TO32, a, zero, False)
            b = yield (VectorOp.CVT16TO32, b, zero, False)
        s = yield (VectorOp.ADD, a, b, False)
        if fp16:
            s = yield (VectorOp.CVT32TO16, s, zero, False)
        out.append(s)
    result = np.concatenate(out)[:n]
    return result.astype(np.uint16) if fp16 else result


def residual_add(x, y, lanes, fp16=False):
    return run(residual_add_program(x, y, lanes, fp16))


# ---------------------------------------------------------------------------
# Error against float64
# ---------------------------------------------------------------------------

#: name -> (metric, bound); checked by tests/test_vector.py and printed by error_report.
ERROR_BOUNDS = {
    "exp (normal results)": ("ulp", 1.5),
    "exp (subnormal results)": ("ulp", 1.0),
    "recip": ("ulp", 1.5),
    "rsqrt": ("ulp", 1.25),
    "gelu x in [-3, 10]": ("ulp", 16.0),
    "gelu x in [-10, -3]": ("rel", 2.0 ** -15),
    "softmax (spread <= 10)": ("rel", 2.0 ** -19),
    "softmax": ("rel / B_i", 1.0),
    "layernorm": ("abs / max|y|", 2.0 ** -20),
}


def ulp_error(got_bits, exact):
    """|got - exact| in units of the binary32 spacing at ``exact`` (2^-149 at least)."""
    got = f32(got_bits).astype(np.float64)
    exact = np.asarray(exact, dtype=np.float64)
    _, e = np.frexp(np.abs(exact))
    spacing = np.ldexp(1.0, np.maximum(e - 1, -126) - 23)
    return np.abs(got - exact) / spacing


def _grid_random(rng, lo, hi, n):
    grid = np.linspace(lo, hi, n // 2)
    rand = rng.uniform(lo, hi, n - n // 2)
    return np.concatenate([grid, rand]).astype(np.float32)


def _gelu64(x):
    """The tanh GELU in float64, in the cancellation-free form x / (1 + exp(-2z))."""
    x = x.astype(np.float64)
    return x / (1.0 + np.exp(-2.0 * math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def _exp_ulp(x):
    return ulp_error(exp(x.view(np.uint32)), np.exp(x.astype(np.float64))).max()


def measure_errors(n=200_000, seed=1, lanes=16):
    """Measured error of each function against float64: {name: (metric, value)}."""
    rng = np.random.default_rng(seed)
    out = {}
    x = _grid_random(rng, -87.3, 88.7, n)
    out["exp (normal results)"] = ("ulp", _exp_ulp(x))
    x = _grid_random(rng, -103.9, -87.3, n // 4)
    out["exp (subnormal results)"] = ("ulp", _exp_ulp(x))

    finite = (rng.integers(0, 0x7F800000, n, dtype=np.uint32)
              | (rng.integers(0, 2, n, dtype=np.uint32) << _U(31)))
    finite = finite[(finite & _U(0x7FFFFFFF)) != 0]
    mant = (rng.integers(0, 1 << 23, n, dtype=np.uint32)) | _U(0x3F800000)
    xr = np.concatenate([finite, mant, mant | _SIGN])
    with np.errstate(all="ignore"):
        exact = 1.0 / f32(xr).astype(np.float64)
    fin = np.abs(exact) < 3.4028235677973366e38
    out["recip"] = ("ulp", ulp_error(recip(xr)[fin], exact[fin]).max())

    pos = np.concatenate([finite & _U(0x7FFFFFFF), mant, mant + _U(1 << 23)])
    exact = 1.0 / np.sqrt(f32(pos).astype(np.float64))
    out["rsqrt"] = ("ulp", ulp_error(rsqrt(pos), exact).max())

    x = _grid_random(rng, -3.0, 10.0, n)
    out["gelu x in [-3, 10]"] = ("ulp", ulp_error(gelu(x.view(np.uint32)), _gelu64(x)).max())
    x = _grid_random(rng, -10.0, -3.0, n // 4)
    exact = _gelu64(x)
    got = f32(gelu(x.view(np.uint32))).astype(np.float64)
    out["gelu x in [-10, -3]"] = ("rel", (np.abs(got - exact) / np.abs(exact)).max())

    worst = worst10 = 0.0
    for trial in range(max(8, n // 10_000)):
        length = [64, 128, 100, 1024][trial % 4]
        spread = [1.0, 4.0, 10.0, 30.0][(trial // 4) % 4]
        logits = (rng.standard_normal(length) * spread / 3).clip(-spread, spread).astype(np.float32)
        got = f32(softmax(logits.view(np.uint32), lanes)).astype(np.float64)
        z = logits.astype(np.float64)
        exact = np.exp(z - z.max())
        exact /= exact.sum()
        rel = np.abs(got - exact) / exact
        if spread <= 10:
            worst10 = max(worst10, rel.max())
        scale = (np.abs(z - z.max()) + math.log2(length) + 4) * 2.0 ** -24
        worst = max(worst, (rel / scale).max())
    out["softmax (spread <= 10)"] = ("rel", worst10)
    out["softmax"] = ("rel / B_i", worst)

    worst = 0.0
    for trial in range(max(4, n // 20_000)):
        length = [64, 100, 512, 1024][trial % 4]
        x = (rng.standard_normal(length) * 3 + rng.uniform(-2, 2)).astype(np.float32)
        g = rng.uniform(0.5, 1.5, length).astype(np.float32)
        b = rng.uniform(-0.5, 0.5, length).astype(np.float32)
        got = f32(layernorm(x.view(np.uint32), g.view(np.uint32), b.view(np.uint32), 1e-5, lanes))
        z = x.astype(np.float64)
        exact = (z - z.mean()) / np.sqrt(z.var() + float(np.float32(1e-5))) * g + b
        worst = max(worst, np.abs(got.astype(np.float64) - exact).max() / np.abs(exact).max())
    out["layernorm"] = ("abs / max|y|", worst)
    return out


def error_report(n=200_000, seed=1, lanes=16, file=None):
    """Print (and return) the measured error of every function next to its bound."""
    measured = measure_errors(n, seed, lanes)
    lines = [f"{'function':28s} {'metric':11s} {'measured':>12s} {'bound':>12s}"]
    for name, (metric, value) in measured.items():
        bound = ERROR_BOUNDS[name][1]
        ok = "ok" if value <= bound else "EXCEEDED"
        lines.append(f"{name:28s} {metric:11s} {value:12.4g} {bound:12.4g}  {ok}")
    print("\n".join(lines), file=file)
    return measured
