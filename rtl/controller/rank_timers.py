"""Rank- and channel-scope timing of one channel (the rules a single bank cannot see)."""
from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from ..common import TimingCounter
from ..common.row_buffers import blocked_input
from ..isa import Opcode, command_layout

#: Activations allowed in one tFAW window.
FAW_ACTIVATIONS = 4


class RankTimers(wiring.Component):
    """Watches the issued commands and says, per bank group, which command kinds the
    rank- and channel-scope rules allow this cycle: tRRD_S/L and ACT <-> G_ACT spacing,
    tFAW (ACT weighs 1, G_ACT min(banks per group, 4)), tCCD_S/L, RD->WR, WR->RD
    (tWTR_S/L), rank switches (tRTRS) and the data slot of a PIM_GEMV's READRES.

    Ports: ``issue``/``cmd`` (In): the command on the bus this cycle.
    ``act_ok``, ``gact_ok``, ``rd_ok``, ``wr_ok`` (Out): one bit per bank group, flat index
    ``rank * bankgroups + bankgroup``; combinational from registers (no path from ``cmd``).
    """

    def __init__(self, config):
        self.config = config
        self.groups = config.geometry.ranks * config.geometry.bankgroups
        super().__init__({"issue": In(1), "cmd": In(command_layout(config)),
                          "blocked": blocked_input(config),
                          "act_ok": Out(self.groups), "gact_ok": Out(self.groups),
                          "rd_ok": Out(self.groups), "wr_ok": Out(self.groups)})

    def elaborate(self, platform):
        m = Module()
        g, t, bus = self.config.geometry, self.config.timing, self.config.bus
        act_gact = Mux(self.blocked, t.tRC, t.tRRD_L)   # one buffer: ACT <-> G_ACT is tRC
        weight = min(g.banks_per_group, FAW_ACTIVATIONS)
        longest = max(t.tFAW, t.tRC, bus.rd_to_wr, bus.wr_to_rd(True), bus.rank_switch) + 1
        cmd, op = self.cmd, self.cmd.op

        def counter(name):
            c = TimingCounter(longest)
            m.submodules[name] = c
            return c

        def load(c, when, cycles):
            with m.If(when):
                m.d.comb += [c.load.eq(1), c.cycles.eq(cycles)]

        is_ = {o: self.issue & (op == o) for o in (Opcode.ACT, Opcode.G_ACT, Opcode.RD,
                                                     Opcode.WR, Opcode.PIM_GEMV)}
        rr_pending, rr_left = Signal(), Signal(range(bus.readres_after_first_comp(
            bus.comps_per_row) + 1))
        at_readres = rr_pending & (rr_left == 0)
        with m.If(is_[Opcode.PIM_GEMV]):
            m.d.sync += [rr_pending.eq(1),
                         rr_left.eq(bus.comp_interval * _at_least(cmd.comps, t.comp_min_slots) - 1)]
        with m.Elif(rr_pending):
            m.d.sync += rr_left.eq(rr_left - 1)
            with m.If(rr_left == 0):
                m.d.sync += rr_pending.eq(0)

        rd_chan, wr_chan = counter("rd_chan"), counter("wr_chan")
        load(rd_chan, at_readres, bus.rank_switch)
        load(wr_chan, at_readres | is_[Opcode.RD], bus.rd_to_wr)
        rd_block = rr_pending & (rr_left < bus.rank_switch)
        wr_block = at_readres

        for rank in range(g.ranks):
            in_rank = cmd.rank == rank
            any_act, rd_rank, wr_rank = (counter(f"act_r{rank}"), counter(f"rd_r{rank}"),
                                         counter(f"wr_r{rank}"))
            load(any_act, (is_[Opcode.ACT] | is_[Opcode.G_ACT]) & in_rank, t.tRRD_S)
            with m.If(in_rank):
                load(rd_rank, is_[Opcode.RD], bus.ccd(False))
                load(rd_rank, is_[Opcode.WR], bus.wr_to_rd(False))
                load(wr_rank, is_[Opcode.RD] | is_[Opcode.WR], bus.ccd(False))
            with m.Else():
                load(rd_rank, is_[Opcode.RD], bus.rank_switch)
                load(wr_rank, is_[Opcode.WR], bus.rank_switch)
            faw = [counter(f"faw_r{rank}_{i}") for i in range(FAW_ACTIVATIONS)]
            free = [c.ready for c in faw]
            free_count = Signal(range(FAW_ACTIVATIONS + 1), name=f"faw_free_r{rank}")
            m.d.comb += free_count.eq(_balanced_sum(free))
            before = 0
            for i, c in enumerate(faw):
                taken_before = Signal(range(FAW_ACTIVATIONS + 1), name=f"faw_before_r{rank}_{i}")
                m.d.comb += taken_before.eq(before)
                load(c, in_rank & free[i] & (
                    (is_[Opcode.ACT] & (taken_before == 0))
                    | (is_[Opcode.G_ACT] & (taken_before < weight))), t.tFAW)
                before = taken_before + free[i]
            for bg in range(g.bankgroups):
                flat = rank * g.bankgroups + bg
                here = in_rank & (cmd.bankgroup == bg)
                act_next, gact_next = counter(f"act_g{flat}"), counter(f"gact_g{flat}")
                rd_bg, wr_bg = counter(f"rd_g{flat}"), counter(f"wr_g{flat}")
                load(act_next, here & is_[Opcode.ACT], t.tRRD_L)
                load(act_next, here & is_[Opcode.G_ACT], act_gact)
                load(gact_next, here & is_[Opcode.ACT], act_gact)
                load(rd_bg, here & is_[Opcode.RD], bus.ccd(True))
                load(rd_bg, here & is_[Opcode.WR], bus.wr_to_rd(True))
                load(wr_bg, here & (is_[Opcode.RD] | is_[Opcode.WR]), bus.ccd(True))
                m.d.comb += [
                    self.act_ok[flat].eq(any_act.ready & act_next.ready & (free_count >= 1)),
                    self.gact_ok[flat].eq(any_act.ready & gact_next.ready
                                          & (free_count >= weight)),
                    self.rd_ok[flat].eq(rd_chan.ready & rd_rank.ready & rd_bg.ready & ~rd_block),
                    self.wr_ok[flat].eq(wr_chan.ready & wr_rank.ready & wr_bg.ready & ~wr_block),
                ]
        return m


def _at_least(value, floor):
    return Mux(value > floor, value, floor)


def _balanced_sum(values):
    values = list(values)
    if len(values) == 1:
        return values[0]
    half = len(values) // 2
    return _balanced_sum(values[:half]) + _balanced_sum(values[half:])
