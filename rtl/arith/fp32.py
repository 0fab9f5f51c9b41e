"""Bit-exact IEEE binary32 building blocks for the NPU vector unit (combinational).

Same conventions as :mod:`rtl.arith.fp`: every component is a combinational
``wiring.Component`` (``m.d.comb`` only, latency 0); rounding is IEEE
round-to-nearest, ties-to-even; subnormals are supported on input and output (no
flush-to-zero); every NaN produced is the canonical quiet NaN ``0x7FC00000``
(NaN payloads and signs are never propagated, signalling NaNs are treated like
quiet ones). Golden models: :mod:`sim.golden.fp32`.

Components
----------
``FP32Multiplier``  a * b, rounded RNE.
``FP16ToFP32``      exact widening conversion.
``FP32MinMax``      max(a, b) or min(a, b) under IEEE totalOrder restricted to
                    non-NaN values (so -0 < +0); a NaN operand gives NaN.
``FP32Ldexp``       a * 2^n for a signed integer n, rounded RNE (one rounding,
                    only when the result is subnormal), overflow to +-inf.
``FP32Frexp``       a = (-1)^s * m * 2^e with m in [1, 2) (subnormals
                    normalised): the range-reduction front end of reciprocal
                    and reciprocal square root.

The float -> int piece of exp's range reduction needs no component of its own: the
vector unit rounds ``t`` to an integer with the adder (``(t + 1.5*2^23) - 1.5*2^23``,
exact RNE for ``|t| < 2^22``) and reads the integer from the low bits of
``t + 1.5*2^23`` (:data:`ROUND_MAGIC`).

:func:`round_pack` is the shared "normalise, round to nearest even, pack" back end
of the multiplier and of ``FP32Ldexp``.
"""

import struct

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .fp import CANONICAL_NAN32, ieee_fields, leading_zeros

__all__ = ["FP32Multiplier", "FP16ToFP32", "FP32MinMax", "FP32Ldexp", "FP32Frexp",
           "round_pack", "f32_bits", "bits_f32", "ROUND_MAGIC", "INF32"]

INF32 = 0x7F800000
#: 1.5 * 2^23: for |t| < 2^22, ``t + ROUND_MAGIC`` (RNE) is ``ROUND_MAGIC + rint(t)``
#: exactly, so its bit pattern minus this one is the integer ``rint(t)``.
ROUND_MAGIC = 0x4B400000


def f32_bits(x: float) -> int:
    """binary32 bit pattern of the Python float ``x`` (rounded RNE by ``struct``)."""
    return struct.unpack("<I", struct.pack("<f", x))[0]


def bits_f32(bits: int) -> float:
    """The value of a binary32 bit pattern, as a Python float (exact)."""
    return struct.unpack("<f", struct.pack("<I", bits & 0xFFFFFFFF))[0]


def round_pack(m, sign, sig, width, bexp, name="rp"):
    """RNE binary32 of ``(-1)^sign * sig * 2^(bexp - 127 - (width - 1))``.

    ``sig`` is an unsigned significand of ``width >= 24`` bits (any number of
    leading zeros, 0 allowed); ``bexp`` a signed value: the biased exponent the
    result would have if ``sig``'s leading one were at bit ``width - 1``.
    Returns a 32-bit Signal. Normalises left by the leading-zero count, then, if
    the exponent is below 1 (a subnormal result), shifts right by ``1 - exponent``
    (clamped to 25: anything shifted that far rounds to zero) into a window with 26
    zero bits appended, so no bit is ever lost before the guard/sticky extraction.
    Rounding increments the packed {exponent, fraction}: carries give mantissa
    overflow, subnormal -> normal and max-finite -> infinity. An exponent >= 255
    before rounding gives infinity; ``sig == 0`` gives a signed zero.
    """
    assert width >= 24
    lz = leading_zeros(m, sig, width)
    norm = Signal(width, name=f"{name}_norm")
    m.d.comb += norm.eq((sig << lz)[:width])
    be = Signal(signed(len(bexp) + 2), name=f"{name}_be")
    m.d.comb += be.eq(bexp - lz)
    rs = Signal(range(26), name=f"{name}_rs")
    with m.If(be >= 1):
        m.d.comb += rs.eq(0)
    with m.Elif(be < -23):
        m.d.comb += rs.eq(25)
    with m.Else():
        m.d.comb += rs.eq((1 - be)[:5])
    window = Signal(width + 26, name=f"{name}_win")
    m.d.comb += window.eq(Cat(Const(0, 26), norm) >> rs)
    q = window[width + 2:width + 26]
    guard = window[width + 1]
    sticky = window[0:width + 1] != 0
    round_up = Signal(name=f"{name}_up")
    m.d.comb += round_up.eq(guard & (sticky | q[0]))
    e8 = Signal(8, name=f"{name}_e8")
    m.d.comb += e8.eq(Mux(be >= 1, be[:8], 0))
    packed = Signal(31, name=f"{name}_packed")
    m.d.comb += packed.eq(Cat(q[0:23], e8))
    rounded = Signal(31, name=f"{name}_rounded")
    m.d.comb += rounded.eq((packed + round_up)[:31])
    out = Signal(32, name=f"{name}_out")
    with m.If(sig == 0):
        m.d.comb += out.eq(Cat(Const(0, 31), sign))
    with m.Elif(be >= 255):
        m.d.comb += out.eq(Cat(Const(INF32, 31), sign))
    with m.Else():
        m.d.comb += out.eq(Cat(rounded, sign))
    return out


def _fields(x):
    return x[31], x[23:31], x[0:23]


class FP32Multiplier(wiring.Component):
    """IEEE binary32 multiplier, round-to-nearest-even.

    Ports: ``a``, ``b`` In(32); ``p`` Out(32) = RNE(a * b). Latency 0.

    Matches numpy ``float32`` multiplication bit for bit (subnormals in and out,
    overflow to +-inf after rounding), with NaN canonicalised:
      * NaN operand, or inf * 0 -> 0x7FC00000;
      * inf * nonzero -> inf, sign = sign(a) XOR sign(b);
      * zero * finite -> zero with the XOR sign.

    Datapath: 24 x 24 -> 48-bit significand product (exact), then
    :func:`round_pack` (leading-zero normalisation handles subnormal operands).
    """

    a: In(32)
    b: In(32)
    p: Out(32)

    def elaborate(self, platform):
        m = Module()
        sa, ea, fa, a_zero, a_inf, a_nan = ieee_fields(self.a, 8)
        sb, eb, fb, b_zero, b_inf, b_nan = ieee_fields(self.b, 8)
        sign = Signal()
        m.d.comb += sign.eq(sa ^ sb)

        ma = Signal(24)
        mb = Signal(24)
        m.d.comb += [ma.eq(Cat(fa, ea != 0)), mb.eq(Cat(fb, eb != 0))]
        Ea = Signal(8)
        Eb = Signal(8)
        m.d.comb += [Ea.eq(ea | (ea == 0)), Eb.eq(eb | (eb == 0))]
        prod = Signal(48)
        m.d.comb += prod.eq(ma * mb)
        # a = ma * 2^(Ea - 150); the product is prod * 2^(Ea + Eb - 300)
        #   = prod * 2^(bexp - 127 - 47) with bexp = Ea + Eb - 126.
        bexp = Signal(signed(11))
        m.d.comb += bexp.eq(Ea + Eb - 126)
        finite = round_pack(m, sign, prod, 48, bexp, name="mul")

        with m.If(a_nan | b_nan | (a_inf & b_zero) | (b_inf & a_zero)):
            m.d.comb += self.p.eq(CANONICAL_NAN32)
        with m.Elif(a_inf | b_inf):
            m.d.comb += self.p.eq(Cat(Const(INF32, 31), sign))
        with m.Elif(a_zero | b_zero):
            m.d.comb += self.p.eq(Cat(Const(0, 31), sign))
        with m.Else():
            m.d.comb += self.p.eq(finite)
        return m


class FP16ToFP32(wiring.Component):
    """Exact IEEE binary16 -> binary32 conversion.

    Ports: ``a`` In(16); ``f`` Out(32). Latency 0. Every binary16 value, subnormals
    included, is exactly representable in binary32; +-0 and +-inf keep their sign;
    NaN -> 0x7FC00000.
    """

    a: In(16)
    f: Out(32)

    def elaborate(self, platform):
        m = Module()
        s, e, f = self.a[15], self.a[10:15], self.a[0:10]
        # Subnormal: value = f * 2^-24; with lz leading zeros in the 10-bit field the
        # leading one is bit 9 - lz, so the value is 1.x * 2^(-15 - lz).
        lz = leading_zeros(m, f, 10)
        shifted = Signal(10)
        m.d.comb += shifted.eq((f << (lz + 1))[:10])
        with m.If((e == 31) & (f != 0)):
            m.d.comb += self.f.eq(CANONICAL_NAN32)
        with m.Elif(e == 31):
            m.d.comb += self.f.eq(Cat(Const(INF32, 31), s))
        with m.Elif(e != 0):
            m.d.comb += self.f.eq(Cat(Const(0, 13), f, (e + 112)[:8], s))
        with m.Elif(f != 0):
            m.d.comb += self.f.eq(Cat(Const(0, 13), shifted, (112 - lz)[:8], s))
        with m.Else():
            m.d.comb += self.f.eq(Cat(Const(0, 31), s))
        return m


class FP32MinMax(wiring.Component):
    """max(a, b) (``min`` = 0) or min(a, b) (``min`` = 1) of binary32 values.

    Ports: ``a``, ``b`` In(32); ``min`` In(1); ``s`` Out(32). Latency 0.

    Non-NaN values are ordered by IEEE totalOrder, so -0 < +0 and the result is
    independent of operand order (max(+0, -0) = max(-0, +0) = +0). Any NaN operand
    gives 0x7FC00000. Implementation: map each pattern to an unsigned key
    (sign 0: bits | 2^31; sign 1: ~bits) and compare the keys.
    """

    a: In(32)
    b: In(32)
    min: In(1)
    s: Out(32)

    def elaborate(self, platform):
        m = Module()
        a, b = self.a, self.b
        ka = Signal(32)
        kb = Signal(32)
        m.d.comb += [ka.eq(Mux(a[31], ~a, a | 0x80000000)),
                     kb.eq(Mux(b[31], ~b, b | 0x80000000))]
        a_nan = (a[23:31] == 255) & (a[0:23] != 0)
        b_nan = (b[23:31] == 255) & (b[0:23] != 0)
        a_greater = Signal()
        m.d.comb += a_greater.eq(ka > kb)
        with m.If(a_nan | b_nan):
            m.d.comb += self.s.eq(CANONICAL_NAN32)
        with m.Elif(a_greater ^ self.min):
            m.d.comb += self.s.eq(a)
        with m.Else():
            m.d.comb += self.s.eq(b)
        return m


class FP32Ldexp(wiring.Component):
    """``a * 2^n`` rounded RNE (``ldexpf``).

    Ports: ``a`` In(32); ``n`` In(signed(n_width)); ``s`` Out(32). Latency 0.

    Exact unless the result is subnormal (then one RNE rounding) or overflows
    (+-inf). NaN -> 0x7FC00000; +-inf and +-0 are returned unchanged whatever ``n``.
    """

    def __init__(self, n_width: int = 10):
        self.n_width = n_width
        super().__init__({"a": In(32), "n": In(signed(n_width)), "s": Out(32)})

    def elaborate(self, platform):
        m = Module()
        s, e, f = _fields(self.a)
        sig = Signal(24)
        m.d.comb += sig.eq(Cat(f, e != 0))
        bexp = Signal(signed(max(self.n_width, 9) + 2))
        m.d.comb += bexp.eq((e | (e == 0)) + self.n)
        finite = round_pack(m, s, sig, 24, bexp, name="ldexp")
        with m.If((e == 255) & (f != 0)):
            m.d.comb += self.s.eq(CANONICAL_NAN32)
        with m.Elif(e == 255):
            m.d.comb += self.s.eq(self.a)
        with m.Else():
            m.d.comb += self.s.eq(finite)
        return m


class FP32Frexp(wiring.Component):
    """Split a finite nonzero binary32 value into ``(-1)^s * m * 2^e``, m in [1, 2).

    Ports: ``a`` In(32); ``m`` Out(32): the binary32 pattern of ``(-1)^s * m``
    (biased exponent field 127; subnormal inputs normalised); ``e`` Out(signed(9)):
    the unbiased exponent, in [-149, 127]. Latency 0. For zero, inf and NaN the
    outputs are unspecified (callers handle those cases separately).
    """

    a: In(32)
    m: Out(32)
    e: Out(signed(9))

    def elaborate(self, platform):
        m = Module()
        s, e, f = _fields(self.a)
        sig = Signal(24)
        m.d.comb += sig.eq(Cat(f, e != 0))
        lz = leading_zeros(m, sig, 24)
        norm = Signal(24)
        m.d.comb += norm.eq((sig << lz)[:24])
        m.d.comb += [self.m.eq(Cat(norm[0:23], Const(127, 8), s)),
                     self.e.eq((e | (e == 0)) - 127 - lz)]
        return m
