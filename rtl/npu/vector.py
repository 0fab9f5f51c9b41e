"""The NPU vector unit: ``lanes`` FP32 SIMD lanes driven by one micro-sequencer.

Interface
---------
``i`` (``In(stream.Signature(VectorUnit.in_layout))``), payload ``data.StructLayout``:
  ``op``        :class:`VectorOp`
  ``scalar_b``  1: every lane uses lane 0 of ``b`` (scalar-broadcast operand)
  ``a``, ``b``  ``ArrayLayout(32, lanes)``: binary32 bit patterns, lane i = element i.
``o`` (``Out(stream.Signature(VectorUnit.out_layout))``), payload ``data``:
  ``ArrayLayout(32, lanes)``. ``o.valid`` never depends on ``o.ready``; a result is
  held until ``o.ready``.

Operations (:class:`VectorOp`). Latency = clocks from the cycle ``i`` transfers to the
first cycle ``o.valid`` is high (``o.ready`` high) = steps + 1; ``steps`` = micro-steps
(:func:`steps_for`, :func:`latency_for`):

  ===========  ===================================================  =====  =======
  op           result lane i                                         steps  latency
  ===========  ===================================================  =====  =======
  ADD          a[i] + b[i]                                           1      2
  SUB          a[i] - b[i]                                           1      2
  MUL          a[i] * b[i]                                           1      2
  MAX          max(a[i], b[i])  (-0 < +0; NaN operand -> NaN)        1      2
  SUM          pairwise-tree sum of a[0..lanes-1], in every lane     L      L + 1
  RMAX         tree max of a[0..lanes-1], in every lane              L      L + 1
  EXP          exp(a[i])                                             22     23
  RECIP        1 / a[i]                                              12     13
  RSQRT        1 / sqrt(a[i])                                        15     16
  GELU         tanh-approximation GELU of a[i]                       41     42
  CVT16TO32    binary16 in a[i][0:16] -> binary32 (exact)            1      2
  CVT32TO16    binary32 a[i] -> binary16 (RNE) in bits [0:16]        1      2
  ===========  ===================================================  =====  =======

``L = ceil(log2(lanes))`` (1 for a single lane): 2 for 4 lanes, 3 for 8, 7 for 128.
``b`` means lane 0 of ``b`` in every lane when ``scalar_b`` is set. Reductions
broadcast their result to every lane (so it feeds a following op as ``b``
directly). Opcodes 12-15 copy ``a`` (1 step). All arithmetic is IEEE binary32, RNE,
subnormals kept, NaN canonical (``0x7FC00000``); the golden model is
:mod:`sim.golden.vector`, which also states the error bounds against float64.

Throughput: one op at a time. A new op is accepted in the cycle the previous one
executes its last step (provided its result can be written: the output register is
empty or being read, so ``i.ready`` depends combinationally on ``o.ready``); with
``o.ready`` high, back-to-back ops complete one every ``steps`` clocks: elementwise ops
and conversions stream at one vector per clock, EXP one per 22 clocks.

Datapath and micro-code
-----------------------
Each lane has eight 32-bit registers (R0 = a, R1 = b, loaded on accept; R2..R7
temporaries), one integer register N (signed 10 bits) and, all combinational, one
FP32 multiplier, one FP32 adder (its b operand can be negated: subtraction), a
min/max unit, ``FP32Frexp`` (range reduction), two seed tables, ``FP32Ldexp``
(scale by 2^N), the two conversions and three special-value fix-up muxes (operands
of unused units are held at zero: operand isolation). Every
clock one micro-instruction (shared by all lanes) selects two sources (registers or
a 32-bit immediate), one unit and a destination (register, output, or none); an
op is a fixed micro-program, so its latency is fixed. Reductions use the adder /
max unit with its b operand taken from lane ``i + 2^(l-1)`` at level ``l``:
a balanced pairwise tree (lanes (0,1), (2,3), ... then (0,2), (4,6), ...; a lane
without a partner passes its value up), then the root goes to every lane.

Non-linear algorithms (the golden model mirrors every rounding):
  * EXP: clamp x to [-104, 89] (min/max: NaN stays NaN; below -104 the result
    rounds to 0, above 89 to inf); t = x * log2(e); s = t + 1.5*2^23 and
    n = bits(s) - bits(1.5*2^23) = rint(t); nf = s - 1.5*2^23; Cody-Waite
    reduction r = (x - nf*LN2_HI) - nf*LN2_LO (LN2_HI has 15 significant bits and
    |n| <= 150, so nf*LN2_HI is exact, and x - nf*LN2_HI is exact by Sterbenz's
    lemma); p = Horner degree-6 polynomial (relative-minimax fit of e^r on
    [-0.36, 0.36], c0 = c1 = 1): ((r*c6 + c5)*r + c4)*r ... + c0; result =
    ldexp(p, n) (one rounding, only for subnormal results).
  * RECIP: frexp x = m * 2^e (m in (-2,-1] U [1,2), sign kept); seed y0 from a
    64-entry table indexed by the top 6 fraction bits of m (seed (256 + k)/512,
    8 stored bits k; max relative error 0.0083 = 2^-6.9); two Newton-Raphson steps
    y = y + y*(1 - m*y) (error ~ e0^4 < 2^-27 before rounding);
    result ldexp(y, -e); fix-up: +-0 -> +-inf, +-inf -> +-0, NaN -> NaN.
  * RSQRT: frexp, m' = m or 2m so that the exponent e' is even, m' in [1, 4);
    seed y0 from a 128-entry table (range half, top 6 fraction bits; max relative
    error 0.0050 = 2^-7.6); h = m'/2
    (exact); two Newton-Raphson steps y = y + y*(0.5 - h*(y*y)); result
    ldexp(y, -e'/2); fix-up: +0 -> +inf, -0 -> -inf, x < 0 -> NaN, +inf -> +0.
  * GELU (tanh approximation, 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
    = x * sigmoid(2z) = x / (1 + exp(-2z))): u = (x*x)*(-C2) + (-C1) with
    C1 = 2 sqrt(2/pi), C2 = C1 * 0.044715; w = x*u (= -2z); e = EXP(w);
    d = e + 1; r = RECIP(d); g = x * r; fix-up: -inf -> -0.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.wiring import In, Out

from ..arith.fp import CANONICAL_NAN32, FP32Adder, FP32ToFP16
from ..arith.fp32 import (INF32, ROUND_MAGIC, FP16ToFP32, FP32Frexp, FP32Ldexp, FP32MinMax,
                          FP32Multiplier, bits_f32, f32_bits)
from ..common import shared_instance

__all__ = ["VectorOp", "VectorUnit", "in_layout", "out_layout", "pack_input", "unpack_output",
           "Unit", "Uop", "programs", "steps_for", "latency_for",
           "EXP_CLAMP_HI", "EXP_CLAMP_LO", "LOG2E", "LN2_HI", "LN2_LO", "EXP_POLY",
           "RCP_SEED", "RSQ_SEED", "GELU_NEG_C1", "GELU_NEG_C2", "ONE", "HALF",
           "ROUND_MAGIC", "N_WIDTH"]


class VectorOp(enum.Enum, shape=4):
    ADD = 0
    SUB = 1
    MUL = 2
    MAX = 3
    SUM = 4
    RMAX = 5
    EXP = 6
    RECIP = 7
    RSQRT = 8
    GELU = 9
    CVT16TO32 = 10
    CVT32TO16 = 11


# ---------------------------------------------------------------------------
# Constants of the algorithms (binary32 bit patterns; the golden model imports them)
# ---------------------------------------------------------------------------

ONE = 0x3F800000
HALF = 0x3F000000
EXP_CLAMP_HI = f32_bits(89.0)
EXP_CLAMP_LO = f32_bits(-104.0)
LOG2E = f32_bits(1.0 / math.log(2.0))
LN2_HI = 0x3F317200  # 0.693145751953125: 15 significant bits
LN2_LO = f32_bits(math.log(2.0) - bits_f32(LN2_HI))
#: e^r ~ c0 + c1 r + ... + c6 r^6 on [-0.36, 0.36] (relative minimax, coefficients
#: rounded to binary32), lowest degree first.
EXP_POLY = (0x3F800000, 0x3F800000, 0x3EFFFFFD, 0x3E2AA9EA, 0x3D2AAC78, 0x3C094450, 0x3AB55F7C)
_GELU_C1 = 2.0 * math.sqrt(2.0 / math.pi)
GELU_NEG_C1 = f32_bits(-_GELU_C1)
GELU_NEG_C2 = f32_bits(-_GELU_C1 * 0.044715)
N_WIDTH = 10
SEED_BITS = 8  # stored fraction bits of a seed; a seed is (256 + k) / 512 in (0.5, 1)


def _seed_code(y: float) -> int:
    k = round(y * 512) - 256
    assert 0 <= k < 256, y
    return k


#: RECIP seed for m in [1 + i/64, 1 + (i+1)/64): 2 / (lo + hi) (equal relative error
#: at both ends), rounded to 9 significant bits; stored as k, seed = (256 + k) / 512.
RCP_SEED = tuple(_seed_code(2.0 / ((1 + i / 64) + (1 + (i + 1) / 64))) for i in range(64))
#: RSQRT seed, index j + 64 * half: m' in [1 + j/64, ...) (half 1) or [2 + 2j/64, ...)
#: (half 0, m' in [2, 4)): 2 / (sqrt(lo) + sqrt(hi)).
RSQ_SEED = tuple(
    _seed_code(2.0 / (math.sqrt(lo) + math.sqrt(lo + w)))
    for half in (0, 1)
    for j in range(64)
    for lo, w in [((2 + 2 * j / 64, 2 / 64) if half == 0 else (1 + j / 64, 1 / 64))])


# ---------------------------------------------------------------------------
# Micro-code
# ---------------------------------------------------------------------------

class Unit(enum.Enum, shape=4):
    PASS = 0       # src a
    ADD = 1        # a + (+-b)
    MUL = 2        # a * b
    MAX = 3
    MIN = 4
    RCP_PREP = 5   # frexp: m (sign kept); N = -e
    RSQ_PREP = 6   # m' in [1, 4); N = -floor(e/2)
    SEED_RCP = 7
    SEED_RSQ = 8
    LDEXP = 9      # a * 2^N
    FIX_RCP = 10   # special(a) or b
    FIX_RSQ = 11
    FIX_GELU = 12
    CVT16 = 13
    CVT32 = 14


R_A, R_B = 0, 1        # registers loaded from the payload
N_REGS = 8
DST_OUT, DST_NONE = 8, 9
SRC_IMM = 8


@dataclass(frozen=True)
class Uop:
    """One micro-instruction: ``dst = unit(a, b)`` in every lane."""
    unit: Unit
    dst: int = DST_NONE
    a: int = R_A
    b: int = R_B
    imm: int = 0
    neg_b: bool = False
    level: int = 0      # reduction level (partner lane i + 2^(level-1)); 0: none
    set_n: bool = False  # N = bits(result) - bits(ROUND_MAGIC)
    bcast: bool = False  # the output takes lane 0's result in every lane


class _Imm(int):
    pass


def imm(bits: int) -> _Imm:
    return _Imm(bits)


def _u(unit, dst, a=R_A, b=R_B, **kw):
    imms = {x for x in (a, b) if isinstance(x, _Imm)}
    assert len(imms) <= 1, "one immediate per micro-instruction"
    value = int(next(iter(imms))) if imms else 0
    src = [SRC_IMM if isinstance(x, _Imm) else x for x in (a, b)]
    return Uop(unit, dst, src[0], src[1], imm=value, **kw)


def exp_program(x, d, t0, t1, t2):
    prog = [
        _u(Unit.MIN, t0, x, imm(EXP_CLAMP_HI)),
        _u(Unit.MAX, t0, t0, imm(EXP_CLAMP_LO)),            # xc
        _u(Unit.MUL, t1, t0, imm(LOG2E)),                   # t
        _u(Unit.ADD, t1, t1, imm(ROUND_MAGIC), set_n=True),  # s; N = rint(t)
        _u(Unit.ADD, t1, t1, imm(ROUND_MAGIC), neg_b=True),  # nf
        _u(Unit.MUL, t2, t1, imm(LN2_HI)),
        _u(Unit.ADD, t2, t0, t2, neg_b=True),               # r1 = xc - nf*LN2_HI
        _u(Unit.MUL, t1, t1, imm(LN2_LO)),
        _u(Unit.ADD, t2, t2, t1, neg_b=True),               # r = r1 - nf*LN2_LO
        _u(Unit.MUL, t1, t2, imm(EXP_POLY[6])),
        _u(Unit.ADD, t1, t1, imm(EXP_POLY[5])),
    ]
    for c in reversed(EXP_POLY[:5]):
        prog += [_u(Unit.MUL, t1, t1, t2), _u(Unit.ADD, t1, t1, imm(c))]
    prog.append(_u(Unit.LDEXP, d, t1))
    return prog


def recip_program(x, d, t0, t1, t2):
    prog = [_u(Unit.RCP_PREP, t0, x), _u(Unit.SEED_RCP, t1, t0)]
    for _ in range(2):
        prog += [_u(Unit.MUL, t2, t0, t1),
                 _u(Unit.ADD, t2, imm(ONE), t2, neg_b=True),
                 _u(Unit.MUL, t2, t1, t2),
                 _u(Unit.ADD, t1, t1, t2)]
    return prog + [_u(Unit.LDEXP, t1, t1), _u(Unit.FIX_RCP, d, x, t1)]


def rsqrt_program(x, d, t0, t1, t2):
    prog = [_u(Unit.RSQ_PREP, t0, x), _u(Unit.SEED_RSQ, t1, t0),
            _u(Unit.MUL, t0, t0, imm(HALF))]
    for _ in range(2):
        prog += [_u(Unit.MUL, t2, t1, t1),
                 _u(Unit.MUL, t2, t0, t2),
                 _u(Unit.ADD, t2, imm(HALF), t2, neg_b=True),
                 _u(Unit.MUL, t2, t1, t2),
                 _u(Unit.ADD, t1, t1, t2)]
    return prog + [_u(Unit.LDEXP, t1, t1), _u(Unit.FIX_RSQ, d, x, t1)]


def gelu_program(x, d):
    return ([_u(Unit.MUL, 2, x, x),
             _u(Unit.MUL, 2, 2, imm(GELU_NEG_C2)),
             _u(Unit.ADD, 2, 2, imm(GELU_NEG_C1)),
             _u(Unit.MUL, 2, x, 2)]                      # -2z
            + exp_program(2, 2, 3, 4, 5)
            + [_u(Unit.ADD, 2, 2, imm(ONE))]
            + recip_program(2, 2, 3, 4, 5)
            + [_u(Unit.MUL, 2, x, 2), _u(Unit.FIX_GELU, d, x, 2)])


def reduce_program(unit, lanes):
    levels = (lanes - 1).bit_length()
    if levels == 0:
        return [_u(Unit.PASS, DST_OUT, R_A, bcast=True)]
    return [_u(unit, DST_OUT if level == levels else R_A, R_A, R_A, level=level,
               bcast=level == levels) for level in range(1, levels + 1)]


def programs(lanes: int) -> dict:
    """The micro-program of every op (and ``None``: undefined opcodes) for ``lanes``."""
    O = DST_OUT
    return {
        VectorOp.ADD: [_u(Unit.ADD, O)],
        VectorOp.SUB: [_u(Unit.ADD, O, neg_b=True)],
        VectorOp.MUL: [_u(Unit.MUL, O)],
        VectorOp.MAX: [_u(Unit.MAX, O)],
        VectorOp.SUM: reduce_program(Unit.ADD, lanes),
        VectorOp.RMAX: reduce_program(Unit.MAX, lanes),
        VectorOp.EXP: exp_program(R_A, O, 2, 3, 4),
        VectorOp.RECIP: recip_program(R_A, O, 2, 3, 4),
        VectorOp.RSQRT: rsqrt_program(R_A, O, 2, 3, 4),
        VectorOp.GELU: gelu_program(R_A, O),
        VectorOp.CVT16TO32: [_u(Unit.CVT16, O)],
        VectorOp.CVT32TO16: [_u(Unit.CVT32, O)],
        None: [_u(Unit.PASS, O)],
    }


def steps_for(op: VectorOp, lanes: int) -> int:
    """Micro-steps of ``op``: back-to-back ops of this kind complete every ``steps`` clocks."""
    return len(programs(lanes)[VectorOp(op)])


def latency_for(op: VectorOp, lanes: int) -> int:
    """Clocks from the input transfer to the first cycle of ``o.valid``."""
    return steps_for(op, lanes) + 1


# ---------------------------------------------------------------------------
# Hardware
# ---------------------------------------------------------------------------

def _control_layout(levels: int):
    return data.StructLayout({
        "unit": Unit, "dst": 4, "a": 4, "b": 4, "neg_b": 1, "level": range(levels + 2),
        "set_n": 1, "bcast": 1, "imm": 32})


def in_layout(lanes: int) -> data.StructLayout:
    """Input payload: ``op`` (bits 0-3), ``scalar_b`` (bit 4), ``a`` (bits 5 ..
    5 + 32 lanes, lane i at 5 + 32 i), ``b`` (the next 32 lanes bits)."""
    return data.StructLayout({"op": VectorOp, "scalar_b": 1,
                              "a": data.ArrayLayout(32, lanes), "b": data.ArrayLayout(32, lanes)})


def out_layout(lanes: int) -> data.StructLayout:
    """Output payload: ``data``, lane i in bits [32 i, 32 i + 32)."""
    return data.StructLayout({"data": data.ArrayLayout(32, lanes)})


def _pack_lanes(values) -> int:
    return sum((int(v) & 0xFFFFFFFF) << (32 * i) for i, v in enumerate(values))


def pack_input(lanes: int, op, a, b=None, scalar_b=False) -> int:
    """The input payload as a packed integer (for simulators); ``a``, ``b``: ``lanes``
    binary32 bit patterns each (``b`` defaults to zeros); ``op`` a VectorOp or int."""
    layout = in_layout(lanes)
    fields = {"op": op.value if isinstance(op, VectorOp) else int(op),
              "scalar_b": int(bool(scalar_b)), "a": _pack_lanes(a),
              "b": _pack_lanes([0] * lanes if b is None else b)}
    return sum(value << layout[name].offset for name, value in fields.items())


def unpack_output(lanes: int, value: int) -> list:
    """The lanes of a packed output payload, as binary32 bit patterns."""
    return [(int(value) >> (32 * i)) & 0xFFFFFFFF for i in range(lanes)]


#: The lanes' arithmetic units: (name, constructor, Verilog module name when shared).
LANE_UNITS = (("mul", FP32Multiplier, "neupims_vector_fp32_mul"),
              ("add", FP32Adder, "neupims_vector_fp32_add"),
              ("minmax", FP32MinMax, "neupims_vector_fp32_minmax"),
              ("frexp", FP32Frexp, "neupims_vector_fp32_frexp"),
              ("ldexp", lambda: FP32Ldexp(N_WIDTH), "neupims_vector_fp32_ldexp"),
              ("cvt16", FP16ToFP32, "neupims_vector_fp16_to_fp32"),
              ("cvt32", FP32ToFP16, "neupims_vector_fp32_to_fp16"))


class VectorUnit(wiring.Component):
    """``config.npu.vector_lanes`` FP32 lanes; see the module docstring. With
    ``config.datapath`` False (timing-only) only the micro-sequencer and the output
    handshake are built: every op takes the same clocks, its result is zero.

    ``shared_modules``: every lane's arithmetic units (:data:`LANE_UNITS`, all
    combinational) as instances of one Verilog module each, listed by
    :meth:`verilog_modules` (Verilog many times smaller for wide units; Verilator and
    export only: Amaranth's simulator needs False)."""

    def __init__(self, config, shared_modules: bool = False):
        self.config = config
        self.shared_modules = shared_modules and config.datapath
        self.prototypes = ({name: make() for name, make, _ in LANE_UNITS}
                           if self.shared_modules else {})
        self.lanes = lanes = config.npu.vector_lanes
        self.levels = (lanes - 1).bit_length()
        self.in_layout = in_layout(lanes)
        self.out_layout = out_layout(lanes)
        self.programs = programs(lanes)
        super().__init__({"i": In(stream.Signature(self.in_layout)),
                          "o": Out(stream.Signature(self.out_layout))})

    def steps(self, op) -> int:
        return len(self.programs[VectorOp(op)])

    def verilog_modules(self):
        """Extra Verilog modules this unit instantiates: (component, module name)."""
        return [(self.prototypes[name], module) for name, _, module in LANE_UNITS
                if name in self.prototypes]

    def _unit(self, m, name, lane):
        make, module = {n: (mk, mod) for n, mk, mod in LANE_UNITS}[name]
        if self.shared_modules:
            return shared_instance(m, f"l{lane}_{name}", module, self.prototypes[name],
                                   clocked=False)
        unit = m.submodules[f"l{lane}_{name}"] = make()
        return unit

    def latency(self, op) -> int:
        return self.steps(op) + 1

    def pack_input(self, op, a, b=None, scalar_b=False) -> int:
        return pack_input(self.lanes, op, a, b, scalar_b)

    def unpack_output(self, value: int) -> list:
        return unpack_output(self.lanes, value)

    def _rom(self):
        """(flat list of micro-instructions, {op: entry address})."""
        rom, entry = [], {}
        for op, prog in self.programs.items():
            entry[op] = len(rom)
            rom.extend(prog)
        return rom, entry

    def elaborate(self, platform):
        m = Module()
        lanes = self.lanes
        rom, entry = self._rom()
        layout = _control_layout(self.levels)

        # ---- sequencer -------------------------------------------------------
        busy = Signal()
        upc = Signal(range(len(rom)))
        ctrl = Signal(layout)
        with m.Switch(upc):
            for address, uop in enumerate(rom):
                with m.Case(address):
                    m.d.comb += ctrl.eq(layout.const({
                        "unit": uop.unit, "dst": uop.dst, "a": uop.a, "b": uop.b,
                        "neg_b": uop.neg_b, "level": uop.level, "set_n": uop.set_n,
                        "bcast": uop.bcast, "imm": uop.imm}))
            with m.Default():
                m.d.comb += ctrl.eq(layout.const({"unit": Unit.PASS, "dst": DST_NONE}))

        last = Signal()
        stall = Signal()
        step = Signal()
        m.d.comb += [
            last.eq(ctrl.dst == DST_OUT),
            stall.eq(busy & last & self.o.valid & ~self.o.ready),
            step.eq(busy & ~stall),
            self.i.ready.eq(~busy | (last & ~stall)),
        ]
        with m.If(step):
            m.d.sync += upc.eq(upc + 1)
            with m.If(last):
                m.d.sync += busy.eq(0)
        start = Signal(range(len(rom)))
        with m.Switch(self.i.payload.op):
            for op in VectorOp:
                with m.Case(op):
                    m.d.comb += start.eq(entry[op])
            with m.Default():
                m.d.comb += start.eq(entry[None])
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [busy.eq(1), upc.eq(start)]

        # ---- output register ---------------------------------------------------
        write_out = Signal()
        m.d.comb += write_out.eq(step & last)
        with m.If(write_out):
            m.d.sync += self.o.valid.eq(1)
        with m.Elif(self.o.ready):
            m.d.sync += self.o.valid.eq(0)

        # ---- lanes (one sub-module each); none in a timing-only elaboration
        #      (``config.datapath`` False: the sequencer above keeps every op's steps and
        #      handshakes, ``o.payload`` carries zeros) --------------------------------
        if not self.config.datapath:
            return m
        accept = Signal()
        m.d.comb += accept.eq(self.i.valid & self.i.ready)
        regs = [[Signal(32, name=f"l{i}_r{j}") for j in range(N_REGS)] for i in range(lanes)]
        src_a = [Signal(32, name=f"l{i}_src_a") for i in range(lanes)]
        src_b = [Signal(32, name=f"l{i}_src_b") for i in range(lanes)]
        results = []
        for i in range(lanes):
            lm = m.submodules[f"lane{i}"] = Module()
            for sel, sig in ((ctrl.a, src_a[i]), (ctrl.b, src_b[i])):
                with lm.Switch(sel):
                    for j in range(N_REGS):
                        with lm.Case(j):
                            lm.d.comb += sig.eq(regs[i][j])
                    with lm.Default():
                        lm.d.comb += sig.eq(ctrl.imm)
            results.append(self._lane(lm, i, ctrl, regs[i], src_a, src_b[i], step))
            b_val = Signal(32, name=f"l{i}_b_in")
            lm.d.comb += b_val.eq(Mux(self.i.payload.scalar_b, self.i.payload.b[0],
                                      self.i.payload.b[i]))
            with lm.If(accept):
                lm.d.sync += [regs[i][R_A].eq(self.i.payload.a[i]), regs[i][R_B].eq(b_val)]

        for i in range(lanes):
            with m.If(write_out):
                m.d.sync += self.o.payload.data[i].eq(Mux(ctrl.bcast, results[0], results[i]))
        return m

    def _lane(self, m, i, ctrl, regs, src_a, b_sel, step):
        """Units of lane ``i``; register/N write-back; returns the lane's result signal."""
        lanes = self.lanes
        a = src_a[i]
        b = Signal(32, name=f"l{i}_b")
        # The b operand: the selected source (optionally negated), or the partner lane's
        # a source at a reduction level.
        partner = Signal(32, name=f"l{i}_partner")
        joins = Signal(name=f"l{i}_joins")
        with m.Switch(ctrl.level):
            for level in range(1, self.levels + 1):
                dist = 1 << (level - 1)
                with m.Case(level):
                    if i % (2 * dist) == 0 and i + dist < lanes:
                        m.d.comb += [partner.eq(src_a[i + dist]), joins.eq(1)]
                    else:
                        m.d.comb += [partner.eq(0), joins.eq(0)]
            with m.Default():
                m.d.comb += [partner.eq(0), joins.eq(0)]
        with m.If(ctrl.level != 0):
            m.d.comb += b.eq(partner)
        with m.Else():
            m.d.comb += b.eq(b_sel ^ (ctrl.neg_b << 31))

        mul, add, mm, frexp, ldexp, cvt16, cvt32 = (
            self._unit(m, name, i) for name in ("mul", "add", "minmax", "frexp", "ldexp",
                                                "cvt16", "cvt32"))
        n_reg = Signal(signed(N_WIDTH), name=f"l{i}_n")
        # Operand isolation: a unit's inputs are held at zero unless the current
        # micro-instruction uses it (less switching; and much faster simulation).
        unit = ctrl.unit
        use_mul = unit == Unit.MUL
        use_add = unit == Unit.ADD
        use_mm = (unit == Unit.MAX) | (unit == Unit.MIN)
        use_frexp = (unit == Unit.RCP_PREP) | (unit == Unit.RSQ_PREP)
        use_ldexp = unit == Unit.LDEXP
        m.d.comb += [
            mul.a.eq(Mux(use_mul, a, 0)), mul.b.eq(Mux(use_mul, b, 0)),
            add.a.eq(Mux(use_add, a, 0)), add.b.eq(Mux(use_add, b, 0)),
            mm.a.eq(Mux(use_mm, a, 0)), mm.b.eq(Mux(use_mm, b, 0)), mm.min.eq(unit == Unit.MIN),
            frexp.a.eq(Mux(use_frexp, a, 0)),
            ldexp.a.eq(Mux(use_ldexp, a, 0)), ldexp.n.eq(n_reg),
            cvt16.a.eq(Mux(unit == Unit.CVT16, a[0:16], 0)),
            cvt32.a.eq(Mux(unit == Unit.CVT32, a, 0)),
        ]

        # Seeds.
        rcp_k = Signal(SEED_BITS, name=f"l{i}_rcp_k")
        rsq_k = Signal(SEED_BITS, name=f"l{i}_rsq_k")
        seed_in = Signal(8, name=f"l{i}_seed_in")
        m.d.comb += seed_in.eq(Mux((unit == Unit.SEED_RCP) | (unit == Unit.SEED_RSQ), a[17:24], 0))
        with m.Switch(seed_in[0:6]):
            for index, k in enumerate(RCP_SEED):
                with m.Case(index):
                    m.d.comb += rcp_k.eq(k)
        with m.Switch(seed_in[0:7]):
            for index, k in enumerate(RSQ_SEED):
                with m.Case(index):
                    m.d.comb += rsq_k.eq(k)

        # Special-value classes of the a operand (for the fix-ups).
        sa, ea, fa = a[31], a[23:31], a[0:23]
        a_nan = (ea == 255) & (fa != 0)
        a_inf = (ea == 255) & (fa == 0)
        a_zero = (ea == 0) & (fa == 0)

        res = Signal(32, name=f"l{i}_res")
        with m.Switch(ctrl.unit):
            with m.Case(Unit.ADD):
                m.d.comb += res.eq(add.s)
            with m.Case(Unit.MUL):
                m.d.comb += res.eq(mul.p)
            with m.Case(Unit.MAX, Unit.MIN):
                m.d.comb += res.eq(mm.s)
            with m.Case(Unit.RCP_PREP):
                m.d.comb += res.eq(frexp.m)
            with m.Case(Unit.RSQ_PREP):
                m.d.comb += res.eq(Cat(frexp.m[0:23], (Const(127, 8) + frexp.e[0])[:8],
                                       Const(0, 1)))
            with m.Case(Unit.SEED_RCP):
                m.d.comb += res.eq(Cat(Const(0, 23 - SEED_BITS), rcp_k, Const(126, 8), sa))
            with m.Case(Unit.SEED_RSQ):
                m.d.comb += res.eq(Cat(Const(0, 23 - SEED_BITS), rsq_k, Const(126, 8), Const(0, 1)))
            with m.Case(Unit.LDEXP):
                m.d.comb += res.eq(ldexp.s)
            with m.Case(Unit.FIX_RCP):
                with m.If(a_nan):
                    m.d.comb += res.eq(CANONICAL_NAN32)
                with m.Elif(a_zero):
                    m.d.comb += res.eq(Cat(Const(INF32, 31), sa))
                with m.Elif(a_inf):
                    m.d.comb += res.eq(Cat(Const(0, 31), sa))
                with m.Else():
                    m.d.comb += res.eq(b)
            with m.Case(Unit.FIX_RSQ):
                with m.If(a_zero):
                    m.d.comb += res.eq(Cat(Const(INF32, 31), sa))
                with m.Elif(a_nan | sa):
                    m.d.comb += res.eq(CANONICAL_NAN32)
                with m.Elif(a_inf):
                    m.d.comb += res.eq(0)
                with m.Else():
                    m.d.comb += res.eq(b)
            with m.Case(Unit.FIX_GELU):
                with m.If(a_inf & sa):
                    m.d.comb += res.eq(0x80000000)
                with m.Else():
                    m.d.comb += res.eq(b)
            with m.Case(Unit.CVT16):
                m.d.comb += res.eq(cvt16.f)
            with m.Case(Unit.CVT32):
                m.d.comb += res.eq(Cat(cvt32.h, Const(0, 16)))
            with m.Default():  # PASS
                m.d.comb += res.eq(a)
        # A lane without a partner at a reduction level passes its value up.
        out = Signal(32, name=f"l{i}_out")
        m.d.comb += out.eq(Mux((ctrl.level != 0) & ~joins, a, res))

        with m.If(step):
            for j in range(N_REGS):
                with m.If(ctrl.dst == j):
                    m.d.sync += regs[j].eq(out)
            with m.If(ctrl.set_n):
                m.d.sync += n_reg.eq((out - ROUND_MAGIC)[:N_WIDTH])
            with m.Elif(ctrl.unit == Unit.RCP_PREP):
                m.d.sync += n_reg.eq(-frexp.e)
            with m.Elif(ctrl.unit == Unit.RSQ_PREP):
                m.d.sync += n_reg.eq(-(frexp.e >> 1))
        return out
