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
  bit 2 ``STRIDED_A`` (:data:`FLAG_STRIDED_A`): ``a`` is read as a strided vector;
  bit 3 ``STRIDED_D`` (:data:`FLAG_STRIDED_D`): ``d`` is written as a strided vector.

Strided vectors (gather / scatter). With ``STRIDED_A`` / ``STRIDED_D`` the operand is a
strided vector of its element width (FP16 for the ``a`` of CVT16TO32 and the ``d`` of
CVT32TO16, FP32 otherwise; ``E`` elements per word: 32 FP16, 16 FP32) with the group
``g = imm[0:6]`` and the first lane ``lane0 = imm[8:13]`` (:func:`strided_imm`; the
other bits of ``imm`` are ignored): element ``i`` lies in word ``x + i // g``, element
lane ``lane0 + i % g`` of that word. ``g = E``, ``lane0 = 0`` is the dense layout;
``g = 1`` is a column (one element per word, e.g. ``lane0 = 5``: lane 5 of consecutive
words, a transposition); ``g = 8``, ``lane0 = 0`` with FP16: the first 8 FP16 of
consecutive words. Both flags may be set (both use the same ``g`` and ``lane0``). A
strided write writes only its elements' lanes (lane enables): every other element of
the words of ``d`` keeps its value. Allowed only with the unary ops (EXP, RECIP, RSQRT,
GELU, CVT16TO32, CVT32TO16 and the copies 12..15, which copy ``a`` to ``d`` element by
element as FP32) and ``1 <= g``, ``lane0 + g <= E`` for each strided operand; anything
else stops the NPU with ``NpuError.BAD_SHAPE`` (the sequencer's check; the engine
itself ignores the strided flags of binary ops and reductions). ``d`` may equal ``a``
when both have the same layout (same flags); other overlaps are undefined.

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
ops without ``IMM_B``), dispatch (1), the op (1 + the VectorUnit latency), write (1),
next (1): a unary op's chunk takes latency + 6 clocks.

Strided timing: the vector runs in steps; a step takes the next
``k = min(lanes, elements left, elements left in a's current group, elements left in
d's current group)`` elements (a dense operand's group is its whole word: ``E``
elements from lane 0), so every step reads one word of ``a`` and writes one word of
``d``; a step costs what a unary chunk costs: read a (2), dispatch (1), the op
(1 + latency), write (1), next (1) = latency + 6 clocks (8 for a copy or conversion,
29 for EXP). E.g. a scatter with ``g = 1`` runs one element per step, a gather of
``g = 8`` FP16 with 4 lanes 4 elements per step (2 steps per word), ``g = 4``,
``lane0 = 2`` on both operands ``min(4, lanes)`` per step.

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

__all__ = ["VectorEngine", "FLAG_SCALAR_B", "FLAG_IMM_B", "FLAG_STRIDED_A", "FLAG_STRIDED_D",
           "strided_imm", "engine_supported"]

FLAG_SCALAR_B = 1
FLAG_IMM_B = 2
FLAG_STRIDED_A = 4
FLAG_STRIDED_D = 8
NEG_INF32 = 0xFF800000


def strided_imm(group: int, lane0: int) -> int:
    """The ``imm`` of a strided VECTOR (``FLAG_STRIDED_A`` / ``FLAG_STRIDED_D``): the
    group ``g`` in bits [0, 6) and the first lane in bits [8, 13). Only the field widths
    are checked here (the NPU checks ``g >= 1`` and ``lane0 + g <= E``)."""
    if not 0 <= group < 64:
        raise ValueError(f"strided group {group} does not fit imm[0:6]")
    if not 0 <= lane0 < 32:
        raise ValueError(f"strided lane0 {lane0} does not fit imm[8:13]")
    return group | (lane0 << 8)


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
        b32, b16 = (E32 - 1).bit_length(), (E16 - 1).bit_length()   # element lane bits

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

        # ---- strided (gather / scatter) mode: unary ops only -------------------------
        strided = Signal()
        st_a = Signal()
        st_d = Signal()
        m.d.comb += [
            strided.eq(((cmd.flags & (FLAG_STRIDED_A | FLAG_STRIDED_D)) != 0)
                       & ~binary & ~is_red),
            st_a.eq(strided & ((cmd.flags & FLAG_STRIDED_A) != 0)),
            st_d.eq(strided & ((cmd.flags & FLAG_STRIDED_D) != 0)),
        ]
        group = cmd.imm[0:6]
        lane0 = cmd.imm[8:13]
        j_a, j_d = Signal(6), Signal(6)          # position in the current group
        w_a, w_d = Signal(16), Signal(16)        # word offset of the current group
        g_a, g_d = Signal(7), Signal(7)          # group sizes (a dense operand: E)
        avail_a, avail_d = Signal(7), Signal(7)  # elements left in the current groups
        lane_a, lane_d = Signal(7), Signal(7)    # element lane of the step's first element
        m.d.comb += [
            g_a.eq(Mux(st_a, group, Mux(in16, E16, E32))),
            g_d.eq(Mux(st_d, group, Mux(out16, E16, E32))),
            avail_a.eq(g_a - j_a),
            avail_d.eq(g_d - j_d),
            lane_a.eq(Mux(st_a, lane0, 0) + j_a),
            lane_d.eq(Mux(st_d, lane0, 0) + j_d),
        ]
        k0 = Signal(range(L + 1))
        k1 = Signal(range(L + 1))
        k2 = Signal(range(L + 1))
        step = Signal(range(L + 1))              # elements of this step (>= 1)
        m.d.comb += [
            k0.eq(Mux(remaining < L, remaining, L)),
            k1.eq(Mux(avail_a < k0, avail_a, k0)),
            k2.eq(Mux(avail_d < k1, avail_d, k1)),
            step.eq(Mux(k2 == 0, 1, k2)),        # g = 0 (rejected by the sequencer)
        ]
        s_valid = Signal(L)
        m.d.comb += s_valid.eq(Cat(*(step > k for k in range(L))))
        next_j_a, next_j_d = Signal(8), Signal(8)
        m.d.comb += [next_j_a.eq(j_a + step), next_j_d.eq(j_d + step)]

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
            rd.addr.eq(Mux(state == _State.RD_A,
                           cmd.a + Mux(strided, w_a, Mux(in16, w16, w32)),
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
        # strided: the step's elements from lane ``lane_a`` of the word on
        off_a = Signal(4 + b16)                  # bit offset: lane x 16 or x 32
        m.d.comb += off_a.eq(Mux(in16, Cat(Const(0, 4), lane_a[:b16]),
                                 Cat(Const(0, 5), lane_a[:b32])))
        sel_a = Signal(32 * L)
        m.d.comb += sel_a.eq(Cat(word, Const(0, 32 * L)).bit_select(off_a, 32 * L))
        s_lanes = Signal(32 * L)
        m.d.comb += s_lanes.eq(Cat(*(
            Mux(s_valid[k], Mux(in16, Cat(sel_a[16 * k:16 * k + 16], Const(0, 16)),
                                sel_a[32 * k:32 * k + 32]), 0)
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
        ]
        # strided: the step's results to lane ``lane_d`` on (only their lanes enabled)
        s_mask32 = Cat(*(Cat(s_valid[k], s_valid[k]) for k in range(L)))
        s_wdata = Signal(W)
        s_wmask = Signal(G)
        m.d.comb += [
            s_wdata.eq(Mux(out16, (packed16 << Cat(Const(0, 4), lane_d[:b16]))[:W],
                           (res << Cat(Const(0, 5), lane_d[:b32]))[:W])),
            s_wmask.eq(Mux(out16, (s_valid << lane_d[:b16])[:G],
                           (s_mask32 << Cat(Const(0, 1), lane_d[:b32]))[:G])),
        ]
        m.d.comb += [
            wr.addr.eq(cmd.d + Mux(final, 0,
                                   Mux(strided, w_d, Mux(out16, w16, w32)))),
            wr.data.eq(Mux(strided, s_wdata, wdata)),
            wr.lanes.eq(Mux(state == _State.WRITE, Mux(strided, s_wmask, wmask), 0)),
        ]

        # ---- control -----------------------------------------------------------------
        m.d.comb += [self.ops.ready.eq(state == _State.IDLE),
                     self.done.eq(state == _State.DONE)]
        with m.Switch(state):
            with m.Case(_State.IDLE):
                with m.If(self.ops.valid):
                    m.d.sync += [cmd.eq(self.ops.payload), chunk.eq(0), final.eq(0),
                                 j_a.eq(0), j_d.eq(0), w_a.eq(0), w_d.eq(0),
                                 remaining.eq(self.ops.payload.length),
                                 state.eq(Mux(self.ops.payload.length == 0, _State.DONE,
                                              _State.RD_A))]
            with m.Case(_State.RD_A):
                with m.If(rd.grant):
                    m.d.sync += state.eq(_State.CAP_A)
            with m.Case(_State.CAP_A):
                m.d.sync += ra.eq(Mux(strided, s_lanes, a_lanes))
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
                with m.If(strided):
                    with m.If(remaining > step):
                        m.d.sync += [remaining.eq(remaining - step), state.eq(_State.RD_A)]
                        with m.If(next_j_a >= g_a):
                            m.d.sync += [j_a.eq(0), w_a.eq(w_a + 1)]
                        with m.Else():
                            m.d.sync += j_a.eq(next_j_a)
                        with m.If(next_j_d >= g_d):
                            m.d.sync += [j_d.eq(0), w_d.eq(w_d + 1)]
                        with m.Else():
                            m.d.sync += j_d.eq(next_j_d)
                    with m.Else():
                        m.d.sync += state.eq(_State.DONE)
                with m.Elif(~last):
                    m.d.sync += [chunk.eq(chunk + 1), remaining.eq(remaining - L),
                                 state.eq(_State.RD_A)]
                with m.Elif(is_red):
                    m.d.sync += [final.eq(1), state.eq(_State.EXEC)]
                with m.Else():
                    m.d.sync += state.eq(_State.DONE)
            with m.Default():                         # DONE
                m.d.sync += state.eq(_State.IDLE)
        return m
