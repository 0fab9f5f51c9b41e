"""``VectorEngine``: runs the NPU's VECTOR instructions on the scratchpad through one
:class:`rtl.npu.vector.VectorUnit` (``lanes`` = ``config.npu.vector_lanes``).

Instruction semantics (``rtl.isa.npu`` VECTOR: ``vop``, ``flags``, ``a``, ``b``, ``d``,
``length``, ``imm``)
---------------------------------------------------------------------------------------

Data format. A word is ``NpuConfig.word_bytes`` (one 64-byte burst by default): E32 =
``word_bytes / 4`` FP32 or E16 = ``word_bytes / 2`` FP16 (16 and 32 for 64-byte words; the
numbers below are for those). An FP32 vector of ``n`` elements at word ``x`` holds
element ``i`` in word ``x + i // 16``, bits ``[32 (i % 16), +32)`` (16 binary32 per word,
element 0 in the low bits). An FP16 vector holds element ``i`` in word ``x + i // 32``,
bits ``[16 (i % 32), +16)`` (the GEMM engine's FP16 layout).
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
``g = imm[0:8]`` and the first lane ``lane0 = imm[8:16]`` (:func:`strided_imm`; the
other bits of ``imm`` are ignored; up to 255 each, for words of up to 256 FP16): element ``i`` lies in word ``x + i // g``, element
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
for CVT16TO32 (its result is twice as wide as its source); other overlaps are undefined
by the ISA (the engine runs them as if the chunks ran one after the other, see the
pipeline below).
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

Steps. Every element-wise op (dense or strided) runs in steps: a step takes the next
``k = min(lanes, elements left, elements left in a's current group, elements left in
d's current group)`` elements (a dense operand's group is its whole word: ``E`` elements
from lane 0), so it reads one word of ``a`` (and of ``b``) and writes one word of ``d``.
For dense vectors the steps are the chunks above (``lanes`` divides ``E``); a scatter
with ``g = 1`` runs one element per step, a gather of ``g = 8`` FP16 with 4 lanes 4
elements per step (2 steps per word), ``g = 4``, ``lane0 = 2`` on both operands
``min(4, lanes)`` per step. A reduction's chunks are dense steps of ``a``.

Pipeline. The steps overlap: the engine reads the next step's words while earlier steps
are in the VectorUnit or being written.

* Reads: one word per clock on ``sp_read`` (retried until ``grant``): per step ``a``,
  then ``b`` for a binary op with a vector ``b``; a ``SCALAR_B`` word is read once,
  before the first step (if ``d``'s words include word ``b``, it is read before every
  step instead, as a vector ``b``, so that each step sees the earlier steps' writes).
* The word arrives the clock after the grant; the step's lanes are picked out of it and
  go to the VectorUnit (``vu_i``) in that clock if the operand queue is empty and the
  unit accepts, else they wait in the queue (``OPERAND_SLOTS`` = 4 steps between their
  first read and dispatch; reads stop while it is full).
* Writes: a result is written from the unit's output (``vu_o``) in the clock it is
  valid, ``vu_o.ready`` being the write ``grant``, with the step's address and granule
  enables from the pending-write table (``WRITE_SLOTS`` = 8 steps between their last
  read and their write).
* Read-after-write: a step writes only its elements' 16-bit granules. Before each read
  the engine compares the word and the granules it needs with every pending write of an
  earlier step; if one covers a granule it reads, the read waits until that write is
  done (the scratchpad's read is not transparent, so not in the write's clock either).
  So every result is the one of running the steps one after the other (each step
  read before it is written, a later step seeing every earlier write) = the previous
  serial engine and ``sim.npu_vector_programs.execute_instruction``, bit for bit, for
  any overlap of ``d`` with ``a`` / ``b``. In-place ops (``d == a`` / ``d == b``, same
  layout), steps sharing a word (lanes < elements per word, FP16 words of CVT32TO16,
  scatters of consecutive elements into one word's lanes) never wait: a later step
  reads other granules than the earlier ones write. Overlaps where a later step reads
  what an earlier one wrote (``d = a + 1``, CVT16TO32 in place, a ``SCALAR_B`` inside
  ``d``) wait.
* Reductions: ``acc = acc op chunk`` is a chain: a chunk is dispatched when the previous
  accumulation comes out of the unit (bypassed into the next op's ``a``): 2 clocks per
  chunk; the lane tree follows the last one.

Timing: clocks from the clock after ``ops`` transfers to the clock ``done`` is high,
without scratchpad contention (a withheld grant holds that read or write back, and the
steps behind it as the queues fill) and without read-after-write waits, for ``S`` steps (chunks),
``latency`` = ``rtl.npu.vector.latency_for`` (= micro-steps + 1; 2 for the copies):

  element-wise     ``R + latency + 1 + (S - 1) * max(micro-steps, R)`` (+ 1 with a
                   ``SCALAR_B`` read once); ``R`` reads per step: 1 (unary ops,
                   ``IMM_B``, ``SCALAR_B``), 2 (vector ``b``)
  reductions       ``1 + latency(SUM / RMAX) + 2 + 2 (S - 1)``
  ``length == 0``  0 (``done`` the clock after the transfer)

Per step: copies, conversions, ADD / SUB / MUL / MAX with ``IMM_B`` or ``SCALAR_B``
1 clock (S + 3 clocks in all, S + 4 with ``SCALAR_B``), ADD / SUB / MUL / MAX with a
vector ``b`` 2 (2 S + 3), EXP 22 (25 + 22 (S - 1)), RECIP 12, RSQRT 15, GELU 41 (the
VectorUnit's rate), SUM / RMAX 2; a strided ``g = 1`` copy or conversion 1 clock per
element. After ``done`` the engine is idle (``ops.ready``) the next clock, so
back-to-back instructions add 2 clocks each. (The serial engine before took, per
chunk, latency + 6 clocks for a unary op and latency + 8 for a binary one.)

Ports: ``ops`` (In stream, ``vector_op_layout``); ``done`` (Out, strobe);
``sp_read`` / ``sp_write`` (scratchpad client ports: retry until ``grant``);
``vu_i`` / ``vu_o``: the VectorUnit's ``i`` and ``o`` streams (connect
``engine.vu_i -> unit.i`` and ``unit.o -> engine.vu_o``).
"""
from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal
from amaranth.lib import enum, stream, wiring
from amaranth.lib.wiring import In, Out

from ..config import ConfigError
from .scratchpad import read_port_signature, word_bits, write_port_signature
from .sequencer import vector_op_layout
from .vector import VectorOp, in_layout, out_layout

__all__ = ["VectorEngine", "FLAG_SCALAR_B", "FLAG_IMM_B", "FLAG_STRIDED_A", "FLAG_STRIDED_D",
           "strided_imm", "engine_supported", "OPERAND_SLOTS", "WRITE_SLOTS"]

FLAG_SCALAR_B = 1
FLAG_IMM_B = 2
FLAG_STRIDED_A = 4
FLAG_STRIDED_D = 8
NEG_INF32 = 0xFF800000
#: chunks between their first operand read and their dispatch to the VectorUnit
OPERAND_SLOTS = 4
#: chunks between their last operand read and their write (the pending-write table)
WRITE_SLOTS = 8


def strided_imm(group: int, lane0: int) -> int:
    """The ``imm`` of a strided VECTOR (``FLAG_STRIDED_A`` / ``FLAG_STRIDED_D``): the
    group ``g`` in bits [0, 8) and the first lane in bits [8, 16). Only the field widths
    are checked here (the NPU checks ``g >= 1`` and ``lane0 + g <= E``)."""
    if not 0 <= group < 256:
        raise ValueError(f"strided group {group} does not fit imm[0:8]")
    if not 0 <= lane0 < 256:
        raise ValueError(f"strided lane0 {lane0} does not fit imm[8:16]")
    return group | (lane0 << 8)


def engine_supported(config) -> bool:
    """The engine needs ``vector_lanes`` to divide the FP32 elements of a word (16 for
    64-byte words, ``NpuConfig.word_bytes / 4`` in general)."""
    per_word = word_bits(config) // 32
    lanes = config.npu.vector_lanes
    return lanes <= per_word and per_word % lanes == 0


class _State(enum.Enum, shape=2):
    IDLE = 0
    RUN = 1
    DONE = 2


class _Phase(enum.Enum, shape=2):
    A = 0          # next: read the chunk's a
    B = 1          # next: read the chunk's b (binary ops reading b every chunk)
    FIN = 2        # every chunk read


class _Cap(enum.Enum, shape=2):
    A_PUSH = 0     # a of a chunk without a b read: push the chunk
    A_HOLD = 1     # a of a chunk whose b is read next: hold it
    B_PUSH = 2     # b of a chunk: push (held a, b)
    B_ONCE = 3     # the scalar b, read once per instruction


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
        G = W // 16                              # 16-bit granules (write enables) per word
        E32, E16 = W // 32, W // 16
        b32, b16 = (E32 - 1).bit_length(), (E16 - 1).bit_length()   # element lane bits
        s32 = E32.bit_length() - 1               # log2 of FP32 elements per word
        AW = len(self.sp_read.addr)
        NO, NW = OPERAND_SLOTS, WRITE_SLOTS
        assert NO & (NO - 1) == 0 and NW & (NW - 1) == 0, "queue pointers wrap"

        state = Signal(_State)
        cmd = Signal(vector_op_layout())

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
        # A scalar b is read once, unless this instruction writes its word (then, like a
        # vector b, before every chunk: each chunk sees the earlier chunks' writes).
        b_off = Signal(len(cmd.b))
        b_overlap = Signal()
        b_once = Signal()
        b_each = Signal()
        m.d.comb += [
            b_off.eq(cmd.b - cmd.d),
            b_overlap.eq((cmd.b >= cmd.d) & (b_off <= ((cmd.length - 1) >> s32))),
            b_once.eq(binary & scalar_b & ~b_overlap),
            b_each.eq(binary & ~imm_b & ~b_once),
        ]

        # ---- the chunk iterator (read side) --------------------------------------------
        # Dense operands are strided ones with g = E and lane0 = 0, so one iterator walks
        # every element-wise op: a step takes min(lanes, elements left, elements left in
        # a's group, elements left in d's group) elements (= the dense chunks when lanes
        # divides E).
        strided = Signal()
        st_a = Signal()
        st_d = Signal()
        m.d.comb += [
            strided.eq(((cmd.flags & (FLAG_STRIDED_A | FLAG_STRIDED_D)) != 0)
                       & ~binary & ~is_red),
            st_a.eq(strided & ((cmd.flags & FLAG_STRIDED_A) != 0)),
            st_d.eq(strided & ((cmd.flags & FLAG_STRIDED_D) != 0)),
        ]
        group = cmd.imm[0:8]          # <= E once the sequencer has checked it
        lane0 = cmd.imm[8:16]
        # widths for groups of up to max(63, E16) elements (extra bits for words wider
        # than one 64-byte burst)
        xw = max(0, E16.bit_length() - 6)
        remaining = Signal(17)                   # elements from this step on
        j_a, j_d = Signal(6 + xw), Signal(6 + xw)            # position in the current group
        w_a, w_d = Signal(16), Signal(16)        # word offset of the current group
        g_a, g_d = Signal(7 + xw), Signal(7 + xw)            # group sizes (a dense operand: E)
        avail_a, avail_d = Signal(7 + xw), Signal(7 + xw)    # elements left in the groups
        lane_a, lane_d = Signal(7 + xw), Signal(7 + xw)      # lane of the step's first element
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
        next_j_a, next_j_d = Signal(8 + xw), Signal(8 + xw)
        m.d.comb += [next_j_a.eq(j_a + step), next_j_d.eq(j_d + step)]
        last_step = Signal()
        m.d.comb += last_step.eq(remaining <= step)

        def granules(fp16, off, valid):
            """16-bit granules of ``valid`` elements (FP16 or FP32) from granule ``off``."""
            wide = Cat(*(Cat(valid[k], valid[k]) for k in range(L)))
            base = Signal(G)
            m.d.comb += base.eq(Mux(fp16, valid, wide))
            return (base << off)[:G]

        # granule offsets of the step's first element in a's / d's word
        off_a = Signal(b16)
        off_d = Signal(b16)
        m.d.comb += [
            off_a.eq(Mux(in16, lane_a[:b16], Cat(Const(0, 1), lane_a[:b32]))),
            off_d.eq(Mux(out16, lane_d[:b16], Cat(Const(0, 1), lane_d[:b32]))),
        ]
        a_addr = Signal(AW)
        b_addr = Signal(AW)
        d_addr = Signal(AW)
        a_need = Signal(G)                       # granules the step reads of a's word
        b_need = Signal(G)
        b_gran = Signal(b16)                     # granule offset of the step's b
        d_mask = Signal(G)                       # granules the step writes
        m.d.comb += [
            a_addr.eq(cmd.a + w_a),
            b_addr.eq(cmd.b + Mux(scalar_b, 0, w_a)),
            d_addr.eq(cmd.d + w_d),
            a_need.eq(granules(in16, off_a, s_valid)),
            b_gran.eq(Mux(scalar_b, 0, off_a)),
            b_need.eq(Mux(scalar_b, 0b11, a_need)),
            d_mask.eq(granules(out16, off_d, s_valid)),
        ]

        # ---- pending writes: chunks read but not yet written ---------------------------
        wq_valid = Signal(NW)
        wq_addr = [Signal(AW, name=f"wq_addr{i}") for i in range(NW)]
        wq_mask = [Signal(G, name=f"wq_mask{i}") for i in range(NW)]
        wq_off = [Signal(b16, name=f"wq_off{i}") for i in range(NW)]
        wq_last = Signal(NW)
        wq_wp = Signal(range(NW))
        wq_rp = Signal(range(NW))
        wq_full = Signal()
        m.d.comb += wq_full.eq(wq_valid.all())

        def hazard(addr, need):
            """A pending write of an earlier chunk covers a granule this read needs: the
            read waits until it is written (the read would return the old value)."""
            return Cat(*(wq_valid[i] & (wq_addr[i] == addr) & (wq_mask[i] & need).any()
                         for i in range(NW))).any()

        hz_a = Signal()
        hz_b = Signal()
        m.d.comb += [hz_a.eq(hazard(a_addr, a_need)), hz_b.eq(hazard(b_addr, b_need))]

        # ---- scratchpad reads ------------------------------------------------------------
        phase = Signal(_Phase)
        b_pending = Signal()                     # the scalar b is still to be read
        alloc = Signal(range(NO + 1))            # chunks from their a read to dispatch
        rd = self.sp_read
        want_once = Signal()
        want_a = Signal()
        want_b = Signal()
        m.d.comb += [
            want_once.eq((state == _State.RUN) & b_pending & b_once),
            want_a.eq((state == _State.RUN) & ~want_once & (phase == _Phase.A)
                      & (alloc < NO) & ~wq_full & ~hz_a),
            want_b.eq((state == _State.RUN) & (phase == _Phase.B) & ~hz_b),
            rd.en.eq(want_once | want_a | want_b),
            rd.addr.eq(Mux(want_a, a_addr, b_addr)),
        ]
        got_once = Signal()
        got_a = Signal()
        got_b = Signal()
        chunk_read = Signal()                    # the step's last read is granted
        m.d.comb += [
            got_once.eq(want_once & rd.grant),
            got_a.eq(want_a & rd.grant),
            got_b.eq(want_b & rd.grant),
            chunk_read.eq((got_a & ~b_each) | got_b),
        ]

        # the read word, one clock after the grant
        cap_v = Signal()
        cap_kind = Signal(_Cap)
        cap_off = Signal(b16)
        cap_16 = Signal()
        cap_valid = Signal(L)
        m.d.sync += cap_v.eq(got_once | got_a | got_b)
        with m.If(got_once):
            m.d.sync += [cap_kind.eq(_Cap.B_ONCE), cap_off.eq(0), cap_16.eq(0),
                         cap_valid.eq((1 << L) - 1)]
        with m.Elif(got_a):
            m.d.sync += [cap_kind.eq(Mux(b_each, _Cap.A_HOLD, _Cap.A_PUSH)), cap_off.eq(off_a),
                         cap_16.eq(in16), cap_valid.eq(s_valid)]
        with m.Elif(got_b):
            m.d.sync += [cap_kind.eq(_Cap.B_PUSH), cap_off.eq(b_gran), cap_16.eq(0),
                         cap_valid.eq(s_valid)]
        word = rd.data
        pad = Mux(is_rmax, NEG_INF32, 0)
        sel = Signal(32 * L)
        m.d.comb += sel.eq(Cat(word, Const(0, 32 * L)).bit_select(Cat(Const(0, 4), cap_off), 32 * L))
        lanes = Signal(32 * L)
        m.d.comb += lanes.eq(Cat(*(
            Mux(cap_valid[k], Mux(cap_16, Cat(sel[16 * k:16 * k + 16], Const(0, 16)),
                                  sel[32 * k:32 * k + 32]), pad)
            for k in range(L))))

        ra_hold = Signal(32 * L)
        rb_once = Signal(32)
        with m.If(cap_v & (cap_kind == _Cap.A_HOLD)):
            m.d.sync += ra_hold.eq(lanes)
        with m.If(cap_v & (cap_kind == _Cap.B_ONCE)):
            m.d.sync += rb_once.eq(lanes[:32])

        # ---- operand queue: read chunks waiting for the VectorUnit -----------------------
        fa = [Signal(32 * L, name=f"opq_a{i}") for i in range(NO)]
        fb = [Signal(32 * L, name=f"opq_b{i}") for i in range(NO)]
        f_wp = Signal(range(NO))
        f_rp = Signal(range(NO))
        f_count = Signal(range(NO + 1))
        push = Signal()
        push_a = Signal(32 * L)
        push_b = Signal(32 * L)
        m.d.comb += [
            push.eq(cap_v & ((cap_kind == _Cap.A_PUSH) | (cap_kind == _Cap.B_PUSH))),
            push_a.eq(Mux(cap_kind == _Cap.B_PUSH, ra_hold, lanes)),
            push_b.eq(Mux(cap_kind == _Cap.B_PUSH, lanes, 0)),
        ]
        # the head: the oldest queued chunk, or the one being pushed when the queue is
        # empty (it goes on to the VectorUnit in the clock its word arrives)
        f_empty = Signal()
        head_a = Signal(32 * L)
        head_b = Signal(32 * L)
        m.d.comb += [
            f_empty.eq(f_count == 0),
            head_a.eq(Mux(f_empty, push_a, Array(fa)[f_rp])),
            head_b.eq(Mux(f_empty, push_b, Array(fb)[f_rp])),
        ]
        for i in range(NO):
            with m.If(push & (f_wp == i)):
                m.d.sync += [fa[i].eq(push_a), fb[i].eq(push_b)]
        f_ready = Signal()
        m.d.comb += f_ready.eq(~f_empty | push)
        pop = Signal()                           # the head leaves (dispatched or acc = chunk 0)

        # ---- the VectorUnit ----------------------------------------------------------------
        final_sent = Signal()                    # a reduction's lane-tree op is dispatched
        acc_first = Signal()                     # a reduction's chunk 0 is still to come
        acc = Signal(32 * L)
        acc_valid = Signal()
        accum_out = Signal()                     # vu_o is an accumulation (not written)
        m.d.comb += accum_out.eq(is_red & ~final_sent)
        acc_in = Signal(32 * L)
        acc_avail = Signal()
        res = self.vu_o.payload.as_value()
        m.d.comb += [
            acc_in.eq(Mux(acc_valid, acc, res)),   # the last accumulation, bypassed
            acc_avail.eq(acc_valid | (self.vu_o.valid & accum_out)),
        ]
        acc_op = Mux(is_sum, VectorOp.ADD.value, VectorOp.MAX.value)
        red_step = Signal()                      # acc = acc op chunk
        red_final = Signal()                     # the lane tree over acc
        red_load = Signal()                      # acc = chunk 0
        m.d.comb += [
            red_load.eq(is_red & acc_first & f_ready),
            red_step.eq(is_red & ~acc_first & f_ready & acc_avail),
            red_final.eq(is_red & ~acc_first & ~final_sent & (phase == _Phase.FIN)
                         & (alloc == 0) & acc_avail),
        ]
        vu_op = Signal(4)
        vu_a = Signal(32 * L)
        vu_b = Signal(32 * L)
        m.d.comb += [
            vu_op.eq(Mux(red_step, acc_op, vop)),
            vu_a.eq(Mux(is_red, acc_in, head_a)),
            vu_b.eq(Mux(is_red, head_a, Mux(imm_b, cmd.imm, Mux(b_once, rb_once, head_b)))),
            self.vu_i.valid.eq((state == _State.RUN)
                               & Mux(is_red, red_step | red_final, f_ready)),
            self.vu_i.payload.eq(Cat(vu_op, ~is_red & (scalar_b | imm_b), vu_a, vu_b)),
        ]
        sent = Signal()
        m.d.comb += [
            sent.eq(self.vu_i.valid & self.vu_i.ready),
            pop.eq((sent & ~red_final) | red_load),
        ]
        with m.If(red_load):
            m.d.sync += [acc.eq(head_a), acc_valid.eq(1), acc_first.eq(0)]
        with m.Elif(sent & is_red):
            m.d.sync += acc_valid.eq(0)
        with m.Elif(self.vu_o.valid & accum_out):
            m.d.sync += [acc.eq(res), acc_valid.eq(1)]
        with m.If(sent & red_final):
            m.d.sync += final_sent.eq(1)

        m.d.sync += f_count.eq(f_count + push - pop)
        with m.If(push):
            m.d.sync += f_wp.eq(f_wp + 1)        # power-of-two slots: wraps
        with m.If(pop):
            m.d.sync += f_rp.eq(f_rp + 1)
        m.d.sync += alloc.eq(alloc + got_a - pop)

        # ---- scratchpad writes -------------------------------------------------------------
        wr = self.sp_write
        head_addr = Signal(AW)
        head_mask = Signal(G)
        head_off = Signal(b16)
        head_last = Signal()
        m.d.comb += [
            head_addr.eq(Array(wq_addr)[wq_rp]),
            head_mask.eq(Array(wq_mask)[wq_rp]),
            head_off.eq(Array(wq_off)[wq_rp]),
            head_last.eq(wq_last.bit_select(wq_rp, 1)),
        ]
        packed16 = Cat(*(res[32 * k:32 * k + 16] for k in range(L)))
        out_bits = Signal(32 * L)
        m.d.comb += out_bits.eq(Mux(out16, packed16, res))
        wr_req = Signal()
        m.d.comb += [
            wr_req.eq(self.vu_o.valid & ~accum_out),
            wr.addr.eq(head_addr),
            wr.data.eq((out_bits << Cat(Const(0, 4), head_off))[:W]),
            wr.lanes.eq(Mux(wr_req, head_mask, 0)),
            self.vu_o.ready.eq(accum_out | wr.grant),
        ]
        written = Signal()
        m.d.comb += written.eq(wr_req & wr.grant)

        # pending-write table: an entry per chunk (pushed with the chunk's last read; a
        # reduction's one entry with its lane-tree op), freed when written
        wq_push = Signal()
        push_addr = Signal(AW)
        push_mask = Signal(G)
        push_off = Signal(b16)
        push_last = Signal()
        m.d.comb += [
            wq_push.eq((chunk_read & ~is_red) | (sent & red_final)),
            push_addr.eq(Mux(is_red, cmd.d, d_addr)),
            push_mask.eq(Mux(is_red, 0b11, d_mask)),
            push_off.eq(Mux(is_red, 0, off_d)),
            push_last.eq(is_red | last_step),
        ]
        for i in range(NW):
            with m.If(wq_push & (wq_wp == i)):
                m.d.sync += [wq_addr[i].eq(push_addr), wq_mask[i].eq(push_mask),
                             wq_off[i].eq(push_off)]
        set_bits = Signal(NW)
        clr_bits = Signal(NW)
        m.d.comb += [
            set_bits.eq(Mux(wq_push, 1 << wq_wp, 0)),
            clr_bits.eq(Mux(written, 1 << wq_rp, 0)),
        ]
        m.d.sync += wq_valid.eq((wq_valid & ~clr_bits) | set_bits)
        with m.If(wq_push):
            m.d.sync += [wq_wp.eq(wq_wp + 1),
                         wq_last.eq((wq_last & ~set_bits) | Mux(push_last, set_bits, 0))]
        with m.If(written):
            m.d.sync += wq_rp.eq(wq_rp + 1)

        # ---- control -----------------------------------------------------------------------
        m.d.comb += [self.ops.ready.eq(state == _State.IDLE),
                     self.done.eq(state == _State.DONE)]
        with m.Switch(state):
            with m.Case(_State.IDLE):
                with m.If(self.ops.valid):
                    length = self.ops.payload.length
                    m.d.sync += [cmd.eq(self.ops.payload), remaining.eq(length),
                                 j_a.eq(0), j_d.eq(0), w_a.eq(0), w_d.eq(0),
                                 phase.eq(_Phase.A), b_pending.eq(1),
                                 acc_first.eq(1), acc_valid.eq(0), final_sent.eq(0),
                                 state.eq(Mux(length == 0, _State.DONE, _State.RUN))]
            with m.Case(_State.RUN):
                with m.If(got_once):
                    m.d.sync += b_pending.eq(0)
                with m.If(got_a & b_each):
                    m.d.sync += phase.eq(_Phase.B)
                with m.If(chunk_read):
                    with m.If(last_step):
                        m.d.sync += phase.eq(_Phase.FIN)
                    with m.Else():
                        m.d.sync += [phase.eq(_Phase.A), remaining.eq(remaining - step)]
                        with m.If(next_j_a >= g_a):
                            m.d.sync += [j_a.eq(0), w_a.eq(w_a + 1)]
                        with m.Else():
                            m.d.sync += j_a.eq(next_j_a)
                        with m.If(next_j_d >= g_d):
                            m.d.sync += [j_d.eq(0), w_d.eq(w_d + 1)]
                        with m.Else():
                            m.d.sync += j_d.eq(next_j_d)
                with m.If(written & head_last):
                    m.d.sync += state.eq(_State.DONE)
            with m.Default():                         # DONE
                m.d.sync += state.eq(_State.IDLE)
        return m
