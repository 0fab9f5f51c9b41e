"""One PIM channel: its banks (with PIM units), the global buffer, PIM_GEMV expansion and
the data bus. Commands come from outside (a controller, or a testbench's player)."""
from amaranth.hdl import Array, Cat, Module, Mux, Signal
from amaranth.lib import data, enum, wiring
from amaranth.lib.wiring import In, Out

from ..common import DelayLine, shared_instance
from ..common.row_buffers import blocked_input
from ..config import RowBufferMode
from ..dram import Bank, BankError
from ..dram.bank import bank_status_layout
from ..isa import Opcode, command_layout
from ..pim import GlobalBufferRtl

BANK_MODULE = "neupims_bank"


class ChannelError(enum.Enum, shape=4):
    NONE = 0
    STATE = 1            # bank: row-buffer state
    TIMING = 2           # bank: per-bank timing counter
    ROW_NOT_STORED = 3   # bank: row outside the stored window
    NO_PIM = 4           # PIM command in DRAM mode
    GEMV_OVERLAP = 5     # PIM_GEMV/COMP/READRES while a PIM_GEMV expansion runs
    DATA_COLLISION = 6   # RD data and READRES data on the bus in the same cycle
    BAD_GEMV = 7         # PIM_GEMV with k = 0 or chunks past the end of the row


class ChannelDatapath(wiring.Component):
    """Banks, global buffer and data bus of one channel.

    Ports:
      ``cmd``/``cmd_valid``/``wdata`` (In): one command per clock; WR data rides with WR.
      ``rdata``/``rdata_valid``/``rdata_pim`` (Out): a burst on the data bus, ``bus.read_data``
        clocks after its RD or READRES (for PIM_GEMV(k): after its internal READRES, issued
        ``bus.readres_after_first_comp(k)`` after the command). READRES data holds bank b's
        FP16 result in bits [16 b, 16 b + 16).
      ``cycle`` (Out): free-running clock counter.
      ``error`` (Out, sticky) with ``error_code``, ``error_bank``, ``error_cycle`` of the first
        illegal command the banks or the channel saw.
      ``pim_busy`` (Out): a PIM_GEMV expansion is running.
      ``blocked`` (In): the banks' row-buffer mode at run time (``rtl.dram.Bank``).
      ``banks`` (Out): every bank's ready flags and row-buffer state (for a controller).
      ``backdoor_*`` (In): testbench write access to bank storage.

    ``shared_bank_module``: instantiate one Verilog module for all banks (fast Verilator
    builds); set False to simulate with Amaranth's simulator.

    Timing-only (``config.datapath`` False): timing-only banks and global buffer, and the
    data bus carries only its valid bits down the RL + burst delay lines: ``rdata`` is
    zero, ``rdata_valid``/``rdata_pim`` come on the same clocks as in the full RTL.
    """

    def __init__(self, config, shared_bank_module: bool = True):
        g = config.geometry
        self.config = config
        self.shared_bank_module = shared_bank_module
        self.bank_prototype = Bank(config) if shared_bank_module else None
        self.bank_depth = config.stored_rows * g.bursts_per_row
        self.burst_bits = g.burst_bytes * 8
        super().__init__({
            "cmd": In(command_layout(config)), "cmd_valid": In(1), "wdata": In(self.burst_bits),
            "rdata": Out(self.burst_bits), "rdata_valid": Out(1), "rdata_pim": Out(1),
            "cycle": Out(32), "pim_busy": Out(1), "blocked": blocked_input(config),
            "banks": Out(data.ArrayLayout(bank_status_layout(config), g.banks)),
            "error": Out(1), "error_code": Out(ChannelError), "error_bank": Out(range(g.banks)),
            "error_cycle": Out(32),
            "backdoor_en": In(1), "backdoor_bank": In(range(g.banks)),
            "backdoor_addr": In(range(self.bank_depth)),
            "backdoor_data": In(self.burst_bits),
        })

    def verilog_modules(self):
        """Extra Verilog modules this component instantiates: (component, module name)."""
        return [(self.bank_prototype, BANK_MODULE)] if self.shared_bank_module else []

    def _banks(self, m):
        banks = []
        for index in range(self.config.geometry.banks):
            if not self.shared_bank_module:
                bank = m.submodules[f"bank{index}"] = Bank(self.config)
            else:
                bank = shared_instance(m, f"bank{index}", BANK_MODULE, self.bank_prototype)
            m.d.comb += bank.position.eq(index)
            banks.append(bank)
        return banks

    def elaborate(self, platform):
        m = Module()
        cfg, g, bus = self.config, self.config.geometry, self.config.bus
        cmd, op = self.cmd, self.cmd.op
        m.d.sync += self.cycle.eq(self.cycle + 1)

        banks = self._banks(m)
        m.submodules.gbuf = gbuf = GlobalBufferRtl(cfg)
        comp, comp_column, readres, overlap, bad_gemv = self._gemv_expander(m)

        for index, bank in enumerate(banks):
            m.d.comb += [
                bank.cmd.eq(cmd), bank.cmd_valid.eq(self.cmd_valid), bank.wdata.eq(self.wdata),
                bank.comp.eq(comp), bank.comp_column.eq(comp_column), bank.readres.eq(readres),
                bank.blocked.eq(self.blocked),
                bank.gbuf_chunk.eq(gbuf.read_chunk),
                bank.backdoor_en.eq(self.backdoor_en & (self.backdoor_bank == index)),
                bank.backdoor_addr.eq(self.backdoor_addr), bank.backdoor_data.eq(self.backdoor_data),
            ]
            status = self.banks[index]
            m.d.comb += [status.ready.eq(bank.ready), status.mem_open.eq(bank.mem_open),
                         status.mem_row.eq(bank.mem_row), status.pim_open.eq(bank.pim_open),
                         status.pim_row.eq(bank.pim_row)]
        m.d.comb += gbuf.read_column.eq(comp_column)

        flat_bank = Signal(range(g.banks))
        m.d.comb += flat_bank.eq(Cat(cmd.bank[:(g.banks_per_group - 1).bit_length()],
                                     cmd.bankgroup[:(g.bankgroups - 1).bit_length()],
                                     cmd.rank[:(g.ranks - 1).bit_length()]))
        rdata = Array(bank.rdata for bank in banks)

        # GWRITE: the streaming bank's bursts go to the global buffer.
        gwrite_bank = Signal(range(g.banks))
        with m.If(self.cmd_valid & (op == Opcode.GWRITE)):
            m.d.sync += gwrite_bank.eq(flat_bank)
        gw_valid = Array(bank.gwrite_valid for bank in banks)[gwrite_bank]
        gw_index = Array(bank.gwrite_index for bank in banks)[gwrite_bank]
        m.d.comb += [gbuf.write_en.eq(gw_valid), gbuf.write_index.eq(gw_index),
                     gbuf.write_data.eq(rdata[gwrite_bank] if cfg.datapath else 0)]

        # Data bus: RD bursts and READRES results, each delayed to RL + burst (timing-only:
        # the lines carry one constant-zero bit, ``rdata`` is zero).
        read_bank, read_valid = Signal(range(g.banks)), Signal()
        m.d.sync += [read_bank.eq(flat_bank), read_valid.eq(self.cmd_valid & (op == Opcode.RD))]
        bits = self.burst_bits if cfg.datapath else 1
        m.submodules.read_line = read_line = DelayLine(bits, bus.read_data - 1)
        m.d.comb += [read_line.i_data.eq(rdata[read_bank] if cfg.datapath else 0),
                     read_line.i_valid.eq(read_valid)]
        latency = Bank.result_latency(cfg)
        m.submodules.result_line = result_line = DelayLine(bits, bus.read_data - latency)
        m.d.comb += [result_line.i_data.eq(Cat(*(bank.result for bank in banks))
                                           if cfg.datapath else 0),
                     result_line.i_valid.eq(banks[0].result_valid)]
        m.d.comb += [
            self.rdata_valid.eq(read_line.o_valid | result_line.o_valid),
            self.rdata_pim.eq(result_line.o_valid),
            self.rdata.eq(Mux(result_line.o_valid, result_line.o_data, read_line.o_data)),
        ]
        self._errors(m, banks, overlap, read_line.o_valid & result_line.o_valid, bad_gemv)
        return m

    def _gemv_expander(self, m):
        """PIM_GEMV(k) -> COMPs every comp_interval from its column, READRES after
        max(k, comp_min_slots) slots. Returns the all-bank strobes and an overlap flag."""
        cfg, bus = self.config, self.config.bus
        cmd, op, valid = self.cmd, self.cmd.op, self.cmd_valid
        ci, min_slots = bus.comp_interval, cfg.timing.comp_min_slots
        longest = bus.readres_after_first_comp(bus.comps_per_row)
        active = Signal()
        column = Signal.like(cmd.column)
        left = Signal.like(cmd.comps)
        comp_wait = Signal(range(ci))
        readres_wait = Signal(range(longest + 1))
        m.d.comb += self.pim_busy.eq(active)

        bad_gemv = valid & (op == Opcode.PIM_GEMV) & (
            (cmd.comps == 0) | (cmd.column + cmd.comps > bus.comps_per_row))
        is_gemv = valid & (op == Opcode.PIM_GEMV) & ~bad_gemv
        is_comp = valid & (op == Opcode.COMP)
        is_readres = valid & (op == Opcode.READRES)
        exp_comp = active & (comp_wait == 0) & (left != 0)
        exp_readres = active & (readres_wait == 0)
        slots = Mux(cmd.comps > min_slots, cmd.comps, min_slots)
        with m.If(is_gemv & ~active):
            m.d.sync += [active.eq(1), column.eq(cmd.column + 1), left.eq(cmd.comps - 1),
                         comp_wait.eq(ci - 1), readres_wait.eq(slots * ci - 1)]
        with m.Elif(active):
            m.d.sync += readres_wait.eq(readres_wait - 1)
            with m.If(exp_readres):
                m.d.sync += active.eq(0)
            with m.If(exp_comp):
                m.d.sync += [comp_wait.eq(ci - 1), left.eq(left - 1), column.eq(column + 1)]
            with m.Elif(comp_wait != 0):
                m.d.sync += comp_wait.eq(comp_wait - 1)

        comp = Signal()
        comp_column = Signal.like(cmd.column)
        m.d.comb += [
            comp.eq(is_gemv | is_comp | exp_comp),
            comp_column.eq(Mux(active, column, cmd.column)),
        ]
        readres = Signal()
        m.d.comb += readres.eq(is_readres | exp_readres)
        overlap = active & (is_gemv | is_comp | is_readres)
        return comp, comp_column, readres, overlap, bad_gemv

    def _errors(self, m, banks, overlap, collision, bad_gemv):
        code = Signal(ChannelError)
        where = Signal.like(self.error_bank)
        for index, bank in reversed(list(enumerate(banks))):
            with m.If(bank.error != BankError.NONE):
                m.d.comb += [code.eq(bank.error.as_value()), where.eq(index)]
        with m.If(overlap):
            m.d.comb += code.eq(ChannelError.GEMV_OVERLAP)
        with m.If(collision):
            m.d.comb += code.eq(ChannelError.DATA_COLLISION)
        with m.If(bad_gemv):
            m.d.comb += code.eq(ChannelError.BAD_GEMV)
        if self.config.mode is RowBufferMode.DRAM:
            with m.If(self.cmd_valid & (self.cmd.op == Opcode.PIM_GEMV)):
                m.d.comb += code.eq(ChannelError.NO_PIM)
        with m.If((code != ChannelError.NONE) & ~self.error):
            m.d.sync += [self.error.eq(1), self.error_code.eq(code), self.error_bank.eq(where),
                         self.error_cycle.eq(self.cycle)]
