"""Pipelined versions of the PIM MAC unit's arithmetic (FP32 adder, FP16 multiplier,
FP32 -> FP16 conversion), for FPGA clock rates.

Same results, bit for bit, as the combinational components of :mod:`rtl.arith.fp`
(IEEE round-to-nearest-even, subnormals in and out, canonical NaN, the special-value
rules of :class:`~rtl.arith.fp.FP32Adder`); only the timing differs.

``stages`` counts the clocks from the inputs to the registered result *including the
user's output register*: the output ``s``/``p`` is combinational from the last internal
register, so ``stages - 1`` registers are inside the component and the user adds one
(the PIM MAC unit's tree and accumulator registers). ``stages = 1`` is purely
combinational, like the original component. The internal registers run on ``sync`` with
no enable: a new operation can start every clock.

Where the cuts go (pipeline order: swap -> align -> add -> lzc -> norm -> round), chosen
so the stages have similar logic depth on an ECP5:

``swap``   after the magnitude compare, operand swap and exponent difference;
``align``  after the alignment shift of the smaller operand (with sticky bit);
``add``    after the 28-bit significand add/subtract;
``lzc``    after the leading-zero count (limited so the exponent never goes below 1);
``norm``   after the normalising shift and the result exponent (before rounding).
"""

from types import SimpleNamespace

from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .fp import (CANONICAL_NAN16, CANONICAL_NAN32, fp16_alignment, ieee_fields,
                 leading_zeros)

__all__ = ["PipelinedFP32Adder", "PipelinedFP16Multiplier", "PipelinedFP32ToFP16", "ADDER_CUTS",
           "MULTIPLIER_CUTS", "CONVERTER_CUTS"]

# stages -> the cut points that get a register.
ADDER_CUTS = {
    1: (),
    2: ("add",),
    3: ("align", "lzc"),
    4: ("swap", "add", "lzc"),
    5: ("swap", "add", "lzc", "norm"),
    6: ("swap", "align", "add", "lzc", "norm"),
}
MULTIPLIER_CUTS = {1: (), 2: ("product",), 3: ("input", "product"), 4: ("input", "product", "lzc")}


def _cut(m, cuts, point, prefix="", **values):
    """The live values at ``point``: registered copies when ``point`` is a cut, else the
    values themselves."""
    if point not in cuts:
        return SimpleNamespace(**values)
    out = {}
    for name, value in values.items():
        value = Value.cast(value)
        reg = Signal(value.shape(), name=f"{prefix}{point}_{name}")
        m.d.sync += reg.eq(value)
        out[name] = reg
    return SimpleNamespace(**out)


def _check_stages(component, stages, table):
    if stages not in table:
        component._MustUse__silence = True     # never elaborated: no "unused" warning
        raise ValueError(f"{type(component).__name__} supports {min(table)}..{max(table)} "
                         f"stages, got {stages!r}")


class PipelinedFP32Adder(wiring.Component):
    """IEEE binary32 adder, round-to-nearest-even, in ``stages`` clocks (1..6).

    Ports: ``a``, ``b`` In(32); ``s`` Out(32) = ``a + b`` of ``stages - 1`` clocks ago
    (combinational from the last internal register; register it outside). Results equal
    :class:`~rtl.arith.fp.FP32Adder`'s bit for bit for every input.

    Differences in structure from ``FP32Adder`` (same results): the normalising shift is
    limited to ``Ex`` by a sentinel bit at position ``27 - Ex`` ORed into the sum before
    the leading-zero count (``lz(r | sentinel) = min(lz(r), Ex)``), so no comparator
    follows the count; the add and the subtract share one carry chain; the special cases
    (NaN, inf, overflow) are decided before rounding.
    """

    a: In(32)
    b: In(32)
    s: Out(32)

    def __init__(self, stages: int = 4):
        _check_stages(self, stages, ADDER_CUTS)
        self.stages = stages
        self.cuts = ADDER_CUTS[stages]
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        cuts = self.cuts
        a, b = self.a, self.b
        sa, ea, fa, _, a_inf, a_nan = ieee_fields(a, 8)
        sb, eb, fb, _, b_inf, b_nan = ieee_fields(b, 8)
        sub = Signal()
        m.d.comb += sub.eq(sa ^ sb)

        # -- swap: x is the operand with the larger magnitude --
        swap = Signal()
        m.d.comb += swap.eq(b[0:31] > a[0:31])
        # Effective exponents (subnormals use 1) and both exponent differences, clamped to
        # 27, computed beside the compare; the compare only selects.
        Ea, Eb = Signal(8), Signal(8)
        m.d.comb += [Ea.eq(ea | (ea == 0)), Eb.eq(eb | (eb == 0))]
        clamped = []
        for name, big, small in (("ab", Ea, Eb), ("ba", Eb, Ea)):
            d = Signal(8, name=f"d_{name}")
            dc = Signal(5, name=f"dc_{name}")
            m.d.comb += [d.eq((big - small)[:8]), dc.eq(Mux(d > 27, 27, d[:5]))]
            clamped.append(dc)
        v = _cut(m, cuts, "swap",
                 nan=a_nan | b_nan | (a_inf & b_inf & sub), inf=a_inf | b_inf,
                 inf_sign=Mux(a_inf, sa, sb), sub=sub, sx=Mux(swap, sb, sa), zero_sign=sa & sb,
                 Ex=Mux(swap, Eb, Ea), mx=Mux(swap, Cat(fb, eb != 0), Cat(fa, ea != 0)),
                 my=Mux(swap, Cat(fa, ea != 0), Cat(fb, eb != 0)),
                 dc=Mux(swap, clamped[1], clamped[0]))

        # -- align y: shift right by dc with guard, round and sticky bits --
        my3 = Cat(Const(0, 3), v.my)
        shifted = Signal(27)
        m.d.comb += shifted.eq((my3 >> v.dc)[:27])
        lost_mask = Signal(27)
        m.d.comb += lost_mask.eq(~(Const((1 << 27) - 1, 27) << v.dc)[:27])
        sticky = Signal()
        m.d.comb += sticky.eq((my3 & lost_mask) != 0)
        v = _cut(m, cuts, "align", nan=v.nan, inf=v.inf, inf_sign=v.inf_sign, sub=v.sub,
                 sx=v.sx, zero_sign=v.zero_sign, Ex=v.Ex, mx=v.mx,
                 my_al=shifted | sticky)

        # -- add / subtract (|x| >= |y|: the difference is >= 0), one carry chain --
        mx3 = Cat(Const(0, 3), v.mx)
        total = Signal(28)
        m.d.comb += total.eq((mx3 + Mux(v.sub, ~v.my_al, v.my_al) + v.sub)[:28])
        r = Signal(28)
        m.d.comb += r.eq(Cat(total[:27], total[27] ^ v.sub))   # drop the 2^27 of ~y + 1
        # Sentinel at bit 27 - Ex (none when Ex > 27): lz(r | sentinel) = min(lz(r), Ex).
        sentinel = Signal(28)
        m.d.comb += sentinel.eq((Const(1 << 27, 28) >> v.Ex)[:28])
        v = _cut(m, cuts, "add", nan=v.nan, inf=v.inf, inf_sign=v.inf_sign, sx=v.sx,
                 zero_sign=v.zero_sign, Ex=v.Ex, r=r, sentinel=sentinel)

        # -- leading-zero count, limited to Ex --
        limited = Signal(28)
        m.d.comb += limited.eq(v.r | v.sentinel)
        sh = leading_zeros(m, limited, 28)
        v = _cut(m, cuts, "lzc", nan=v.nan, inf=v.inf, inf_sign=v.inf_sign,
                 res_sign=Mux(v.r == 0, v.zero_sign, v.sx), Ex=v.Ex, r=v.r, sh=sh[:5])

        # -- normalise: bit 27 of rn is the implicit one; exponent; specials decided --
        rn = Signal(28)
        m.d.comb += rn.eq((v.r << v.sh)[:28])
        exp9 = Signal(9)
        m.d.comb += exp9.eq(Mux(rn[27], (v.Ex + 1 - v.sh)[:9], 0))
        force = Signal()        # NaN, inf operand or overflow: the result is a constant
        force_value = Signal(32)
        m.d.comb += [
            force.eq(v.nan | v.inf | (exp9 >= 255)),
            force_value.eq(Mux(v.nan, CANONICAL_NAN32,
                               Cat(Const(0x7F800000, 31), Mux(v.inf, v.inf_sign, v.res_sign)))),
        ]
        v = _cut(m, cuts, "norm", force=force, force_value=force_value, res_sign=v.res_sign,
                 packed=Cat(rn[4:27], exp9[:8]),
                 round_up=rn[3] & ((rn[0:3] != 0) | rn[4]))

        # -- round to nearest even on the packed {exp, frac} field --
        rounded = Signal(31)
        m.d.comb += rounded.eq((v.packed + v.round_up)[:31])
        m.d.comb += self.s.eq(Mux(v.force, v.force_value, Cat(rounded, v.res_sign)))
        return m


class PipelinedFP16Multiplier(wiring.Component):
    """Exact IEEE binary16 x binary16 -> binary32 multiplier in ``stages`` clocks (1..4).

    Ports: ``a``, ``b`` In(16); ``p`` Out(32), combinational from the last internal
    register (``stages - 1`` clocks after the inputs). Results equal
    :class:`~rtl.arith.fp.FP16Multiplier`'s bit for bit. Cuts: ``input`` (3 and 4
    stages) registers the operands (their source, e.g. a chunk multiplexer, then has a
    clock of its own before the DSP block), ``product`` after the 11 x 11 significand
    product (a DSP block) and the special-value decision, ``lzc`` (4 stages) after the
    product's leading-zero count; the last stage normalises and packs.
    """

    a: In(16)
    b: In(16)
    p: Out(32)

    def __init__(self, stages: int = 2):
        _check_stages(self, stages, MULTIPLIER_CUTS)
        self.stages = stages
        self.cuts = MULTIPLIER_CUTS[stages]
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        v = _cut(m, self.cuts, "input", a=self.a, b=self.b)
        a, b = v.a, v.b
        sa, ea, fa, a_zero, a_inf, a_nan = ieee_fields(a, 5)
        sb, eb, fb, b_zero, b_inf, b_nan = ieee_fields(b, 5)
        ma, mb = Signal(11), Signal(11)
        m.d.comb += [ma.eq(Cat(fa, ea != 0)), mb.eq(Cat(fb, eb != 0))]
        Ea, Eb = Signal(5), Signal(5)
        m.d.comb += [Ea.eq(ea | (ea == 0)), Eb.eq(eb | (eb == 0))]
        prod = Signal(22)
        m.d.comb += prod.eq((ma * mb)[:22])
        sign = Signal()
        m.d.comb += sign.eq(sa ^ sb)
        # special: 0 none, 1 NaN, 2 inf, 3 zero (in FP16Multiplier's priority order)
        special = Signal(2)
        with m.If(a_nan | b_nan | (a_inf & b_zero) | (b_inf & a_zero)):
            m.d.comb += special.eq(1)
        with m.Elif(a_inf | b_inf):
            m.d.comb += special.eq(2)
        with m.Elif(a_zero | b_zero):
            m.d.comb += special.eq(3)
        with m.Else():
            m.d.comb += special.eq(0)
        exp_base = Signal(8)      # Ea + Eb + 98, in [100, 160]
        m.d.comb += exp_base.eq((Ea + Eb + 98)[:8])
        v = _cut(m, self.cuts, "product", prod=prod, sign=sign, special=special,
                 exp_base=exp_base)

        lz = leading_zeros(m, v.prod, 22)
        v = _cut(m, self.cuts, "lzc", prod=v.prod, sign=v.sign, special=v.special,
                 exp_base=v.exp_base, lz=lz)
        lz = v.lz
        norm = Signal(22)
        m.d.comb += norm.eq((v.prod << lz)[:22])
        exp = Signal(8)
        m.d.comb += exp.eq((v.exp_base - lz)[:8])
        with m.Switch(v.special):
            with m.Case(1):
                m.d.comb += self.p.eq(CANONICAL_NAN32)
            with m.Case(2):
                m.d.comb += self.p.eq(Cat(Const(0x7F800000, 31), v.sign))
            with m.Case(3):
                m.d.comb += self.p.eq(Cat(Const(0, 31), v.sign))
            with m.Default():
                m.d.comb += self.p.eq(Cat(Const(0, 2), norm[0:21], exp, v.sign))
        return m


CONVERTER_CUTS = {1: (), 2: ("shift",)}


class PipelinedFP32ToFP16(wiring.Component):
    """IEEE binary32 -> binary16 conversion, round-to-nearest-even, in ``stages`` clocks
    (1..2). Ports: ``a`` In(32); ``h`` Out(16), combinational from the last internal
    register. Results equal :class:`~rtl.arith.fp.FP32ToFP16`'s bit for bit. The cut
    (``shift``) is after the shift into binary16 position; the second stage computes the
    sticky bit, rounds and handles the special cases.
    """

    a: In(32)
    h: Out(16)

    def __init__(self, stages: int = 2):
        _check_stages(self, stages, CONVERTER_CUTS)
        self.stages = stages
        self.cuts = CONVERTER_CUTS[stages]
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        s, e, f, normal, t = fp16_alignment(m, self.a)   # as FP32ToFP16
        v = _cut(m, self.cuts, "shift", t=t[:36], sign=s, nan=(e == 255) & (f != 0),
                 overflow=e >= 143, exp5=Mux(normal, (e - 112)[:5], 0))

        q = v.t[26:36]
        round_up = Signal()
        m.d.comb += round_up.eq(v.t[25] & ((v.t[0:25] != 0) | q[0]))
        rounded = Signal(15)
        m.d.comb += rounded.eq((Cat(q, v.exp5) + round_up)[:15])
        with m.If(v.nan):
            m.d.comb += self.h.eq(CANONICAL_NAN16)
        with m.Elif(v.overflow):  # inf, or |a| >= 2^16: overflow
            m.d.comb += self.h.eq(Cat(Const(0x7C00, 15), v.sign))
        with m.Else():
            m.d.comb += self.h.eq(Cat(rounded, v.sign))
        return m
