"""Bit-exact IEEE-754 floating-point arithmetic components (combinational).

All components here are purely combinational (``m.d.comb`` only, no clock
domain, latency 0) and bit-exact against the numpy golden model in
:mod:`sim.golden.fp`.

NaN convention
--------------
Every NaN produced by these components is the *canonical quiet NaN*, sign bit
0: binary32 ``0x7FC00000`` and binary16 ``0x7E00``. NaN payloads and signs are
never propagated; signalling NaN inputs are treated like quiet NaNs.

Rounding is IEEE round-to-nearest, ties-to-even. Subnormals are fully
supported on input and output (no flush-to-zero, no denormals-are-zero).
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["FP16Multiplier", "FP32Adder", "FP32ToFP16", "ieee_fields", "leading_zeros"]

CANONICAL_NAN32 = 0x7FC00000
CANONICAL_NAN16 = 0x7E00


def ieee_fields(x, exponent_bits: int) -> tuple:
    """(sign, exponent, fraction, is zero, is infinity, is NaN) of the IEEE value ``x``
    (binary16: 5 exponent bits, binary32: 8)."""
    top, msb = (1 << exponent_bits) - 1, len(x) - 1
    s, e, f = x[msb], x[msb - exponent_bits:msb], x[0:msb - exponent_bits]
    return s, e, f, (e == 0) & (f == 0), (e == top) & (f == 0), (e == top) & (f != 0)


def _lzc_pow2(x, n):
    """Log-depth leading-zero counter for a power-of-two width ``n >= 2``.

    Returns ``(valid, count)``: ``valid`` is 1 iff ``x != 0``; ``count`` (log2(n)
    bits) is the number of leading zeros when ``valid``.
    """
    if n == 2:
        return x[1] | x[0], ~x[1]
    h = n // 2
    vh, ch = _lzc_pow2(x[h:n], h)
    vl, cl = _lzc_pow2(x[0:h], h)
    return vh | vl, Cat(Mux(vh, ch, cl), ~vh)


def leading_zeros(m, x, width):
    """Return a Signal holding the number of leading zeros of ``x[:width]``.

    The result is in ``[0, width]`` (``width`` when ``x == 0``); it is built as a
    log-depth tree, not a priority chain.
    """
    n = 2
    while n < width:
        n *= 2
    padded = Cat(Const(0, n - width), x[:width]) if n > width else x[:width]
    valid, count = _lzc_pow2(padded, n)
    lz = Signal(range(width + 1))
    m.d.comb += lz.eq(Mux(valid, count, width))
    return lz


class FP16Multiplier(wiring.Component):
    """Exact IEEE binary16 x binary16 -> binary32 multiplier.

    Ports
    -----
    a, b : In(16)   IEEE binary16 bit patterns.
    p    : Out(32)  IEEE binary32 bit pattern of ``a * b``.

    Latency 0 (purely combinational).

    The product of two binary16 values (11-bit significands, exponents in
    [-24, 15]) always fits exactly in binary32 (24-bit significand, normal
    range), so **no rounding** happens: ``p`` is the exact product. binary16
    subnormal inputs are supported (they produce binary32 normals).

    Special values:
      * NaN input (quiet or signalling), or inf * 0 -> canonical NaN 0x7FC00000.
      * inf * finite-nonzero / inf * inf -> inf with sign = sign(a) XOR sign(b).
      * zero * finite -> zero with sign = sign(a) XOR sign(b).
    """

    a: In(16)
    b: In(16)
    p: Out(32)

    def elaborate(self, platform):
        m = Module()
        a, b = self.a, self.b
        sa, ea, fa = a[15], a[10:15], a[0:10]
        sb, eb, fb = b[15], b[10:15], b[0:10]
        sign = Signal()
        m.d.comb += sign.eq(sa ^ sb)

        a_zero = (ea == 0) & (fa == 0)
        b_zero = (eb == 0) & (fb == 0)
        a_inf = (ea == 31) & (fa == 0)
        b_inf = (eb == 31) & (fb == 0)
        a_nan = (ea == 31) & (fa != 0)
        b_nan = (eb == 31) & (fb != 0)

        # Significands (implicit bit only for normals) and effective exponents.
        ma = Signal(11)
        mb = Signal(11)
        m.d.comb += [ma.eq(Cat(fa, ea != 0)), mb.eq(Cat(fb, eb != 0))]
        Ea = Signal(5)
        Eb = Signal(5)
        m.d.comb += [Ea.eq(ea | (ea == 0)), Eb.eq(eb | (eb == 0))]

        prod = Signal(22)
        m.d.comb += prod.eq((ma * mb)[:22])
        # value = prod * 2^(Ea + Eb - 50); normalise so the leading one is bit 21.
        lz = leading_zeros(m, prod, 22)
        norm = Signal(22)
        m.d.comb += norm.eq((prod << lz)[:22])
        # binary32 biased exponent = (21 - lz) + (Ea + Eb - 50) + 127
        #                          = Ea + Eb + 98 - lz, in [79, 158] for nonzero.
        exp = Signal(8)
        m.d.comb += exp.eq((Ea + Eb + 98 - lz)[:8])
        finite = Signal(32)
        m.d.comb += finite.eq(Cat(Const(0, 2), norm[0:21], exp, sign))

        with m.If(a_nan | b_nan | (a_inf & b_zero) | (b_inf & a_zero)):
            m.d.comb += self.p.eq(CANONICAL_NAN32)
        with m.Elif(a_inf | b_inf):
            m.d.comb += self.p.eq(Cat(Const(0x7F800000, 31), sign))
        with m.Elif(a_zero | b_zero):
            m.d.comb += self.p.eq(Cat(Const(0, 31), sign))
        with m.Else():
            m.d.comb += self.p.eq(finite)
        return m


class FP32Adder(wiring.Component):
    """IEEE binary32 adder, round-to-nearest-even.

    Ports
    -----
    a, b : In(32)   IEEE binary32 bit patterns.
    s    : Out(32)  IEEE binary32 bit pattern of ``a + b`` rounded RNE.

    Latency 0 (purely combinational).

    Behaviour matches IEEE 754 (and numpy ``float32`` addition) bit for bit:
      * subnormal inputs and outputs fully supported (no flush-to-zero);
      * overflow (after rounding) -> infinity with the result sign;
      * NaN input, or inf + (-inf) -> canonical NaN 0x7FC00000;
      * inf + finite -> that inf;
      * exact zero result: x + (-x) = +0, (+0) + (-0) = +0, (-0) + (-0) = -0.

    Implementation: swap so |x| >= |y|, align y with guard/round/sticky bits,
    add or subtract 28-bit significands, normalise with a leading-zero count
    (left shift limited so the result never goes below exponent 1, which
    produces subnormals), then round-to-nearest-even by incrementing the packed
    {exponent, fraction} field (carries naturally give mantissa overflow,
    subnormal -> normal and max-finite -> infinity).
    """

    a: In(32)
    b: In(32)
    s: Out(32)

    def elaborate(self, platform):
        m = Module()
        a, b = self.a, self.b
        sa, ea, fa, _, a_inf, a_nan = ieee_fields(a, 8)
        sb, eb, fb, _, b_inf, b_nan = ieee_fields(b, 8)

        # Order by magnitude: x is the operand with the larger |value|.
        swap = Signal()
        m.d.comb += swap.eq(b[0:31] > a[0:31])
        sx = Signal()
        ex = Signal(8)
        fx = Signal(23)
        ey = Signal(8)
        fy = Signal(23)
        m.d.comb += [
            sx.eq(Mux(swap, sb, sa)),
            ex.eq(Mux(swap, eb, ea)),
            fx.eq(Mux(swap, fb, fa)),
            ey.eq(Mux(swap, ea, eb)),
            fy.eq(Mux(swap, fa, fb)),
        ]
        sub = Signal()
        m.d.comb += sub.eq(sa ^ sb)

        # Effective exponents (subnormals use exponent 1) and significands with
        # 3 extra low bits (guard, round, sticky).
        Ex = Signal(8)
        Ey = Signal(8)
        m.d.comb += [Ex.eq(ex | (ex == 0)), Ey.eq(ey | (ey == 0))]
        mx3 = Signal(27)
        my3 = Signal(27)
        m.d.comb += [
            mx3.eq(Cat(Const(0, 3), fx, ex != 0)),
            my3.eq(Cat(Const(0, 3), fy, ey != 0)),
        ]

        # Align y: shift right by d = Ex - Ey (>= 0), clamped to 27, with sticky.
        d = Signal(8)
        m.d.comb += d.eq((Ex - Ey)[:8])
        dc = Signal(5)
        m.d.comb += dc.eq(Mux(d > 27, 27, d[:5]))
        shifted = Signal(27)
        m.d.comb += shifted.eq((my3 >> dc)[:27])
        lost_mask = Signal(27)
        m.d.comb += lost_mask.eq(~(Const((1 << 27) - 1, 27) << dc)[:27])
        sticky = Signal()
        m.d.comb += sticky.eq((my3 & lost_mask) != 0)
        my_al = Signal(27)
        m.d.comb += my_al.eq(shifted | sticky)

        # Significand add / subtract (|x| >= |y| so the difference is >= 0).
        r = Signal(28)
        with m.If(sub):
            m.d.comb += r.eq((mx3 - my_al)[:28])
        with m.Else():
            m.d.comb += r.eq((mx3 + my_al)[:28])

        # Normalise: bit 27 of rn becomes the implicit-one position. Bit 27 of
        # r corresponds to exponent Ex + 1. Shift left by min(lz, Ex) so the
        # exponent never drops below 1 (subnormal results keep bit 27 clear).
        lz = leading_zeros(m, r, 28)
        sh = Signal(8)
        m.d.comb += sh.eq(Mux(lz > Ex, Ex, lz))
        rn = Signal(28)
        m.d.comb += rn.eq((r << sh[:5])[:28])  # sh <= lz <= 28 fits 5 bits
        exp9 = Signal(9)
        m.d.comb += exp9.eq(Mux(rn[27], (Ex + 1 - sh)[:9], 0))

        # Round to nearest even on the packed {exp, frac} field.
        guard = rn[3]
        rest = rn[0:3] != 0
        lsb = rn[4]
        round_up = Signal()
        m.d.comb += round_up.eq(guard & (rest | lsb))
        packed = Signal(31)
        m.d.comb += packed.eq(Cat(rn[4:27], exp9[:8]))
        rounded = Signal(31)
        m.d.comb += rounded.eq((packed + round_up)[:31])

        res_sign = Signal()
        m.d.comb += res_sign.eq(Mux(r == 0, sa & sb, sx))

        with m.If(a_nan | b_nan | (a_inf & b_inf & sub)):
            m.d.comb += self.s.eq(CANONICAL_NAN32)
        with m.Elif(a_inf):
            m.d.comb += self.s.eq(a)
        with m.Elif(b_inf):
            m.d.comb += self.s.eq(b)
        with m.Elif(exp9 >= 255):
            m.d.comb += self.s.eq(Cat(Const(0x7F800000, 31), res_sign))
        with m.Else():
            m.d.comb += self.s.eq(Cat(rounded, res_sign))
        return m


def fp16_alignment(m, a):
    """The front end of an FP32 -> FP16 rounding of ``a``: (sign, exponent, fraction,
    normal, t). binary16's biased exponent would be e - 112. Normal results (e >= 113)
    keep 10 fraction bits (shift 13); subnormal results (e <= 112) are in units of 2^-24:
    shift right by 126 - e (clamped to 31). ``t`` is the shifted 24+26-bit window: top 24
    bits the integer part, low 26 the bits shifted out (guard = bit 25, sticky = OR of
    bits 0..24)."""
    s, e, f = a[31], a[23:31], a[0:23]
    mant = Signal(24)
    m.d.comb += mant.eq(Cat(f, e != 0))
    normal = Signal()
    m.d.comb += normal.eq(e >= 113)
    sh = Signal(5)
    with m.If(normal):
        m.d.comb += sh.eq(13)
    with m.Elif(e < 95):
        m.d.comb += sh.eq(31)
    with m.Else():
        m.d.comb += sh.eq((126 - e)[:5])
    t = Signal(50)
    m.d.comb += t.eq((Cat(Const(0, 26), mant) >> sh)[:50])
    return s, e, f, normal, t


class FP32ToFP16(wiring.Component):
    """IEEE binary32 -> binary16 conversion, round-to-nearest-even.

    Ports
    -----
    a : In(32)   IEEE binary32 bit pattern.
    h : Out(16)  IEEE binary16 bit pattern of ``a`` rounded RNE.

    Latency 0 (purely combinational).

    Behaviour matches numpy ``astype(np.float16)`` bit for bit:
      * results in the binary16 subnormal range are rounded to subnormals;
        rounding may carry into the smallest normal (0x0400);
      * finite values >= 65520 (i.e. that round above 65504) -> +-inf;
      * |a| <= 2^-25 (half the smallest subnormal, tie to even = 0) and all
        binary32 subnormals -> signed zero;
      * +-inf -> +-inf; NaN (quiet or signalling) -> canonical NaN 0x7E00.
    """

    a: In(32)
    h: Out(16)

    def elaborate(self, platform):
        m = Module()
        s, e, f, normal, t = fp16_alignment(m, self.a)
        q = t[26:36]
        guard = t[25]
        rest = t[0:25] != 0
        round_up = Signal()
        m.d.comb += round_up.eq(guard & (rest | q[0]))
        exp5 = Signal(5)
        m.d.comb += exp5.eq(Mux(normal, (e - 112)[:5], 0))
        packed = Signal(15)
        m.d.comb += packed.eq(Cat(q, exp5))
        rounded = Signal(15)
        m.d.comb += rounded.eq((packed + round_up)[:15])

        with m.If((e == 255) & (f != 0)):
            m.d.comb += self.h.eq(CANONICAL_NAN16)
        with m.Elif(e >= 143):  # inf, or |a| >= 2^16: overflow
            m.d.comb += self.h.eq(Cat(Const(0x7C00, 15), s))
        with m.Else():
            m.d.comb += self.h.eq(Cat(rounded, s))
        return m
