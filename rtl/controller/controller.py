"""The per-channel memory controller: request queues, a machine per bank, a refresher, the
PIM sequencer and one command arbiter (NEUPIMS.md 2.4)."""
from amaranth.hdl import Array, Cat, Const, Module, Mux, Shape, Signal
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ..common import DelayLine
from ..common.row_buffers import blocked_input
from ..dram.bank import bank_status_layout
from ..isa import Opcode, command_layout, command_value
from .bank_queue import BankQueue
from .interface import (COUNTERS, counters_layout, pim_request_layout, pim_response_layout,
                        read_response_layout, request_layout, write_response_layout)
from .pim_sequencer import PimSequencer
from .rank_timers import RankTimers
from .refresher import Refresher, RefreshRate


class ControllerError(enum.Enum, shape=2):
    NONE = 0
    BAD_PIM_REQUEST = 1   # GEMV without a header, impossible GEMV size, PIM in DRAM mode


class CommandSource(enum.Enum, shape=2):
    REFRESH = 0   # closing buffers for a refresh, and REF
    PIM = 1       # the PIM sequencer (including the ACT/PRE a GWRITE needs)
    NORMAL = 2    # a bank queue


class ChannelController(wiring.Component):
    """Drives one channel's command bus from request streams.

    Each cycle at most one command goes out, by priority: (1) refresh: once due, close
    every open buffer (PRE, PIM_PRECHARGE) and issue REF; (2) the PIM sequencer's command
    when its timing is met; (3) normal commands: each bank's queue offers its next command
    (``BankQueue``); among those whose rank timing allows them now, column commands of the
    preferred direction first, then the other direction, then PRE/ACT/PIM_PRECHARGE,
    round-robin over banks. Reads are preferred; writes are drained first once the write
    queue is full, or holds more than ``write_drain_threshold`` while no read waits, until
    it is empty.

    Ports:
      ``requests`` (In stream, ``request_layout``): 64-byte reads and writes. Accepted when
      the tag is not outstanding, the bank's queue and the read/write queue have room.
      ``read_responses`` / ``write_responses`` (Out streams): data of each read, in tag
      order; an acknowledgement for each write once its WR is issued (later reads see it).
      ``pim_requests`` (In stream) / ``pim_responses`` (Out stream): PIM transactions, in
      order; one response (32 FP16 results, bank b in bits [16 b, 16 b + 16)) per GEMV.
      ``cmd``/``cmd_valid``/``wdata`` (Out): the command bus. ``banks``, ``rdata``,
      ``rdata_valid``, ``rdata_pim`` (In): from the channel datapath.
      ``cmd_source`` (Out): which part issued the command.
      ``counters`` (Out): see ``interface.COUNTERS``; ``pim_active`` (Out): a PIM_GEMV is
      running; ``refresh_due`` (Out); ``error``/``error_code`` (Out, sticky).
      ``refresh_rate`` (In, :class:`RefreshRate`): the refresh interval, ``tREFI`` divided
      by 1, 2 or 4 (HBM's temperature-compensated refresh), taken at reset and at each REF.
      ``blocked`` (In): the banks have one row buffer (the Newton-like baseline: PIM locks
      the bank) instead of two; a run-time input, so both modes are one design.
    """

    def __init__(self, config):
        self.config = config
        g = config.geometry
        super().__init__({
            "requests": In(stream.Signature(request_layout(config))),
            "read_responses": Out(stream.Signature(read_response_layout(config))),
            "write_responses": Out(stream.Signature(write_response_layout(config))),
            "pim_requests": In(stream.Signature(pim_request_layout(config))),
            "pim_responses": Out(stream.Signature(pim_response_layout(config))),
            "cmd": Out(command_layout(config)), "cmd_valid": Out(1),
            "wdata": Out(g.burst_bytes * 8),
            "banks": In(data.ArrayLayout(bank_status_layout(config), g.banks)),
            "rdata": In(g.burst_bytes * 8), "rdata_valid": In(1), "rdata_pim": In(1),
            "counters": Out(counters_layout()), "pim_active": Out(1), "refresh_due": Out(1),
            "cmd_source": Out(CommandSource), "refresh_rate": In(RefreshRate),
            "blocked": blocked_input(config),
            "error": Out(1), "error_code": Out(ControllerError),
        })

    def elaborate(self, platform):
        m = Module()
        cfg, g, bus, cc = self.config, self.config.geometry, self.config.bus, self.config.controller
        nb, bpg = g.banks, g.banks_per_group
        banks = self.banks

        m.submodules.timers = timers = RankTimers(cfg)
        m.submodules.refresher = refresher = Refresher(cfg)
        m.d.comb += [refresher.rate.eq(self.refresh_rate), timers.blocked.eq(self.blocked)]
        m.submodules.pim = seq = PimSequencer(cfg)
        m.d.comb += seq.blocked.eq(self.blocked)
        m.submodules.pim_queue = pim_queue = SyncFIFOBuffered(
            width=Shape.cast(pim_request_layout(cfg)).width, depth=cc.pim_queue)
        queues = [BankQueue(cfg) for _ in range(nb)]
        for b, q in enumerate(queues):
            m.submodules[f"queue{b}"] = q
            m.d.comb += q.blocked.eq(self.blocked)

        # -- responses --
        read_fifo = m.submodules.read_fifo = SyncFIFOBuffered(
            width=Shape.cast(read_response_layout(cfg)).width, depth=cc.response_depth)
        write_fifo = m.submodules.write_fifo = SyncFIFOBuffered(
            width=cc.tag_bits, depth=cc.response_depth)
        pim_fifo = m.submodules.pim_fifo = SyncFIFOBuffered(
            width=Shape.cast(pim_response_layout(cfg)).width, depth=4)
        pim_tags = m.submodules.pim_tags = SyncFIFOBuffered(width=cc.tag_bits, depth=4)
        read_tags = m.submodules.read_tags = DelayLine(cc.tag_bits, bus.read_data)
        for fifo, port in ((read_fifo, self.read_responses), (write_fifo, self.write_responses),
                           (pim_fifo, self.pim_responses)):
            m.d.comb += [port.valid.eq(fifo.r_stream.valid), port.payload.eq(fifo.r_stream.payload),
                         fifo.r_stream.ready.eq(port.ready)]
        m.d.comb += [
            read_fifo.w_stream.valid.eq(read_tags.o_valid),
            read_fifo.w_stream.payload.eq(Cat(read_tags.o_data, self.rdata)),
            pim_fifo.w_stream.valid.eq(self.rdata_valid & self.rdata_pim),
            pim_fifo.w_stream.payload.eq(Cat(pim_tags.r_stream.payload, self.rdata)),
            pim_tags.r_stream.ready.eq(self.rdata_valid & self.rdata_pim),
        ]
        reads_in_flight = Signal(range(cc.response_depth + 1))
        gemvs_in_flight = Signal(range(5))
        read_credit = reads_in_flight + read_fifo.level < cc.response_depth
        write_credit = write_fifo.w_stream.ready

        # -- PIM queue and sequencer --
        m.d.comb += [pim_queue.w_stream.valid.eq(self.pim_requests.valid),
                     pim_queue.w_stream.payload.eq(self.pim_requests.payload),
                     self.pim_requests.ready.eq(pim_queue.w_stream.ready),
                     seq.requests.valid.eq(pim_queue.r_stream.valid),
                     seq.requests.payload.eq(pim_queue.r_stream.payload),
                     pim_queue.r_stream.ready.eq(seq.requests.ready),
                     seq.banks.eq(banks), seq.act_ok.eq(timers.act_ok),
                     seq.gact_ok.eq(timers.gact_ok), seq.refresh_due.eq(refresher.due),
                     seq.until_due.eq(refresher.until_due),
                     seq.result_space.eq(gemvs_in_flight + pim_fifo.level < 4)]

        # -- request admission --
        req = self.requests.payload
        tag_mask = Const(1, cc.tags)
        outstanding = Signal(cc.tags)
        reads_waiting = Signal(range(cc.read_queue + 1))
        writes_waiting = Signal(range(cc.write_queue + 1))
        flat = Signal(range(nb))
        m.d.comb += flat.eq((req.rank * g.bankgroups + req.bankgroup) * bpg + req.bank)
        bank_full = Array(q.full for q in queues)[flat]
        class_full = Mux(req.write, writes_waiting == cc.write_queue,
                         reads_waiting == cc.read_queue)
        tag_busy = (outstanding >> req.tag)[0]
        m.d.comb += self.requests.ready.eq(~tag_busy & ~bank_full & ~class_full)
        accept = self.requests.valid & self.requests.ready
        wmem = m.submodules.write_data = Memory(shape=g.burst_bytes * 8, depth=cc.tags, init=[])
        wmem_w = wmem.write_port()
        wmem_r = wmem.read_port(domain="comb")
        m.d.comb += [wmem_w.en.eq(accept & req.write), wmem_w.addr.eq(req.tag),
                     wmem_w.data.eq(req.data)]
        for b, q in enumerate(queues):
            m.d.comb += [q.push.eq(accept & (flat == b)), q.entry.write.eq(req.write),
                         q.entry.row.eq(req.row), q.entry.column.eq(req.column),
                         q.entry.tag.eq(req.tag), q.status.eq(banks[b])]

        # -- refresh: close everything, then REF --
        m.d.comb += self.refresh_due.eq(refresher.due)
        ref_valid, ref_cmd = Signal(), Signal(command_layout(cfg))
        gwrite_rank_busy = [seq.gwrite_busy & (seq.gwrite_rank == r) for r in range(g.ranks)]
        all_closed = ~Cat(*(banks[b].mem_open | banks[b].pim_open for b in range(nb))).any()
        all_ready = Cat(*(banks[b].ready.ref for b in range(nb))).all()
        for b in reversed(range(nb)):
            rank, bg, bank = g.bank_coords(b)
            where = dict(rank=rank, bankgroup=bg, bank=bank)
            with m.If(banks[b].pim_open & banks[b].ready.pim_pre & ~seq.gemv_busy
                      & ~gwrite_rank_busy[rank]):
                m.d.comb += [ref_valid.eq(1),
                             ref_cmd.eq(command_value(cfg, op=Opcode.PIM_PRECHARGE, **where))]
            with m.If(banks[b].mem_open & banks[b].ready.pre):
                m.d.comb += [ref_valid.eq(1), ref_cmd.eq(command_value(cfg, op=Opcode.PRE, **where))]
        with m.If(all_closed):
            m.d.comb += [ref_valid.eq(all_ready & ~seq.gemv_busy & ~seq.gwrite_busy),
                         ref_cmd.eq(command_value(cfg, op=Opcode.REF))]

        # -- normal commands --
        draining = Signal()
        prefer_write = draining
        eligible = Signal(nb)
        column_cmd = Signal(nb)
        preferred = Signal(nb)
        for b, q in enumerate(queues):
            rank, bg, bank = g.bank_coords(b)
            grp = rank * g.bankgroups + bg
            cand = q.candidate
            m.d.comb += [
                q.block.eq(refresher.due | (seq.gwrite_reserved & (seq.gwrite_bank == b))),
                q.hold_act.eq(seq.hold_act), q.reserved.eq(seq.reserved),
                q.reserved_row.eq(seq.reserved_row),
                q.allow_pim_pre.eq(~seq.reserved & ~seq.gemv_busy & ~gwrite_rank_busy[rank]),
            ]
            ok = Signal(name=f"rank_ok{b}")
            with m.Switch(cand.op):
                with m.Case(Opcode.RD):
                    m.d.comb += ok.eq(timers.rd_ok[grp] & read_credit)
                with m.Case(Opcode.WR):
                    m.d.comb += ok.eq(timers.wr_ok[grp] & write_credit)
                with m.Case(Opcode.ACT):
                    m.d.comb += ok.eq(timers.act_ok[grp])
                with m.Default():
                    m.d.comb += ok.eq(1)
            is_column = (cand.op == Opcode.RD) | (cand.op == Opcode.WR)
            m.d.comb += [eligible[b].eq(cand.valid & ok), column_cmd[b].eq(is_column),
                         preferred[b].eq(is_column & ((cand.op == Opcode.WR) == prefer_write))]
        first_class = eligible & preferred
        second_class = eligible & column_cmd & ~preferred
        mask = Signal(nb)
        with m.If(first_class.any()):
            m.d.comb += mask.eq(first_class)
        with m.Elif(second_class.any()):
            m.d.comb += mask.eq(second_class)
        with m.Else():
            m.d.comb += mask.eq(eligible)
        pointer = Signal(range(nb))
        winner = Signal(range(nb))
        for b in reversed(range(nb)):
            with m.If(mask[b]):
                m.d.comb += winner.eq(b)
        for b in reversed(range(nb)):
            from_pointer = (pointer <= b) if b < nb - 1 else 1
            with m.If(mask[b] & from_pointer):
                m.d.comb += winner.eq(b)
        normal_valid = mask.any()
        chosen = Signal.like(queues[0].candidate)
        with m.Switch(winner):
            for b, q in enumerate(queues):
                with m.Case(b):
                    m.d.comb += chosen.eq(q.candidate)
        normal_cmd = Signal(command_layout(cfg))
        bank_bits, bg_bits = (bpg - 1).bit_length(), (g.bankgroups - 1).bit_length()
        m.d.comb += [normal_cmd.op.eq(chosen.op), normal_cmd.row.eq(chosen.row),
                     normal_cmd.column.eq(chosen.column),
                     normal_cmd.bank.eq(winner[:bank_bits] if bank_bits else 0),
                     normal_cmd.bankgroup.eq(winner[bank_bits:bank_bits + bg_bits] if bg_bits else 0),
                     normal_cmd.rank.eq(winner[bank_bits + bg_bits:]
                                        if g.ranks > 1 else 0),
                     wmem_r.addr.eq(chosen.tag)]

        # -- the arbiter: one command per cycle --
        source = self.cmd_source
        with m.If(refresher.due):
            m.d.comb += [self.cmd_valid.eq(ref_valid), self.cmd.eq(ref_cmd), source.eq(CommandSource.REFRESH)]
        with m.Elif(seq.candidate):
            m.d.comb += [self.cmd_valid.eq(1), self.cmd.eq(seq.command), seq.grant.eq(1),
                         source.eq(CommandSource.PIM)]
        with m.Elif(normal_valid):
            m.d.comb += [self.cmd_valid.eq(1), self.cmd.eq(normal_cmd), source.eq(CommandSource.NORMAL)]
            m.d.sync += pointer.eq(Mux(winner == nb - 1, 0, winner + 1))
            for b, q in enumerate(queues):
                m.d.comb += q.grant.eq(winner == b)
        m.d.comb += [self.wdata.eq(wmem_r.data), timers.issue.eq(self.cmd_valid),
                     timers.cmd.eq(self.cmd), refresher.issued.eq(
                         self.cmd_valid & (self.cmd.op == Opcode.REF)),
                     seq.refresh_issued.eq(self.cmd_valid & (self.cmd.op == Opcode.REF))]

        issued = {o: self.cmd_valid & (self.cmd.op == o) for o in Opcode}
        normal = self.cmd_valid & (source == CommandSource.NORMAL)
        read_issue = normal & (self.cmd.op == Opcode.RD)
        write_issue = normal & (self.cmd.op == Opcode.WR)
        m.d.comb += [read_tags.i_valid.eq(read_issue), read_tags.i_data.eq(chosen.tag),
                     write_fifo.w_stream.valid.eq(write_issue),
                     write_fifo.w_stream.payload.eq(chosen.tag),
                     pim_tags.w_stream.valid.eq(issued[Opcode.PIM_GEMV]),
                     pim_tags.w_stream.payload.eq(seq.gemv_tag)]
        m.d.sync += [
            reads_in_flight.eq(reads_in_flight + read_issue - read_tags.o_valid),
            gemvs_in_flight.eq(gemvs_in_flight + issued[Opcode.PIM_GEMV]
                               - (self.rdata_valid & self.rdata_pim)),
            reads_waiting.eq(reads_waiting + (accept & ~req.write) - read_issue),
            writes_waiting.eq(writes_waiting + (accept & req.write) - write_issue),
        ]
        with m.If(writes_waiting == 0):
            m.d.sync += draining.eq(0)
        with m.Elif((writes_waiting == cc.write_queue)
                    | ((writes_waiting > cc.write_drain_threshold) & (reads_waiting == 0))):
            m.d.sync += draining.eq(1)

        # tags: outstanding from request to response handshake
        done_read = self.read_responses.valid & self.read_responses.ready
        done_write = self.write_responses.valid & self.write_responses.ready
        read_tag = self.read_responses.payload.tag
        write_tag = self.write_responses.payload.tag
        m.d.sync += outstanding.eq(
            (outstanding | Mux(accept, tag_mask << req.tag, 0))
            & ~Mux(done_read, tag_mask << read_tag, 0) & ~Mux(done_write, tag_mask << write_tag, 0))

        self._counters(m, issued, normal, refresher, seq, queues, draining, accept, req,
                       class_full, bank_full, tag_busy, chosen)
        m.d.comb += self.pim_active.eq(seq.gemv_busy)
        with m.If(seq.bad_request & ~self.error):
            m.d.sync += [self.error.eq(1), self.error_code.eq(ControllerError.BAD_PIM_REQUEST)]
        return m

    def _counters(self, m, issued, normal, refresher, seq, queues, draining, accept, req,
                  class_full, bank_full, tag_busy, chosen):
        c = self.counters
        column = normal & ((self.cmd.op == Opcode.RD) | (self.cmd.op == Opcode.WR))
        waiting = self.requests.valid & ~self.requests.ready
        was_draining, was_held = Signal(), Signal()
        m.d.sync += [was_draining.eq(draining), was_held.eq(seq.held)]
        bumps = {
            "cycles": 1,
            "row_hits": column & chosen.hit,
            "row_misses": column & ~chosen.hit,
            "pim_busy_cycles": seq.gemv_busy,
            "pim_occupied_cycles": seq.occupied,
            "normal_during_pim": normal & seq.gemv_busy,
            "pim_refresh_holds": seq.held & ~was_held,
            "read_queue_full": waiting & ~req.write & class_full,
            "write_queue_full": waiting & req.write & class_full,
            "bank_queue_full": waiting & bank_full,
            "write_drains": draining & ~was_draining,
        }
        for name in COUNTERS:
            if name in Opcode.__members__:
                bumps[name] = issued[Opcode[name]]
        for name, bump in bumps.items():
            m.d.sync += c[name].eq(c[name] + bump)
        m.d.sync += c.comps.eq(c.comps + Mux(issued[Opcode.PIM_GEMV], self.cmd.comps, 0))
        with m.If(refresher.issued & (refresher.late > c.refresh_late_max)):
            m.d.sync += c.refresh_late_max.eq(refresher.late)
