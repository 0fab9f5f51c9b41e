"""One HBM-PIM bank: storage, MEM and PIM row-buffer state machines, per-bank timing
counters and the bank's GEMV unit (NEUPIMS.md 2.2)."""
from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import data, enum, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ..common import TimingCounter
from ..common.row_buffers import blocked_input
from ..config import RowBufferMode
from ..isa import Opcode, command_layout
from ..pim import PimMacUnit


class BankError(enum.Enum, shape=3):
    NONE = 0
    STATE = 1           # command illegal in the row buffers' state
    TIMING = 2          # a per-bank timing counter had not expired
    ROW_NOT_STORED = 3  # the model keeps no storage for this row (see stored_rows)
    NO_PIM = 4          # PIM command in DRAM mode


BankReady = data.StructLayout({name: 1 for name in (
    "act", "rd", "wr", "pre", "gwrite", "ref", "gact", "pim_pre", "comp")})


def bank_status_layout(config) -> data.StructLayout:
    """What a controller sees of a bank: ready flags and both row buffers' state."""
    rows = config.geometry.rows
    return data.StructLayout({"ready": BankReady, "mem_open": 1, "mem_row": range(rows),
                              "pim_open": 1, "pim_row": range(rows)})


class Bank(wiring.Component):
    """A bank with dual row buffers (or one, in BLOCKED mode) and its PIM unit.

    Ports:
      ``position`` (In): the bank's flat number in the channel (a constant in a channel).
      ``blocked`` (In): one row buffer for both sides (the Newton-like baseline) instead
        of two: a run-time input, so DUAL and BLOCKED are one design (its reset value
        follows ``config.mode``).
      ``cmd``/``cmd_valid`` (In): the channel's command bus; the bank acts on commands
        addressed to it (ACT, RD, WR, PRE, GWRITE, PIM_PRECHARGE by bank; G_ACT by bank
        group; REF to all).
      ``wdata`` (In): the burst a WR writes, valid with the command.
      ``comp``/``comp_column``/``readres`` (In): all-bank PIM strobes from the channel
        (direct COMP/READRES or expanded PIM_GEMV); ``gbuf_chunk`` (In) is the global
        buffer chunk of the COMP strobed one clock earlier.
      ``rdata`` (Out): the burst a RD (or GWRITE step) addressed one clock earlier.
      ``gwrite_valid``/``gwrite_index`` (Out): GWRITE streams the open row, one burst per
        clock, ``rdata`` carrying burst ``gwrite_index``.
      ``result``/``result_valid`` (Out): READRES result, ``PimMacUnit.latency`` clocks later.
      ``ready`` (Out, BankReady): state and per-bank timing allow each command this cycle;
        registered state only (no path from ``cmd``): an ACT or G_ACT of a row open in the
        other buffer is still illegal (flagged), the controller must avoid it.
      ``error`` (Out, BankError): a command addressed to this bank was illegal (a pulse).
      ``backdoor_*`` (In): testbench write access to the storage.

    Timing-only (``config.datapath`` False): no storage (``rdata`` and the chunks the PIM
    unit sees are zero; the backdoor is ignored) and a timing-only PIM unit; the state
    machines, timing counters, errors, GWRITE streaming and result timing are unchanged.
    """

    def __init__(self, config):
        g = config.geometry
        self.config = config
        self.burst_bits = g.burst_bytes * 8
        self.chunk_bits = config.pim.lanes * 16
        self.chunks_per_burst = g.burst_bytes // config.pim.chunk_bytes
        self.depth = config.stored_rows * g.bursts_per_row
        self.mac = PimMacUnit.for_config(config)   # its timing checked by DeviceConfig
        layout = command_layout(config)
        super().__init__({
            "position": In(range(g.banks)), "blocked": blocked_input(config),
            "cmd": In(layout), "cmd_valid": In(1), "wdata": In(self.burst_bits),
            "comp": In(1), "comp_column": In(range(config.bus.comps_per_row)), "readres": In(1),
            "gbuf_chunk": In(self.chunk_bits),
            "rdata": Out(self.burst_bits),
            "gwrite_valid": Out(1), "gwrite_index": Out(range(g.bursts_per_row)),
            "result": Out(16), "result_valid": Out(1),
            "ready": Out(BankReady), "error": Out(BankError),
            "mem_open": Out(1), "mem_row": Out(range(g.rows)),
            "pim_open": Out(1), "pim_row": Out(range(g.rows)),
            "backdoor_en": In(1), "backdoor_addr": In(range(self.depth)),
            "backdoor_data": In(self.burst_bits),
        })

    @staticmethod
    def result_latency(config) -> int:
        """Clocks from a READRES strobe to ``result_valid`` (storage read + MAC pipeline)."""
        return 1 + config.pim.mac_latency

    def elaborate(self, platform):
        m = Module()
        cfg, g, t, bus = self.config, self.config.geometry, self.config.timing, self.config.bus
        blocked = self.blocked
        cmd = self.cmd
        op = cmd.op

        # Flat bank numbers are rank-major (DramGeometry.bank_index), so the bank's position
        # is the concatenation {rank, bankgroup, bank} and its group is the upper part.
        bank_bits = (g.banks_per_group - 1).bit_length()
        group = Cat(cmd.bankgroup[:(g.bankgroups - 1).bit_length()], cmd.rank[:(g.ranks - 1).bit_length()])
        mine = self.cmd_valid & (group == (self.position >> bank_bits))
        same_bank = cmd.bank[:bank_bits] == self.position[:bank_bits] if bank_bits else Const(1)
        hit = {o: Signal(name=f"is_{o.name.lower()}") for o in Opcode}
        for o in Opcode:
            if o in (Opcode.G_ACT,):
                m.d.comb += hit[o].eq(mine & (op == o))
            elif o in (Opcode.REF, Opcode.COMP, Opcode.READRES, Opcode.PIM_GEMV, Opcode.NOP):
                m.d.comb += hit[o].eq(self.cmd_valid & (op == o))
            else:
                m.d.comb += hit[o].eq(mine & same_bank & (op == o))

        # -- timing counters (per bank) --
        longest = max(t.tRC, t.tRFC, bus.gwrite_busy, bus.wr_to_pre, t.tRAS) + 1
        counters = {name: TimingCounter(longest) for name in
                    ("act", "rdwr", "pre", "gact", "comp", "pim_pre")}
        for name, counter in counters.items():
            m.submodules[f"t_{name}"] = counter

        loads = {name: [] for name in counters}
        def after(o, name, cycles):
            loads[name].append((hit[o], cycles))
        after(Opcode.ACT, "act", t.tRC)
        after(Opcode.PRE, "act", t.tRP)
        after(Opcode.REF, "act", t.tRFC)
        after(Opcode.ACT, "rdwr", max(t.tRCDRD, t.tRCDWR))
        after(Opcode.GWRITE, "rdwr", bus.gwrite_busy)
        after(Opcode.ACT, "pre", t.tRAS)
        after(Opcode.RD, "pre", bus.rd_to_pre)
        after(Opcode.WR, "pre", bus.wr_to_pre)
        after(Opcode.GWRITE, "pre", bus.gwrite_busy)
        after(Opcode.G_ACT, "gact", t.tRC)
        after(Opcode.PIM_PRECHARGE, "gact", t.tRP)
        after(Opcode.REF, "gact", t.tRFC)
        after(Opcode.G_ACT, "comp", t.tRCDRD)
        after(Opcode.G_ACT, "pim_pre", t.tRAS)
        loads["pim_pre"].append((self.comp | self.readres, t.tRTP))
        # one row buffer (blocked): both sides share precharge/activate spacing
        loads["gact"] += [(hit[Opcode.PRE] & blocked, t.tRP), (hit[Opcode.ACT] & blocked, t.tRC)]
        loads["act"] += [(hit[Opcode.PIM_PRECHARGE] & blocked, t.tRP),
                         (hit[Opcode.G_ACT] & blocked, t.tRC)]
        for name, counter in counters.items():
            for strobe, cycles in loads[name]:
                with m.If(strobe):
                    m.d.comb += [counter.load.eq(1), counter.cycles.eq(cycles)]
            # several loads in one cycle cannot happen: one command per cycle, and the
            # PIM strobes only load pim_pre, which no command loads.

        # -- row-buffer state --
        mem_open, mem_row = self.mem_open, self.mem_row
        pim_open, pim_row = self.pim_open, self.pim_row
        same_row_in_pim = pim_open & (pim_row == cmd.row)
        same_row_in_mem = mem_open & (mem_row == cmd.row)
        ready = self.ready
        m.d.comb += [
            ready.act.eq(~mem_open & ~(pim_open & blocked) & counters["act"].ready),
            ready.rd.eq(mem_open & counters["rdwr"].ready),
            ready.wr.eq(mem_open & counters["rdwr"].ready),
            ready.gwrite.eq(mem_open & counters["rdwr"].ready),
            ready.pre.eq(counters["pre"].ready),
            ready.ref.eq(~mem_open & ~pim_open & counters["act"].ready & counters["gact"].ready),
            ready.gact.eq(~pim_open & ~(mem_open & blocked) & counters["gact"].ready),
            ready.comp.eq(pim_open & counters["comp"].ready),
            ready.pim_pre.eq(counters["pim_pre"].ready),
        ]
        if cfg.mode is RowBufferMode.DRAM:
            m.d.comb += [ready.gact.eq(0), ready.comp.eq(0), ready.pim_pre.eq(0)]

        with m.If(hit[Opcode.ACT]):
            m.d.sync += [mem_open.eq(1), mem_row.eq(cmd.row)]
        with m.If(hit[Opcode.PRE]):
            m.d.sync += mem_open.eq(0)
        with m.If(hit[Opcode.G_ACT]):
            m.d.sync += [pim_open.eq(1), pim_row.eq(cmd.row)]
        with m.If(hit[Opcode.PIM_PRECHARGE]):
            m.d.sync += pim_open.eq(0)

        # -- legality: the bank's own view (rank- and channel-scope rules are the controller's) --
        # ready flags depend on the bank's state only (no path from ``cmd``, so a controller
        # may choose its command from them); the same-row rule is checked here
        needs = {Opcode.ACT: ready.act & ~same_row_in_pim, Opcode.RD: ready.rd,
                 Opcode.WR: ready.wr, Opcode.PRE: ready.pre, Opcode.GWRITE: ready.gwrite,
                 Opcode.REF: ready.ref, Opcode.G_ACT: ready.gact & ~same_row_in_mem,
                 Opcode.PIM_PRECHARGE: ready.pim_pre}
        state_ok = {Opcode.ACT: ~mem_open & ~Mux(blocked, pim_open, same_row_in_pim),
                    Opcode.RD: mem_open, Opcode.WR: mem_open, Opcode.GWRITE: mem_open,
                    Opcode.PRE: Const(1), Opcode.REF: ~mem_open & ~pim_open,
                    Opcode.G_ACT: ~pim_open & ~Mux(blocked, mem_open, same_row_in_mem),
                    Opcode.PIM_PRECHARGE: Const(1)}
        error = Signal(BankError)
        for o, ok in needs.items():
            with m.If(hit[o] & ~ok):
                m.d.comb += error.eq(Mux(state_ok[o], BankError.TIMING, BankError.STATE))
        pim_strobe = self.comp | self.readres
        with m.If((self.comp & ~ready.comp) | (self.readres & ~pim_open)):
            m.d.comb += error.eq(BankError.STATE if cfg.mode is not RowBufferMode.DRAM
                                 else BankError.NO_PIM)
        stored = Const(1) if cfg.wrap_rows else cmd.row < cfg.stored_rows
        with m.If((hit[Opcode.ACT] | hit[Opcode.G_ACT]) & ~stored):
            m.d.comb += error.eq(BankError.ROW_NOT_STORED)
        if cfg.mode is RowBufferMode.DRAM:
            with m.If(hit[Opcode.G_ACT] | hit[Opcode.PIM_PRECHARGE] | pim_strobe):
                m.d.comb += error.eq(BankError.NO_PIM)
        m.d.comb += self.error.eq(error)

        self._storage(m, hit)
        return m

    def _storage(self, m, hit):
        g = self.config.geometry

        # GWRITE streams the open MEM row, one burst per clock.
        gw_active = Signal()
        gw_index = Signal(range(g.bursts_per_row))
        with m.If(hit[Opcode.GWRITE]):
            m.d.sync += [gw_active.eq(1), gw_index.eq(0)]
        with m.Elif(gw_active):
            m.d.sync += gw_index.eq(gw_index + 1)
            with m.If(gw_index == g.bursts_per_row - 1):
                m.d.sync += gw_active.eq(0)
        m.d.sync += [self.gwrite_valid.eq(gw_active), self.gwrite_index.eq(gw_index)]

        # The PIM unit sees a COMP's chunk (read by the COMP) and the strobes one clock later.
        m.submodules.mac = mac = self.mac
        comp_q, readres_q = Signal(), Signal()
        m.d.sync += [comp_q.eq(self.comp), readres_q.eq(self.readres)]
        m.d.comb += [mac.comp.eq(comp_q), mac.readres.eq(readres_q), self.result.eq(mac.result),
                     self.result_valid.eq(mac.result_valid)]
        if self.config.datapath:     # timing-only: no storage, ``rdata`` and chunks are zero
            self._memory(m, hit, gw_active, gw_index, mac)

    def _memory(self, m, hit, gw_active, gw_index, mac):
        """The stored window: RD/GWRITE reads, WR and backdoor writes, the COMP chunk read."""
        g = self.config.geometry
        row_bits = (self.config.stored_rows - 1).bit_length()
        col_bits = (g.bursts_per_row - 1).bit_length()
        m.submodules.storage = storage = Memory(shape=self.burst_bits, depth=self.depth, init=[])
        write = storage.write_port()
        mem_read, pim_read = storage.read_port(), storage.read_port()

        def address(row, column):
            if row_bits == 0:
                return column[:col_bits] if col_bits else Const(0, 1)
            if col_bits == 0:
                return row[:row_bits]
            return (row[:row_bits] << col_bits) | column[:col_bits]

        with m.If(gw_active):
            m.d.comb += mem_read.addr.eq(address(self.mem_row, gw_index))
        with m.Else():
            m.d.comb += mem_read.addr.eq(address(self.mem_row, self.cmd.column))
        m.d.comb += self.rdata.eq(mem_read.data)

        with m.If(self.backdoor_en):
            m.d.comb += [write.en.eq(1), write.addr.eq(self.backdoor_addr),
                         write.data.eq(self.backdoor_data)]
        with m.Else():
            m.d.comb += [write.en.eq(hit[Opcode.WR]),
                         write.addr.eq(address(self.mem_row, self.cmd.column)),
                         write.data.eq(self.wdata)]

        # PIM path: COMP reads a chunk of the open PIM row; the MAC unit sees it next clock.
        shift = self.chunks_per_burst.bit_length() - 1
        chunk_select = Signal(max(1, shift))
        m.d.comb += pim_read.addr.eq(address(self.pim_row, self.comp_column >> shift))
        if shift:
            m.d.sync += chunk_select.eq(self.comp_column[:shift])
            chunk = pim_read.data.word_select(chunk_select, self.chunk_bits)
        else:
            chunk = pim_read.data
        m.d.comb += [mac.a.eq(chunk), mac.b.eq(self.gbuf_chunk)]
