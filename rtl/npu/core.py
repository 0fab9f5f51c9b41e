"""``NpuCore``: the sequencer, the DMA engine, the GEMM engine on a systolic array, the PIM
port and the vector-unit port around one scratchpad (NEUPIMS.md 3)."""
from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.wiring import In, Out

from ..controller.interface import (PimOp, pim_request_layout, pim_response_layout,
                                    read_response_layout, request_layout, write_response_layout)
from ..isa.npu import INSTRUCTION_BITS, SP_BITS
from .dma import DmaEngine, check_dma_config, round_robin
from .gemm_engine import GemmEngine, check_array_shape
from .scratchpad import Scratchpad, burst_lanes, read_port_signature, write_port_signature
from .sequencer import NpuError, Sequencer, pim_args_layout, vector_op_layout
from .vector import VectorUnit
from .vector_engine import VectorEngine, engine_supported

__all__ = ["NpuCore", "PimPort", "NpuError", "COUNTERS", "counters_layout"]

COUNTER_WIDTH = 48

#: The core's counters (port ``counters``), all counting since reset (they wrap).
COUNTERS = ("cycles", "instructions", "array_busy", "macs", "gemm_busy", "dma_busy",
            "dma_bytes_read", "dma_bytes_written", "vector_busy", "vector_ops", "pim_busy",
            "pim_transactions", "sync_wait")


def counters_layout() -> data.StructLayout:
    return data.StructLayout({name: COUNTER_WIDTH for name in COUNTERS})


class PimPort(wiring.Component):
    """PIM instructions to the channels' ``pim_requests``; GEMV results into the scratchpad
    (a result burst into the first burst slice of its word: lanes beyond it are kept).

    ``cmd`` (In stream, ``pim_args_layout``): one transaction, held in a register until
    channel ``channel`` takes it (``cmd.ready`` while the register is empty). A GEMV
    also records its result word ``sp`` in the channel's in-order result FIFO (32 deep;
    a GEMV waits while it is full). ``pim_responses``: one stream per channel; results
    are written to their word (``sp_write``, shared: a lost grant retries), one per clock,
    round-robin over channels. ``busy``: a transaction waits or a GEMV result is due.
    ``transactions`` (Out): transactions handed to the controllers."""

    RESULT_FIFO = 32

    def __init__(self, config):
        self.config = config
        C = config.geometry.channels
        super().__init__({
            "cmd": In(stream.Signature(pim_args_layout())),
            "busy": Out(1),
            "pim_requests": Out(stream.Signature(pim_request_layout(config))).array(C),
            "pim_responses": In(stream.Signature(pim_response_layout(config))).array(C),
            "sp_write": Out(write_port_signature(config)),
            "transactions": Out(COUNTER_WIDTH),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.config
        C = cfg.geometry.channels
        layout = pim_request_layout(cfg)
        held = Signal(pim_args_layout())
        full = Signal()
        m.d.comb += self.cmd.ready.eq(~full)
        with m.If(self.cmd.valid & ~full):
            m.d.sync += [held.eq(self.cmd.payload), full.eq(1)]

        request = Signal(layout)
        parts = {"op": held.pim_op, "rank": held.rank, "bankgroup": held.bankgroup,
                 "bank": held.bank, "row": held.row, "column": held.column,
                 "comps": held.comps, "gemvs": held.gemvs, "tag": Const(0, 1)}
        m.d.comb += request.eq(Cat(*(_fit(parts[name], layout[name].width)
                                     for name, _ in layout)))
        fifos = []
        is_gemv = held.pim_op == PimOp.GEMV.value
        sent = Signal(C)
        for c in range(C):
            fifo = SyncFIFO(width=SP_BITS, depth=self.RESULT_FIFO)
            m.submodules[f"results{c}"] = fifo
            fifos.append(fifo)
            port = self.pim_requests[c]
            here = full & (held.channel == c) & (fifo.w_rdy | ~is_gemv)
            m.d.comb += [port.valid.eq(here), port.payload.eq(request),
                         sent[c].eq(port.valid & port.ready),
                         fifo.w_en.eq(sent[c] & is_gemv), fifo.w_data.eq(held.sp)]
        with m.If(sent.any()):
            m.d.sync += [full.eq(0), self.transactions.eq(self.transactions + 1)]

        valid = Cat(*(self.pim_responses[c].valid for c in range(C)))
        pointer = Signal(range(max(C, 2)))
        winner, any_valid = round_robin(m, valid, pointer, "pim")
        addr = Signal(SP_BITS)
        rdata = Signal(cfg.geometry.burst_bytes * 8)
        m.d.comb += [addr.eq(Array(f.r_data for f in fifos)[winner]),
                     rdata.eq(Array(self.pim_responses[c].payload.data for c in range(C))[winner]),
                     self.sp_write.addr.eq(addr), self.sp_write.data.eq(rdata),
                     # burst slice 0 of the word (the whole word when it is one burst)
                     self.sp_write.lanes.eq(Mux(any_valid, (1 << burst_lanes(cfg)) - 1, 0))]
        written = any_valid & self.sp_write.grant
        for c in range(C):
            take = written & (winner == c)
            m.d.comb += [self.pim_responses[c].ready.eq(take), fifos[c].r_en.eq(take)]
        with m.If(written):
            m.d.sync += pointer.eq(Mux(winner == C - 1, 0, winner + 1))
        m.d.comb += self.busy.eq(full | Cat(*(f.r_rdy for f in fifos)).any())
        return m


def _fit(value, width):
    value = value.as_value() if hasattr(value, "as_value") else value
    if len(value) >= width:
        return value[:width]
    return Cat(value, Const(0, width - len(value)))


class NpuCore(wiring.Component):
    """The NPU core: runs its own programs (``rtl.isa.npu``) over one scratchpad.

    Blocks: ``Sequencer`` (instruction memory, checks, in-order dispatch, WAIT/HALT),
    ``DmaEngine`` (HBM <-> scratchpad over every channel's controller), ``GemmEngine``
    (the systolic array with its accumulator), ``PimPort`` (PIM transactions, GEMV
    results into the scratchpad), the vector port, ``Scratchpad``:
    read ports: GEMM A, GEMM B, GEMM C (one client each), DMA then ``ext_read``
    (priority in that order); write ports: GEMM, DMA, PIM then ``ext_write``.

    Ports:
      ``program_en``/``program_addr``/``program_data`` (In): write one instruction
        (``rtl.isa.npu.encode``) into the instruction memory per clock, while not running.
      ``start`` (In, strobe), ``running``, ``done`` (Out, high from the end of a run to the
        next ``start``), ``error`` (sticky), ``error_code`` (``NpuError``), ``error_pc``.
      ``pc`` (Out): the sequencer's program counter, for observing progress: 0 from
        ``start``; it becomes i + 1 on the clock instruction i completes its dispatch (a
        unit took it; a NOP; a WAIT: released because its units are idle), the same
        clock ``counters.instructions`` counts it. A HALT does not advance it: the HALT
        completes when ``done`` rises (every unit idle).
      ``requests``, ``read_responses``, ``write_responses``, ``pim_requests``,
        ``pim_responses``: one stream each per channel, to the controllers
        (``rtl.controller``'s layouts).
      ``vector_ops`` (Out stream, ``vector_op_layout``: the VECTOR instruction's fields);
        ``vector_done`` (In): a strobe per finished vector operation; the vector unit is
        busy while dispatched operations are not done (WAIT VECTOR, HALT).
      ``ext_read`` / ``ext_write``: a scratchpad read and write port for the testbench or
        a vector unit (lowest priority: check ``grant``).
      ``sync_ready`` (Out): at a SYNC with its units idle; ``sync_go`` (In): the barrier
        is met (``NpuTop``: every core ready or stopped; tie high for a lone core).
      ``counters`` (Out, ``counters_layout``): ``cycles`` (clocks while running),
        ``instructions`` (dispatched), ``array_busy`` and ``macs`` (the systolic array's),
        ``gemm_busy``, ``dma_busy``, ``vector_busy``, ``pim_busy`` (clocks the unit was
        busy), ``dma_bytes_read`` (HBM -> scratchpad), ``dma_bytes_written``,
        ``vector_ops``, ``pim_transactions``, ``sync_wait`` (clocks at a SYNC, ready,
        waiting for the other cores).

    ``shared_modules``: the systolic array's PEs and the vector lanes' arithmetic units as instances of one Verilog module each
    (Verilator builds; Amaranth's simulator needs False).

    ``vector_engine``: True: VECTOR instructions run inside the core on a ``VectorEngine``
    (``rtl.npu.vector_engine``: semantics and data format) + ``VectorUnit``, reading and
    writing the scratchpad through the clients ``vector`` (read: after DMA, before
    ``ext``; write: after PIM, before ``ext``); the ``vector_ops`` port then stays idle
    (never valid) and ``vector_done`` is ignored. False: VECTOR instructions leave on
    ``vector_ops`` (an external vector unit answers with ``vector_done``). None (default):
    True when the engine supports the configuration (``vector_lanes`` divides the FP32
    values of a scratchpad word: 16 for 64-byte words, 128 for the ``neupims`` preset's
    512-byte words), False otherwise.

    Scratchpad words of ``NpuConfig.word_bytes`` (k bursts): DMA bursts go to burst slices
    of words (``DmaEngine``), a PIM GEMV result to slice 0 of its word (``PimPort``); the
    GEMM engine and the vector engine use the whole word (``word_bytes / 2`` FP16,
    ``word_bytes / 4`` FP32)."""

    def __init__(self, config, shared_modules: bool = False, vector_engine=None):
        check_array_shape(config)
        check_dma_config(config)
        self.config = config
        C = config.geometry.channels
        npu = config.npu
        self.sequencer = Sequencer(config)
        self.dma = DmaEngine(config)
        self.gemm = GemmEngine(config, shared_modules=shared_modules)
        self.pim = PimPort(config)
        if vector_engine is None:
            vector_engine = engine_supported(config)
        self.has_vector_engine = bool(vector_engine)
        vec = ["vector"] if vector_engine else []
        if vector_engine:
            self.vector_engine = VectorEngine(config)
            self.vector_unit = VectorUnit(config, shared_modules=shared_modules)
        dma_lanes = range(1, npu.dma_responses)     # the DMA's further write ports
        self.scratchpad = Scratchpad(config, read_groups=[["gemm_a"], ["gemm_b"], ["gemm_c"],
                                                          ["dma", *vec, "ext"]],
                                     write_groups=[["gemm"], ["dma"], ["pim", *vec, "ext"],
                                                   *([f"dma{i}"] for i in dma_lanes)])
        super().__init__({
            "program_en": In(1), "program_addr": In(range(npu.instruction_words)),
            "program_data": In(INSTRUCTION_BITS),
            "start": In(1), "running": Out(1), "done": Out(1), "error": Out(1),
            "error_code": Out(NpuError), "error_pc": Out(range(npu.instruction_words + 1)),
            "pc": Out(range(npu.instruction_words + 1)),
            "requests": Out(stream.Signature(request_layout(config))).array(C),
            "read_responses": In(stream.Signature(read_response_layout(config))).array(C),
            "write_responses": In(stream.Signature(write_response_layout(config))).array(C),
            "pim_requests": Out(stream.Signature(pim_request_layout(config))).array(C),
            "pim_responses": In(stream.Signature(pim_response_layout(config))).array(C),
            "vector_ops": Out(stream.Signature(vector_op_layout())),
            "vector_done": In(1),
            "ext_read": In(read_port_signature(config)),
            "ext_write": In(write_port_signature(config)),
            "sync_ready": Out(1), "sync_go": In(1),
            "counters": Out(counters_layout()),
        })

    def verilog_modules(self):
        """The shared Verilog modules of the array's PEs and the vector lanes' units."""
        vector = self.vector_unit.verilog_modules() if self.has_vector_engine else []
        return self.gemm.verilog_modules() + vector

    def elaborate(self, platform):
        m = Module()
        C = self.config.geometry.channels
        seq = m.submodules.sequencer = self.sequencer
        dma = m.submodules.dma = self.dma
        gemm = m.submodules.gemm = self.gemm
        pim = m.submodules.pim = self.pim
        sp = m.submodules.scratchpad = self.scratchpad

        m.d.comb += [seq.program_en.eq(self.program_en), seq.program_addr.eq(self.program_addr),
                     seq.program_data.eq(self.program_data), seq.start.eq(self.start),
                     self.running.eq(seq.running), self.done.eq(seq.done),
                     self.error.eq(seq.error), self.error_code.eq(seq.error_code),
                     self.error_pc.eq(seq.error_pc), self.pc.eq(seq.pc),
                     self.sync_ready.eq(seq.sync_ready), seq.sync_go.eq(self.sync_go)]
        wiring.connect(m, seq.dma_cmd, dma.cmd)
        wiring.connect(m, seq.gemm_cmd, gemm.start)
        wiring.connect(m, seq.pim_cmd, pim.cmd)
        if self.has_vector_engine:
            engine = m.submodules.vector_engine = self.vector_engine
            unit = m.submodules.vector_unit = self.vector_unit
            wiring.connect(m, seq.vector_ops, engine.ops)
            wiring.connect(m, engine.vu_i, unit.i)
            wiring.connect(m, unit.o, engine.vu_o)
            wiring.connect(m, engine.sp_read, sp.read_vector)
            wiring.connect(m, engine.sp_write, sp.write_vector)
            issued = seq.vector_ops.valid & seq.vector_ops.ready
            finished = engine.done
        else:
            wiring.connect(m, seq.vector_ops, wiring.flipped(self.vector_ops))
            issued = self.vector_ops.valid & self.vector_ops.ready
            finished = self.vector_done
        for c in range(C):
            wiring.connect(m, dma.requests[c], wiring.flipped(self.requests[c]))
            wiring.connect(m, wiring.flipped(self.read_responses[c]), dma.read_responses[c])
            wiring.connect(m, wiring.flipped(self.write_responses[c]), dma.write_responses[c])
            wiring.connect(m, pim.pim_requests[c], wiring.flipped(self.pim_requests[c]))
            wiring.connect(m, wiring.flipped(self.pim_responses[c]), pim.pim_responses[c])
        wiring.connect(m, gemm.read_a, sp.read_gemm_a)
        wiring.connect(m, gemm.read_b, sp.read_gemm_b)
        wiring.connect(m, gemm.read_c, sp.read_gemm_c)
        wiring.connect(m, gemm.write_c, sp.write_gemm)
        wiring.connect(m, dma.sp_read, sp.read_dma)
        wiring.connect(m, dma.sp_write, sp.write_dma)
        for i in range(1, self.config.npu.dma_responses):
            wiring.connect(m, getattr(dma, f"sp_write{i}"), getattr(sp, f"write_dma{i}"))
        wiring.connect(m, pim.sp_write, sp.write_pim)
        wiring.connect(m, wiring.flipped(self.ext_read), sp.read_ext)
        wiring.connect(m, wiring.flipped(self.ext_write), sp.write_ext)

        # the vector port: operations dispatched and not yet done
        outstanding = Signal(16)
        m.d.sync += outstanding.eq(outstanding + issued - finished)
        m.d.comb += [seq.dma_busy.eq(dma.busy), seq.gemm_busy.eq(gemm.busy),
                     seq.vector_busy.eq(outstanding != 0), seq.pim_busy.eq(pim.busy)]

        c = self.counters
        m.d.sync += [c.cycles.eq(c.cycles + seq.running),
                     c.gemm_busy.eq(c.gemm_busy + gemm.busy),
                     c.dma_busy.eq(c.dma_busy + dma.busy),
                     c.vector_busy.eq(c.vector_busy + (outstanding != 0)),
                     c.vector_ops.eq(c.vector_ops + issued),
                     c.pim_busy.eq(c.pim_busy + pim.busy)]
        m.d.comb += [c.instructions.eq(seq.instructions), c.sync_wait.eq(seq.sync_wait),
                     c.array_busy.eq(gemm.array_busy),
                     c.macs.eq(gemm.macs), c.dma_bytes_read.eq(dma.bytes_read),
                     c.dma_bytes_written.eq(dma.bytes_written),
                     c.pim_transactions.eq(pim.transactions)]
        return m
