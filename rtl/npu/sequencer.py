"""The NPU sequencer: instruction memory, fetch, checks and in-order dispatch to the units."""
from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ..controller.interface import MOST_GEMVS, most_comps
from ..isa.npu import (ARGUMENTS, INSTRUCTION_BITS, PIM_OPS, NpuOp, NpuUnit,
                       instruction_layout)
from .dma import dma_command_layout
from .gemm_engine import gemm_args_layout
from .scratchpad import word_bursts, word_lanes
from .vector import VectorOp

__all__ = ["Sequencer", "NpuError", "vector_op_layout", "pim_args_layout"]

COUNTER_WIDTH = 48
_VOP_FIRST_UNARY = VectorOp.EXP.value   # EXP .. CVT32TO16 and the copies 12..15: unary
_VOP_CVT16TO32 = VectorOp.CVT16TO32.value
_VOP_CVT32TO16 = VectorOp.CVT32TO16.value


class NpuError(enum.Enum, shape=4):
    """Why the NPU stopped a program (``NpuCore.error_code``, sticky until ``start``)."""
    NONE = 0
    BAD_OPCODE = 1         # an opcode that NpuOp does not define
    SCRATCHPAD_RANGE = 2   # an operand reaches beyond the scratchpad
    HBM_RANGE = 3          # a DMA reaches beyond the HBM capacity
    HBM_ALIGN = 4          # a DMA's HBM address is not a multiple of the burst
    BAD_SHAPE = 5          # zero M/K/N/count, a pitch shorter than a row, M beyond the
    #                        accumulator when K spans several tiles, acc without fp32;
    #                        a strided VECTOR operand on a non-unary op or with a bad
    #                        group / first lane
    BAD_PIM = 6            # PIM fields out of range (channel, bank, row, column, op, ...)
    PC_RANGE = 7           # the program ran past the instruction memory without HALT


class _State(enum.Enum, shape=3):
    IDLE = 0
    FETCH = 1      # the read of ``pc`` is issued
    DECODE = 2     # the word of ``pc`` is read: latch it and its check
    DISPATCH = 3   # hand it to its unit, or wait
    DRAIN = 4      # halted or stopped: wait for every unit to be idle, then ``done``


def vector_op_layout() -> data.StructLayout:
    """A VECTOR instruction's arguments, as the vector unit receives them."""
    return data.StructLayout(ARGUMENTS[NpuOp.VECTOR])


def pim_args_layout() -> data.StructLayout:
    return data.StructLayout(ARGUMENTS[NpuOp.PIM])


def _log2(value: int) -> int:
    return value.bit_length() - 1


class Sequencer(wiring.Component):
    """Fetches instructions from its memory and dispatches them in order.

    Program: ``program_en``/``program_addr``/``program_data`` write one instruction
    (``rtl.isa.npu.encode``) per clock into the ``instruction_words``-deep memory (while
    not running). ``start`` (a strobe, ignored while running) clears ``error`` and runs
    from address 0; ``running`` is high until the program has halted (or stopped on an
    error) and every unit is idle, then ``done`` rises and stays high until the next
    ``start``.

    Per instruction: fetch (synchronous memory read), decode (the checks below, against
    the configuration), dispatch: NOP goes on; DMA_LOAD/DMA_STORE, GEMM, VECTOR and PIM
    are handed to their unit's stream (``dma_cmd``, ``gemm_cmd``, ``vector_ops``,
    ``pim_cmd``) when the unit takes it (each unit decides: the GEMM engine one GEMM at a
    time, the DMA once its previous command is issued, ...), so units run concurrently;
    WAIT waits until every unit it names (``NpuUnit`` bits) reports idle (``*_busy`` low);
    HALT waits until every unit is idle. SYNC waits like WAIT, then raises ``sync_ready``
    and completes on the clock ``sync_go`` is high with it (the barrier across cores is
    outside: ``NpuTop`` raises ``sync_go`` when every core is ready or stopped; a lone
    sequencer needs ``sync_go`` tied high); ``sync_wait`` counts its clocks there.
    Nothing orders two units' accesses to the same data except WAIT (and SYNC). An
    instruction takes 2 clocks when its unit takes it at once (the next fetch overlaps
    the dispatch).

    Checks (first failing wins, ``NpuError``): unknown opcode; DMA: HBM address not a
    multiple of the burst (HBM_ALIGN), count 0 or ``slice`` >= k, for k bursts per word
    (BAD_SHAPE), bursts beyond the capacity (HBM_RANGE), words [sp, sp + ceil((slice +
    count) / k)) (``spread``: [sp, sp + count)) beyond the scratchpad (SCRATCHPAD_RANGE); GEMM: M, K or N zero, a
    pitch shorter than its matrix row, ``acc`` without ``fp32``, M > ``accumulator_rows``
    with K > H (BAD_SHAPE), A, B or C reaching past the scratchpad (SCRATCHPAD_RANGE);
    VECTOR: ``STRIDED_A`` / ``STRIDED_D`` flags (``rtl.npu.vector_engine``) on a binary
    op or a reduction, or with ``g = imm[0:8]`` zero or ``imm[8:16] + g`` beyond a
    strided operand's elements per word (BAD_SHAPE), [a, a + length), [b, ...),
    [d, ...) past the scratchpad (SCRATCHPAD_RANGE); PIM: ``pim_op`` > 2,
    channel, rank, bank group, bank, row, column, comps (> row chunks x 1024) or gemvs
    (> 1024) out of range (BAD_PIM), ``sp`` past the scratchpad; running past the last
    instruction (PC_RANGE). A failed check stops dispatch: ``error``, ``error_code`` and
    ``error_pc`` are set, the units finish what they were given, then ``done`` rises.
    """

    def __init__(self, config):
        self.config = config
        words = config.npu.instruction_words
        super().__init__({
            "program_en": In(1), "program_addr": In(range(words)),
            "program_data": In(INSTRUCTION_BITS),
            "start": In(1), "running": Out(1), "done": Out(1),
            "error": Out(1), "error_code": Out(NpuError), "error_pc": Out(range(words + 1)),
            "pc": Out(range(words + 1)),
            "dma_cmd": Out(stream.Signature(dma_command_layout())),
            "gemm_cmd": Out(stream.Signature(gemm_args_layout())),
            "vector_ops": Out(stream.Signature(vector_op_layout())),
            "pim_cmd": Out(stream.Signature(pim_args_layout())),
            "dma_busy": In(1), "gemm_busy": In(1), "vector_busy": In(1), "pim_busy": In(1),
            "sync_ready": Out(1), "sync_go": In(1),
            "instructions": Out(COUNTER_WIDTH), "sync_wait": Out(COUNTER_WIDTH),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.config
        words = cfg.npu.instruction_words
        imem = m.submodules.imem = Memory(shape=INSTRUCTION_BITS, depth=words, init=[])
        wr = imem.write_port()
        rd = imem.read_port(transparent_for=())
        m.d.comb += [wr.en.eq(self.program_en & ~self.running), wr.addr.eq(self.program_addr),
                     wr.data.eq(self.program_data)]

        fetched = Signal(instruction_layout())
        m.d.comb += fetched.eq(rd.data)
        fault = Signal(NpuError)
        m.d.comb += fault.eq(self._checks(m, fetched))

        ins = Signal(instruction_layout())
        ins_fault = Signal(NpuError)
        pc = self.pc

        busy = Cat(self.dma_busy, self.gemm_busy, self.vector_busy, self.pim_busy)
        assert [NpuUnit.DMA, NpuUnit.GEMM, NpuUnit.VECTOR, NpuUnit.PIM] == [1, 2, 4, 8]

        advance = Signal()
        m.d.comb += [rd.en.eq(1), rd.addr.eq(Mux(advance, pc + 1, pc))]

        a = ins.args
        m.d.comb += [self.dma_cmd.payload.eq(Cat(ins.op == NpuOp.DMA_STORE, a.dma.hbm, a.dma.sp,
                                                 a.dma.count, a.dma.slice, a.dma.spread)),
                     self.gemm_cmd.payload.eq(a.gemm),
                     self.vector_ops.payload.eq(a.vector),
                     self.pim_cmd.payload.eq(a.pim)]

        state = Signal(_State)
        with m.If(state == _State.IDLE):
            with m.If(self.start):
                m.d.sync += [pc.eq(0), self.running.eq(1), self.done.eq(0),
                             self.error.eq(0), self.error_code.eq(NpuError.NONE),
                             self.error_pc.eq(0), state.eq(_State.FETCH)]
        with m.Elif(state == _State.FETCH):
            with m.If(pc == words):
                m.d.sync += [self.error.eq(1), self.error_code.eq(NpuError.PC_RANGE),
                             self.error_pc.eq(pc), state.eq(_State.DRAIN)]
            with m.Else():
                m.d.sync += state.eq(_State.DECODE)
        with m.Elif(state == _State.DECODE):
            m.d.sync += [ins.eq(fetched), ins_fault.eq(fault), state.eq(_State.DISPATCH)]
        with m.Elif(state == _State.DISPATCH):
            op = ins.op
            go = Signal()
            with m.If(ins_fault != NpuError.NONE):
                m.d.sync += [self.error.eq(1), self.error_code.eq(ins_fault),
                             self.error_pc.eq(pc), state.eq(_State.DRAIN)]
            with m.Elif(op == NpuOp.NOP):
                m.d.comb += go.eq(1)
            with m.Elif((op == NpuOp.DMA_LOAD) | (op == NpuOp.DMA_STORE)):
                m.d.comb += [self.dma_cmd.valid.eq(1), go.eq(self.dma_cmd.ready)]
            with m.Elif(op == NpuOp.GEMM):
                m.d.comb += [self.gemm_cmd.valid.eq(1), go.eq(self.gemm_cmd.ready)]
            with m.Elif(op == NpuOp.VECTOR):
                m.d.comb += [self.vector_ops.valid.eq(1), go.eq(self.vector_ops.ready)]
            with m.Elif(op == NpuOp.PIM):
                m.d.comb += [self.pim_cmd.valid.eq(1), go.eq(self.pim_cmd.ready)]
            with m.Elif(op == NpuOp.WAIT):
                m.d.comb += go.eq((busy & a.wait.units) == 0)
            with m.Elif(op == NpuOp.SYNC):
                m.d.comb += [self.sync_ready.eq((busy & a.wait.units) == 0),
                             go.eq(self.sync_ready & self.sync_go)]
                m.d.sync += self.sync_wait.eq(self.sync_wait + (self.sync_ready & ~self.sync_go))
            with m.Else():   # HALT (other opcodes failed their check)
                m.d.sync += [self.instructions.eq(self.instructions + 1),
                             state.eq(_State.DRAIN)]
            with m.If(go):
                m.d.comb += advance.eq(1)
                m.d.sync += [pc.eq(pc + 1), self.instructions.eq(self.instructions + 1),
                             state.eq(Mux(pc + 1 == words, _State.FETCH, _State.DECODE))]
        with m.Else():       # DRAIN
            with m.If(busy == 0):
                m.d.sync += [self.running.eq(0), self.done.eq(1), state.eq(_State.IDLE)]
        return m

    def _checks(self, m, ins):
        """The NpuError of an instruction (NONE when it may run), combinational."""
        cfg, g, npu = self.config, self.config.geometry, self.config.npu
        spw = npu.scratchpad_words
        H = npu.array_rows
        lanes = word_lanes(cfg)
        sh16, sh32 = _log2(lanes), _log2(lanes // 2)
        bursts = g.capacity_bytes // g.burst_bytes
        offset_bits = _log2(g.burst_bytes)
        kb = _log2(word_bursts(cfg))           # burst slices per scratchpad word: 2 ** kb
        fault = Signal(4, name="check_fault")
        op = ins.op
        known = Signal()
        m.d.comb += known.eq(Cat(*(op == o for o in NpuOp)).any())

        d = ins.args.dma
        # slices [sp k + slice, + count): the last word is sp + (slice + count - 1) // k;
        # spread (one burst per word): sp + count - 1
        sp_bad = ((d.sp + d.count > spw) if kb == 0
                  else Mux(d.spread, d.sp + d.count > spw,
                           d.sp + ((d.slice + d.count - 1) >> kb) >= spw))
        dma_fault = Mux(d.hbm[:offset_bits] != 0, NpuError.HBM_ALIGN.value,
                        Mux((d.count == 0) | (d.slice >= (1 << kb)), NpuError.BAD_SHAPE.value,
                            Mux((d.hbm >> offset_bits) + d.count > bursts, NpuError.HBM_RANGE.value,
                                Mux(sp_bad, NpuError.SCRATCHPAD_RANGE.value,
                                    NpuError.NONE.value))))

        ge = ins.args.gemm
        a_words = ((ge.k - 1) >> sh16) + 1
        b_words = ((ge.n - 1) >> sh16) + 1
        c_words = Mux(ge.fp32, ((ge.n - 1) >> sh32) + 1, b_words)
        zero = (ge.m == 0) | (ge.k == 0) | (ge.n == 0)
        shape_bad = (zero | (ge.a_pitch < a_words) | (ge.b_pitch < b_words)
                     | (ge.c_pitch < c_words) | (ge.acc & ~ge.fp32)
                     | ((ge.k > H) & (ge.m > npu.accumulator_rows)))
        a_end = Signal(48, name="check_a_end")
        b_end = Signal(48, name="check_b_end")
        c_end = Signal(48, name="check_c_end")
        m.d.comb += [a_end.eq(ge.a + (ge.m - 1) * ge.a_pitch + a_words),
                     b_end.eq(ge.b + (ge.k - 1) * ge.b_pitch + b_words),
                     c_end.eq(ge.c + (ge.m - 1) * ge.c_pitch + c_words)]
        range_bad = (a_end > spw) | (b_end > spw) | (c_end > spw)
        gemm_fault = Mux(shape_bad, NpuError.BAD_SHAPE.value,
                         Mux(range_bad, NpuError.SCRATCHPAD_RANGE.value, NpuError.NONE.value))

        v = ins.args.vector
        # strided operands (rtl.npu.vector_engine FLAG_STRIDED_A = 4, FLAG_STRIDED_D = 8):
        # unary ops only (vop >= EXP), 1 <= g and lane0 + g <= elements per word
        st_a, st_d = v.flags[2], v.flags[3]
        group, lane0 = v.imm[0:8], v.imm[8:16]
        end = Signal(9, name="check_stride_end")
        m.d.comb += end.eq(lane0 + group)
        in16 = v.vop == _VOP_CVT16TO32
        out16 = v.vop == _VOP_CVT32TO16
        fp16s, fp32s = lanes, lanes // 2
        stride_bad = Signal(name="check_stride_bad")
        m.d.comb += stride_bad.eq(
            (st_a | st_d) & ((v.vop < _VOP_FIRST_UNARY) | (group == 0)
                             | (st_a & (end > Mux(in16, fp16s, fp32s)))
                             | (st_d & (end > Mux(out16, fp16s, fp32s)))))
        vector_fault = Mux(stride_bad, NpuError.BAD_SHAPE.value,
                           Mux((v.a + v.length > spw) | (v.b + v.length > spw)
                               | (v.d + v.length > spw),
                               NpuError.SCRATCHPAD_RANGE.value, NpuError.NONE.value))

        p = ins.args.pim
        pim_bad = ((p.pim_op > len(PIM_OPS) - 1) | (p.channel >= g.channels)
                   | (p.rank >= g.ranks) | (p.bankgroup >= g.bankgroups)
                   | (p.bank >= g.banks_per_group) | (p.row >= g.rows)
                   | (p.column >= cfg.bus.comps_per_row)
                   | (p.comps > most_comps(cfg)) | (p.gemvs > MOST_GEMVS))
        pim_fault = Mux(pim_bad, NpuError.BAD_PIM.value,
                        Mux(p.sp >= spw, NpuError.SCRATCHPAD_RANGE.value, NpuError.NONE.value))

        m.d.comb += fault.eq(
            Mux(~known, NpuError.BAD_OPCODE.value,
                Mux((op == NpuOp.DMA_LOAD) | (op == NpuOp.DMA_STORE), dma_fault,
                    Mux(op == NpuOp.GEMM, gemm_fault,
                        Mux(op == NpuOp.VECTOR, vector_fault,
                            Mux(op == NpuOp.PIM, pim_fault, NpuError.NONE.value))))))
        return fault
