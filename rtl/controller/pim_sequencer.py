"""PIM transactions in order: GWRITE, PIM_HEADER (row-set admission against the refresh
deadline), PIM_GEMV; the G_ACTs and PIM_PRECHARGEs a row set needs (NEUPIMS.md 2.4)."""
from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ..common import TimingCounter
from ..common.row_buffers import blocked_input
from ..config import RowBufferMode
from ..dram.bank import bank_status_layout
from ..isa import Opcode, command_layout, command_value
from .interface import PimOp, field_bits, pim_request_layout


class PimSequencer(wiring.Component):
    """Serves the head of the PIM queue; offers at most one command a cycle.

    * GWRITE(bank, row): precharges the bank's MEM buffer if another row is open (and its
      PIM buffer if that holds the row), activates the row, then GWRITE. While a GWRITE is
      at the head, normal commands skip its bank (``gwrite_reserved``).
    * HEADER(row, gemvs, comps): admitted when the controller's latency estimate
      (``BusTiming.gemv_latency_estimate``) ends before the refresh falls due; otherwise
      held until a refresh has been done, then admitted. The row is then reserved for the
      header's ``gemvs`` GEMVs (normal ACTs skip it).
    * GEMV(column, comps): when the row set is open in every bank, PIM_GEMV. A row set not
      (or no longer) open is opened first, bank group by bank group: PIM_PRECHARGE of
      banks holding another row (open page: only when another row is needed), PRE of MEM
      buffers in the way, then G_ACT; normal ACTs are held meanwhile (``hold_act``).
      BLOCKED mode closes the row set after the header's last GEMV (the buffer is the
      bank's only one).
    Nothing is offered while a refresh is due.

    Ports: ``requests`` (In stream): the PIM queue's head. ``candidate``/``command`` (Out)
    and ``grant`` (In). ``banks`` (In): bank status; ``gact_ok``/``act_ok`` (In, per bank
    group): rank timing. ``refresh_due``, ``until_due``, ``refresh_issued`` (In).
    ``result_space`` (In): the GEMV result buffer has room. ``gemv_tag`` (Out): tag of the
    GEMV being issued. ``gemv_busy``, ``gwrite_busy``, ``gwrite_rank`` (Out).
    ``occupied`` (Out): the PIM has work: a transaction at the queue's head (waiting for
    its row set, a bank, a refresh or the bus), a GEMV or GWRITE in progress, or a
    BLOCKED row set being closed.
    ``bad_request`` (Out): a GEMV with no admitted header or an impossible size (consumed,
    flagged). ``held`` (Out): a header waits for a refresh.
    """

    def __init__(self, config):
        self.config = config
        g = config.geometry
        self.groups = g.ranks * g.bankgroups
        super().__init__({
            "requests": In(stream.Signature(pim_request_layout(config))),
            "candidate": Out(1), "command": Out(command_layout(config)), "grant": In(1),
            "banks": In(data.ArrayLayout(bank_status_layout(config), g.banks)),
            "act_ok": In(self.groups), "gact_ok": In(self.groups),
            "refresh_due": In(1), "until_due": In(range(config.timing.tREFI + 1)),
            "refresh_issued": In(1), "result_space": In(1), "blocked": blocked_input(config),
            "gemv_tag": Out(config.controller.tag_bits),
            "gemv_busy": Out(1), "gwrite_busy": Out(1), "gwrite_rank": Out(field_bits(g.ranks)),
            "gwrite_reserved": Out(1), "gwrite_bank": Out(range(g.banks)),
            "reserved": Out(1), "reserved_row": Out(range(g.rows)), "hold_act": Out(1),
            "bad_request": Out(1), "held": Out(1), "occupied": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        cfg, g, t, bus = self.config, self.config.geometry, self.config.timing, self.config.bus
        blocked = self.blocked
        banks, bpg = self.banks, g.banks_per_group
        head, req = self.requests.payload, self.requests
        cmd = self.command

        gemv_timer = m.submodules.gemv_timer = TimingCounter(bus.gemv_busy(bus.comps_per_row))
        gwrite_timer = m.submodules.gwrite_timer = TimingCounter(bus.gwrite_busy)
        m.d.comb += [self.gemv_busy.eq(~gemv_timer.ready), self.gwrite_busy.eq(~gwrite_timer.ready)]
        gwrite_rank_busy = [~gwrite_timer.ready & (self.gwrite_rank == r) for r in range(g.ranks)]

        cur_row = Signal(range(g.rows))
        active = Signal()              # an admitted header still has GEMVs to come
        gemvs_left = Signal.like(head.gemvs)
        closing = Signal()             # BLOCKED: close the row set after its last GEMV
        held, refreshed = Signal(), Signal()
        m.d.comb += [self.reserved.eq(active), self.reserved_row.eq(cur_row), self.held.eq(held)]

        # -- the row set, bank group by bank group (ranks interleaved so both open at once) --
        order = [r * g.bankgroups + bg for bg in range(g.bankgroups) for r in range(g.ranks)]
        complete = Signal(self.groups)
        for grp in range(self.groups):
            members = [banks[grp * bpg + i] for i in range(bpg)]
            m.d.comb += complete[grp].eq(Cat(*(b.pim_open & (b.pim_row == cur_row)
                                                for b in members)).all())
        all_open = Signal()
        m.d.comb += all_open.eq(complete.all()
                                & Cat(*(banks[b].ready.comp for b in range(g.banks))).all())

        open_valid = Signal()
        open_cmd = Signal(command_layout(cfg))
        choices = []
        for grp in order:
            rank, bg = divmod(grp, g.bankgroups)
            members = list(range(grp * bpg, grp * bpg + bpg))
            valid = Signal(name=f"open_valid_g{grp}")
            choice = Signal(command_layout(cfg), name=f"open_cmd_g{grp}")
            pim_pre_need = [banks[b].pim_open for b in members]
            mem_need = [banks[b].mem_open & (blocked | (banks[b].mem_row == cur_row))
                        for b in members]
            with m.If(Cat(*pim_pre_need).any()):
                for i in reversed(range(bpg)):
                    b = members[i]
                    with m.If(pim_pre_need[i]):
                        m.d.comb += [valid.eq(banks[b].ready.pim_pre & ~self.gemv_busy
                                              & ~gwrite_rank_busy[rank]),
                                     choice.eq(command_value(cfg, op=Opcode.PIM_PRECHARGE,
                                                             rank=rank, bankgroup=bg, bank=i))]
            with m.Elif(Cat(*mem_need).any()):
                for i in reversed(range(bpg)):
                    b = members[i]
                    with m.If(mem_need[i]):
                        m.d.comb += [valid.eq(banks[b].ready.pre),
                                     choice.eq(command_value(cfg, op=Opcode.PRE, rank=rank,
                                                             bankgroup=bg, bank=i))]
            with m.Else():
                m.d.comb += [valid.eq(Cat(*(banks[b].ready.gact for b in members)).all()
                                      & self.gact_ok[grp] & ~gwrite_rank_busy[rank]),
                             choice.eq(command_value(cfg, op=Opcode.G_ACT, rank=rank,
                                                     bankgroup=bg, row=cur_row))]
            choices.append((valid & ~complete[grp], choice))
        # the first group (ranks interleaved) that needs work and can act now: a group
        # waiting on tFAW does not stall the other rank
        for valid, choice in reversed(choices):
            with m.If(valid):
                m.d.comb += [open_valid.eq(1), open_cmd.eq(choice)]

        # -- closing (BLOCKED) and GWRITE helpers --
        close_valid, close_cmd = Signal(), Signal(command_layout(cfg))
        for b in reversed(range(g.banks)):
            rank, bg, bank = g.bank_coords(b)
            with m.If(banks[b].pim_open):
                m.d.comb += [close_valid.eq(banks[b].ready.pim_pre & ~self.gemv_busy
                                            & ~gwrite_rank_busy[rank]),
                             close_cmd.eq(command_value(cfg, op=Opcode.PIM_PRECHARGE, rank=rank,
                                                        bankgroup=bg, bank=bank))]
        any_pim_open = Cat(*(banks[b].pim_open for b in range(g.banks))).any()

        flat = Signal(range(g.banks))
        m.d.comb += flat.eq((head.rank * g.bankgroups + head.bankgroup) * bpg + head.bank)
        target = banks[flat]
        grp_of_head = Signal(range(self.groups))
        m.d.comb += grp_of_head.eq(head.rank * g.bankgroups + head.bankgroup)
        rank_busy = ~gwrite_timer.ready & (self.gwrite_rank == head.rank)

        # -- header admission --
        estimate = Signal(32)
        reuse = complete.all()
        open_cost = (g.banks * t.tRTP + t.tFAW * max(self.groups // 2 - 1, 0) + t.tRCDRD)
        comps_term = Mux(head.comps > t.comp_min_slots, head.comps, t.comp_min_slots)
        m.d.comb += estimate.eq(Mux(reuse, t.tRCDRD, open_cost) + bus.comp_interval * comps_term
                                + bus.burst * Mux(head.gemvs > 0, head.gemvs - 1, 0))
        fits = ~self.refresh_due & (estimate <= self.until_due)
        with m.If(self.refresh_issued & held):
            m.d.sync += refreshed.eq(1)

        is_gwrite = req.valid & (head.op == PimOp.GWRITE)
        is_header = req.valid & (head.op == PimOp.HEADER)
        is_gemv = req.valid & (head.op == PimOp.GEMV)
        bad_gemv = is_gemv & (~active | (head.comps == 0)
                              | (head.column + head.comps > bus.comps_per_row))
        bad_op = req.valid & (head.op != PimOp.GWRITE) & (head.op != PimOp.HEADER) & (
            head.op != PimOp.GEMV)
        dram = cfg.mode is RowBufferMode.DRAM
        m.d.comb += [self.gwrite_reserved.eq(is_gwrite), self.gwrite_bank.eq(flat),
                     self.gemv_tag.eq(head.tag),
                     self.hold_act.eq(active & ~complete.all() & is_gemv)]

        with m.If(dram & req.valid):
            m.d.comb += [self.bad_request.eq(1), req.ready.eq(1)]
        with m.Elif(self.refresh_due):
            m.d.comb += self.candidate.eq(0)      # a due refresh goes first
        with m.Elif(closing):
            m.d.comb += [self.candidate.eq(close_valid), cmd.eq(close_cmd)]
            with m.If(~any_pim_open):
                m.d.sync += closing.eq(0)
        with m.Elif(bad_gemv | bad_op):
            m.d.comb += [self.bad_request.eq(1), req.ready.eq(1)]
        with m.Elif(is_header):
            with m.If(~active & (fits | (held & refreshed))):
                m.d.comb += req.ready.eq(1)
                m.d.sync += [cur_row.eq(head.row), gemvs_left.eq(head.gemvs),
                             active.eq(head.gemvs != 0), held.eq(0), refreshed.eq(0)]
            with m.Elif(~active):
                m.d.sync += held.eq(1)
        with m.Elif(is_gemv):
            with m.If(all_open):
                m.d.comb += [self.candidate.eq(~self.gemv_busy & ~self.gwrite_busy
                                               & self.result_space),
                             cmd.op.eq(Opcode.PIM_GEMV), cmd.column.eq(head.column),
                             cmd.comps.eq(head.comps)]
                with m.If(self.grant):
                    m.d.comb += req.ready.eq(1)
                    m.d.sync += gemvs_left.eq(gemvs_left - 1)
                    with m.If(gemvs_left == 1):
                        m.d.sync += active.eq(0)
                        m.d.sync += closing.eq(blocked)
            with m.Else():
                m.d.comb += [self.candidate.eq(open_valid), cmd.eq(open_cmd)]
        with m.Elif(is_gwrite):
            m.d.comb += [cmd.rank.eq(head.rank), cmd.bankgroup.eq(head.bankgroup),
                         cmd.bank.eq(head.bank), cmd.row.eq(head.row)]
            row_in_pim = target.pim_open & (blocked | (target.pim_row == head.row))
            with m.If(target.mem_open & (target.mem_row != head.row)):
                m.d.comb += [self.candidate.eq(target.ready.pre), cmd.op.eq(Opcode.PRE)]
            with m.Elif(target.mem_open):
                m.d.comb += [self.candidate.eq(target.ready.gwrite & ~self.gemv_busy
                                               & ~self.gwrite_busy),
                             cmd.op.eq(Opcode.GWRITE)]
                with m.If(self.grant):
                    m.d.comb += req.ready.eq(1)
            with m.Elif(row_in_pim):
                m.d.comb += [self.candidate.eq(~active & target.ready.pim_pre & ~self.gemv_busy
                                               & ~rank_busy),
                             cmd.op.eq(Opcode.PIM_PRECHARGE)]
            with m.Else():
                m.d.comb += [self.candidate.eq(target.ready.act & self.act_ok.bit_select(grp_of_head, 1)),
                             cmd.op.eq(Opcode.ACT)]

        m.d.comb += self.occupied.eq(req.valid | self.gemv_busy | self.gwrite_busy | closing)
        granted = self.grant & self.candidate
        with m.If(granted & (cmd.op == Opcode.PIM_GEMV)):
            m.d.comb += [gemv_timer.load.eq(1),
                         gemv_timer.cycles.eq(bus.comp_interval * (comps_term + 1))]
        with m.If(granted & (cmd.op == Opcode.GWRITE)):
            m.d.comb += [gwrite_timer.load.eq(1), gwrite_timer.cycles.eq(bus.gwrite_busy)]
            m.d.sync += self.gwrite_rank.eq(head.rank)
        return m
