"""``VectorEngine``: runs the NPU's VECTOR instructions on the scratchpad through one
:class:`rtl.npu.vector.VectorUnit` (``lanes`` = ``config.npu.vector_lanes``).

Instruction semantics (``rtl.isa.npu`` VECTOR: ``vop``, ``flags``, ``a``, ``b``, ``d``,
``length``, ``imm``)
---------------------------------------------------------------------------------------

Data format. A word is one 64-byte burst. An FP32 vector of ``n`` elements at word
``x`` holds element ``i`` in word ``x + i // 16``, bits ``[32 (i % 16), +32)``
(16 binary32 per word, element 0 in the low bits). An FP16 vector holds element ``i``
in word ``x + i // 32``, bits ``[16 (i % 32), +16)`` (the GEMM engine's FP16 layout).
Every operand is FP32 except the source ``a`` of CVT16TO32 and the destination ``d``
of CVT32TO16, which are FP16 vectors (so FP16 data is handled with the CVT ops).

``vop``: a :class:`rtl.npu.vector.VectorOp` (12..15 copy ``a``); ``length``: the
element count ``n`` (0: nothing happens, ``vector_done`` still pulses).

``flags``:
  bit 0 ``SCALAR_B``: ``b`` is one FP32 value, element 0 of word ``b``, used for every
        element (broadcast);
  bit 1 ``IMM_B``: ``b`` is the FP32 bit pattern ``imm`` for every element (word ``b``
        is not read; wins over ``SCALAR_B``);
  bits 2, 3: reserved (0).

Element-wise ops (ADD, SUB, MUL, MAX: ``d[i] = a[i] op b[i]``; EXP, RECIP, RSQRT,
GELU, CVT16TO32, CVT32TO16: ``d[i] = f(a[i])``, ``b`` not read): the vector is cut
into ``ceil(n / lanes)`` chunks of ``lanes`` elements (chunk ``c``: elements
``c lanes .. c lanes + lanes - 1``), each is one VectorUnit op; only the ``n`` result
elements are written (16-bit lane enables), the rest of the words of ``d`` keep their
value. ``d`` may equal ``a`` or ``b`` (a chunk is read before it is written), except
for CVT16TO32 (its result is twice as wide as its source); other overlaps are undefined.
The sequencer's range check is on ``[x, x + length)`` *words* for a, b and d (more
than a vector needs: keep vectors that far from the end of the scratchpad).

Reductions (SUM, RMAX) follow ``sim.golden.vector``'s chunk order exactly: the last
chunk is padded (SUM: +0, RMAX: -inf), ``acc = chunk 0``, then ``acc = acc + chunk c``
(ADD; RMAX: MAX) for c = 1, 2, ... in order (one VectorUnit op each), then one SUM /
RMAX op (the lane tree). The result is one FP32 written to element 0 of word ``d``
(only that element's lanes), ready to be used as a ``SCALAR_B`` operand.

The engine runs one instruction at a time (``ops.ready`` only while idle), so VECTOR
instructions see each other's results without WAIT; other units are ordered with
WAIT VECTOR as usual. ``done`` pulses for one clock when an instruction has written
its last result.

Timing (no scratchpad contention): per chunk, read a (2 clocks), read b (2, binary
ops without ``IMM_B``), the op (1 + the VectorUnit latency), write (1), next (1).

Ports: ``ops`` (In stream, ``vector_op_layout``); ``done`` (Out, strobe);
``sp_read`` / ``sp_write`` (scratchpad client ports: retry until ``grant``);
``vu_i`` / ``vu_o``: the VectorUnit's ``i`` and ``o`` streams (connect
``engine.vu_i -> unit.i`` and ``unit.o -> engine.vu_o``).
"""
from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import enum, stream, wiring
from amaranth.lib.wiring import In, Out

from ..config import ConfigError
from .scratchpad import read_port_signature, word_bits, write_port_signature
from .sequencer import vector_op_layout
from .vector import VectorOp, in_layout, out_layout

__all__ = ["VectorEngine", "FLAG_SCALAR_B", "FLAG_IMM_B", "engine_supported"]

FLAG_SCALAR_B = 1
FLAG_IMM_B = 2
NEG_INF32 = 0xFF800000


def engine_supported(config) -> bool:
    """The engine needs ``vector_lanes`` to divide the FP32 elements of a word (16)."""
    per_word = word_bits(config) // 32
    lanes = config.npu.vector_lanes
    return lanes <= per_word and per_word % lanes == 0


class _State(enum.Enum, shape=4):
    IDLE = 0
    RD_A = 1
    CAP_A = 2
    RD_B = 3
    CAP_B = 4
    DISPATCH = 5
    EXEC = 6
    WAIT = 7
    WRITE = 8
    NEXT = 9
    DONE = 10


class VectorEngine(wiring.Component):
    """Executes VECTOR instructions; see the module docstring for the semantics."""

    def __init__(self, config):
        if not engine_supported(config):
            raise ConfigError("NpuConfig.vector_lanes",
                              f"the VectorEngine needs it to divide {word_bits(config) // 32} "
                              f"(FP32 elements per word), got {config.npu.vector_lanes}")
        self.config = config
        self.lanes = config.npu.vector_lanes
        super().__init__({
            "ops": In(stream.Signature(vector_op_layout())),
            "done": Out(1),
            "sp_read": Out(read_port_signature(config)),
            "sp_write": Out(write_port_signature(config)),
            "vu_i": Out(stream.Signature(in_layout(self.lanes))),
            "vu_o": In(stream.Signature(out_layout(self.lanes))),
        })

    def elaborate(self, platform):
        m = Module()
        L = self.lanes
        W = word_bits(self.config)
        E32, E16 = W // 32, W // 16
        P32, P16 = E32 // L, E16 // L          # chunks per word (powers of two)
        s32, s16 = P32.bit_length() - 1, P16.bit_length() - 1

        state = Signal(_State)
        cmd = Signal(vector_op_layout())
        chunk = Signal(16)
        remaining = Signal(17)                   # elements from this chunk on
        final = Signal()                         # a reduction's lane-tree step
        ra = Signal(32 * L)
        rb = Signal(32 * L)
        acc = Signal(32 * L)
        res = Signal(32 * L)

        vop = cmd.vop
        is_sum = vop == VectorOp.SUM.value
        is_rmax = vop == VectorOp.RMAX.value
        is_red = Signal()
        binary = Signal()
        in16 = Signal()
        out16 = Signal()
        imm_b = Signal()
        scalar_b = Signal()
        m.d.comb += [
            is_red.eq(is_sum | is_rmax),
            binary.eq((vop == VectorOp.ADD.value) | (vop == VectorOp.SUB.value)
                      | (vop == VectorOp.MUL.value) | (vop == VectorOp.MAX.value)),
            in16.eq(vop == VectorOp.CVT16TO32.value),
            out16.eq(vop == VectorOp.CVT32TO16.value),
            imm_b.eq((cmd.flags & FLAG_IMM_B) != 0),
            scalar_b.eq(((cmd.flags & FLAG_SCALAR_B) != 0) & ~imm_b),
        ]

        # chunk position: word offset and chunk slot inside the word
        w32, w16 = Signal(16), Signal(16)
        pos32 = Signal(range(P32)) if P32 > 1 else Const(0, 1)
        pos16 = Signal(range(P16)) if P16 > 1 else Const(0, 1)
        m.d.comb += [w32.eq(chunk >> s32), w16.eq(chunk >> s16)]
        if P32 > 1:
            m.d.comb += pos32.eq(chunk[:s32])
        if P16 > 1:
            m.d.comb += pos16.eq(chunk[:s16])

        # valid elements of this chunk
        valid = Signal(L)
        m.d.comb += valid.eq(Cat(*(remaining > k for k in range(L))))
        last = Signal()
        m.d.comb += last.eq(remaining <= L)

        # ---- scratchpad read ---------------------------------------------------------
        rd = self.sp_read
        m.d.comb += [
            rd.en.eq((state == _State.RD_A) | (state == _State.RD_B)),
            rd.addr.eq(Mux(state == _State.RD_A, cmd.a + Mux(in16, w16, w32),
                           cmd.b + Mux(scalar_b, 0, w32))),
        ]
        word = rd.data
        pad = Mux(is_rmax, NEG_INF32, 0)
        slice32 = word.word_select(pos32, 32 * L)
        slice16 = word.word_select(pos16, 16 * L)
        a_lanes = Signal(32 * L)
        m.d.comb += a_lanes.eq(Cat(*(
            Mux(valid[k], Mux(in16, Cat(slice16[16 * k:16 * k + 16], Const(0, 16)),
                              slice32[32 * k:32 * k + 32]), pad)
            for k in range(L))))
        b_lanes = Signal(32 * L)
        m.d.comb += b_lanes.eq(Mux(scalar_b, word[:32 * L], slice32))

        # ---- the VectorUnit ----------------------------------------------------------
        acc_op = Mux(is_sum, VectorOp.ADD.value, VectorOp.MAX.value)
        accumulate = is_red & ~final
        vu_op = Signal(4)
        m.d.comb += vu_op.eq(Mux(final, vop, Mux(is_red, acc_op, vop)))
        m.d.comb += [
            self.vu_i.valid.eq(state == _State.EXEC),
            self.vu_i.payload.eq(Cat(
                vu_op,
                ~is_red & (scalar_b | imm_b),
                Mux(is_red, acc, ra),
                Mux(is_red, ra, Mux(imm_b, Cat(cmd.imm, Const(0, 32 * (L - 1))), rb)))),
            self.vu_o.ready.eq(state == _State.WAIT),
        ]

        # ---- scratchpad write --------------------------------------------------------
        wr = self.sp_write
        G = W // 16                               # 16-bit write granules
        packed16 = Cat(*(res[32 * k:32 * k + 16] for k in range(L)))
        mask32 = Cat(*(Cat(valid[k], valid[k]) for k in range(L)))
        wdata = Signal(W)
        wmask = Signal(G)
        m.d.comb += [
            wdata.eq(Mux(final, res[:32],
                         Mux(out16, packed16 << (pos16 * (16 * L)),
                             res << (pos32 * (32 * L))))),
            wmask.eq(Mux(final, 0b11,
                         Mux(out16, valid << (pos16 * L), mask32 << (pos32 * (2 * L))))),
            wr.addr.eq(cmd.d + Mux(final, 0, Mux(out16, w16, w32))),
            wr.data.eq(wdata),
            wr.lanes.eq(Mux(state == _State.WRITE, wmask, 0)),
        ]

        # ---- control -----------------------------------------------------------------
        m.d.comb += [self.ops.ready.eq(state == _State.IDLE),
                     self.done.eq(state == _State.DONE)]
        with m.Switch(state):
            with m.Case(_State.IDLE):
                with m.If(self.ops.valid):
                    m.d.sync += [cmd.eq(self.ops.payload), chunk.eq(0), final.eq(0),
                                 remaining.eq(self.ops.payload.length),
                                 state.eq(Mux(self.ops.payload.length == 0, _State.DONE,
                                              _State.RD_A))]
            with m.Case(_State.RD_A):
                with m.If(rd.grant):
                    m.d.sync += state.eq(_State.CAP_A)
            with m.Case(_State.CAP_A):
                m.d.sync += ra.eq(a_lanes)
                with m.If(binary & ~imm_b):
                    m.d.sync += state.eq(_State.RD_B)
                with m.Else():
                    m.d.sync += state.eq(_State.DISPATCH)
            with m.Case(_State.RD_B):
                with m.If(rd.grant):
                    m.d.sync += state.eq(_State.CAP_B)
            with m.Case(_State.CAP_B):
                m.d.sync += [rb.eq(b_lanes), state.eq(_State.DISPATCH)]
            with m.Case(_State.DISPATCH):
                with m.If(is_red & (chunk == 0)):     # acc = chunk 0 (padded)
                    m.d.sync += [acc.eq(ra), state.eq(_State.NEXT)]
                with m.Else():
                    m.d.sync += state.eq(_State.EXEC)
            with m.Case(_State.EXEC):
                with m.If(self.vu_i.ready):
                    m.d.sync += state.eq(_State.WAIT)
            with m.Case(_State.WAIT):
                with m.If(self.vu_o.valid):
                    m.d.sync += res.eq(self.vu_o.payload.as_value())
                    with m.If(accumulate):
                        m.d.sync += [acc.eq(self.vu_o.payload.as_value()), state.eq(_State.NEXT)]
                    with m.Else():
                        m.d.sync += state.eq(_State.WRITE)
            with m.Case(_State.WRITE):
                with m.If(wr.grant):
                    m.d.sync += state.eq(Mux(final, _State.DONE, _State.NEXT))
            with m.Case(_State.NEXT):
                with m.If(~last):
                    m.d.sync += [chunk.eq(chunk + 1), remaining.eq(remaining - L),
                                 state.eq(_State.RD_A)]
                with m.Elif(is_red):
                    m.d.sync += [final.eq(1), state.eq(_State.EXEC)]
                with m.Else():
                    m.d.sync += state.eq(_State.DONE)
            with m.Default():                         # DONE
                m.d.sync += state.eq(_State.IDLE)
        return m
