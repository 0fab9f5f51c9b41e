"""One bank's request queue and its next command (the controller's per-bank machine)."""
from amaranth.hdl import Array, Module, Mux, Signal
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from ..common.row_buffers import blocked_input
from ..dram.bank import bank_status_layout
from ..isa import Opcode


def entry_layout(config) -> data.StructLayout:
    g = config.geometry
    return data.StructLayout({"write": 1, "row": range(g.rows), "column": range(g.bursts_per_row),
                              "tag": config.controller.tag_bits})


def candidate_layout(config) -> data.StructLayout:
    return data.StructLayout({"valid": 1, "op": Opcode, "row": range(config.geometry.rows),
                              "column": range(config.geometry.bursts_per_row),
                              "tag": config.controller.tag_bits, "hit": 1})


class BankQueue(wiring.Component):
    """Requests of one bank, oldest first, and the command that serves them next.

    Policy (open page, first ready): the oldest request whose row is open is served (RD or
    WR); when the oldest request needs another row, at most ``row_hit_limit`` younger hits
    go first, then the bank precharges (PRE), frees the row from the PIM buffer if it is
    open there (PIM_PRECHARGE, only when ``allow_pim_pre``), and activates it (ACT). Serving
    the oldest hit first keeps requests to one address in order.

    Ports:
      ``push``/``entry`` (In): append a request (the caller checks ``full``).
      ``status`` (In): the bank's ready flags and row buffers.
      ``block`` (In): no candidate this cycle (refresh due, bank reserved for GWRITE).
      ``hold_act`` (In): no ACT (PIM opening a row set); ``reserved``/``reserved_row`` (In):
      no ACT of the row reserved by the running GEMV.
      ``grant`` (In): the candidate was issued this cycle.
      ``candidate`` (Out): the next command, ``valid`` when the bank's own state and
      timing allow it now; ``hit`` is set for an RD/WR that found its row open.
      ``full``, ``empty`` (Out). Latency: ``candidate`` is combinational from the state.
    """

    def __init__(self, config):
        self.config = config
        self.depth = config.controller.bank_queue_depth
        super().__init__({
            "push": In(1), "entry": In(entry_layout(config)), "full": Out(1), "empty": Out(1),
            "status": In(bank_status_layout(config)),
            "block": In(1), "hold_act": In(1), "reserved": In(1),
            "reserved_row": In(range(config.geometry.rows)), "allow_pim_pre": In(1),
            "grant": In(1), "candidate": Out(candidate_layout(config)),
            "blocked": blocked_input(config),
        })

    def elaborate(self, platform):
        m = Module()
        depth, limit = self.depth, self.config.controller.row_hit_limit
        layout = entry_layout(self.config)
        entries = [Signal(layout, name=f"entry{i}") for i in range(depth)]
        count = Signal(range(depth + 1))
        streak = Signal(range(limit + 1))
        fresh = Signal()      # an ACT opened the row and no RD/WR has used it yet
        st = self.status
        m.d.comb += [self.full.eq(count == depth), self.empty.eq(count == 0)]

        valid = [Signal(name=f"valid{i}") for i in range(depth)]
        hits = [Signal(name=f"hit{i}") for i in range(depth)]
        for i in range(depth):
            m.d.comb += [valid[i].eq(count > i),
                         hits[i].eq(valid[i] & st.mem_open & (entries[i].row == st.mem_row))]
        chosen = Signal(range(depth))
        any_hit = Signal()
        for i in reversed(range(depth)):
            with m.If(hits[i]):
                m.d.comb += [chosen.eq(i), any_hit.eq(1)]
        with m.If(~hits[0] & (streak >= limit)):
            m.d.comb += [chosen.eq(0), any_hit.eq(0)]
        pick = Array(entries)[chosen]
        head = entries[0]

        cand = self.candidate
        row_in_pim = st.pim_open & (self.blocked | (st.pim_row == head.row))
        m.d.comb += [cand.row.eq(head.row), cand.column.eq(pick.column), cand.tag.eq(pick.tag),
                     cand.hit.eq(~fresh)]
        with m.If(any_hit):
            m.d.comb += [cand.op.eq(Mux(pick.write, Opcode.WR, Opcode.RD)),
                         cand.valid.eq(Mux(pick.write, st.ready.wr, st.ready.rd))]
        with m.Elif(st.mem_open):
            m.d.comb += [cand.op.eq(Opcode.PRE), cand.valid.eq(st.ready.pre)]
        with m.Elif(row_in_pim):
            m.d.comb += [cand.op.eq(Opcode.PIM_PRECHARGE),
                         cand.valid.eq(st.ready.pim_pre & self.allow_pim_pre)]
        with m.Else():
            m.d.comb += [cand.op.eq(Opcode.ACT),
                         cand.valid.eq(st.ready.act & ~self.hold_act
                                       & ~(self.reserved & (self.reserved_row == head.row)))]
        with m.If(~valid[0] | self.block):
            m.d.comb += cand.valid.eq(0)

        # -- updates on grant --
        served = self.grant & any_hit
        with m.If(served):
            m.d.sync += fresh.eq(0)
            with m.If(chosen != 0):
                m.d.sync += streak.eq(Mux(streak == limit, limit, streak + 1))
            with m.Else():
                m.d.sync += streak.eq(0)
        with m.If(self.grant & (cand.op == Opcode.ACT)):
            m.d.sync += fresh.eq(1)
        with m.If(self.grant & (cand.op == Opcode.PRE)):
            m.d.sync += streak.eq(0)

        # compacting queue: remove the served entry, append the pushed one
        kept = Signal(range(depth + 1))
        m.d.comb += kept.eq(count - served)
        for i in range(depth):
            shifted = entries[i + 1] if i + 1 < depth else entries[i]
            at_or_after = (chosen <= i) if i < depth - 1 else 1   # (no constant comparison)
            with m.If(served & at_or_after):
                m.d.sync += entries[i].eq(shifted)
            with m.If(self.push & (kept == i)):
                m.d.sync += entries[i].eq(self.entry)
        m.d.sync += count.eq(kept + self.push)
        return m
