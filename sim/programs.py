"""Channel command programs with issue cycles computed from the timing table.

Each builder places every command at the earliest cycle the configuration's timing
allows for that pattern (formulas from ``DramTiming``/``BusTiming``), and records when
each burst of read data must appear on the data bus. The cocotb runs compare the RTL's
bus against these predictions cycle for cycle; the timing checker audits the commands.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from rtl.isa import Command, Opcode


@dataclass
class Expected:
    """A burst the data bus must carry at ``cycle`` (relative to program start)."""
    cycle: int
    kind: str          # "rd" or "gemv"
    info: dict


@dataclass
class ChannelProgram:
    config: object
    commands: list = field(default_factory=list)
    wdata: list = field(default_factory=list)
    expected: list = field(default_factory=list)

    def issue(self, cycle: int, command: Command) -> Command:
        if self.commands and cycle <= self.commands[-1].cycle:
            raise ValueError(f"{command} at {cycle} is not after {self.commands[-1]}")
        placed = command.at(cycle)
        self.commands.append(placed)
        return placed

    @property
    def end(self) -> int:
        return self.commands[-1].cycle if self.commands else 0

    @property
    def last_data(self) -> int:
        return max((e.cycle for e in self.expected), default=self.end)


def _coords(config, bank: int) -> dict:
    rank, bankgroup, bank_in_group = config.geometry.bank_coords(bank)
    return {"rank": rank, "bankgroup": bankgroup, "bank": bank_in_group}


def write_row(program: ChannelProgram, start: int, bank: int, row: int, bursts: list[int],
              gwrite: bool = False) -> int:
    """ACT, one WR per burst, optionally GWRITE, PRE. Returns the cycle after which the
    bank may be activated again (and, with GWRITE, PIM commands may go)."""
    cfg, t, bus = program.config, program.config.timing, program.config.bus
    where = _coords(cfg, bank)
    act = program.issue(start, Command(Opcode.ACT, row=row, **where))
    cycle = act.cycle + t.tRCDWR
    for index, burst in enumerate(bursts):
        program.issue(cycle, Command(Opcode.WR, column=index, **where))
        program.wdata.append(burst)
        last_wr, cycle = cycle, cycle + bus.ccd(True)
    ready_pre = max(act.cycle + t.tRAS, last_wr + bus.wr_to_pre)
    if gwrite:
        gw = program.issue(max(last_wr + bus.wr_to_rd(True), act.cycle + t.tRCDRD),
                           Command(Opcode.GWRITE, **where))
        ready_pre = max(ready_pre, gw.cycle + bus.gwrite_busy)
    pre = program.issue(ready_pre, Command(Opcode.PRE, **where))
    return pre.cycle + t.tRP


def read_row(program: ChannelProgram, start: int, bank: int, row: int, bursts: int) -> int:
    """ACT, RD of ``bursts`` bursts (data expected RL + burst later), PRE."""
    cfg, t, bus = program.config, program.config.timing, program.config.bus
    where = _coords(cfg, bank)
    act = program.issue(start, Command(Opcode.ACT, row=row, **where))
    cycle = act.cycle + t.tRCDRD
    for column in range(bursts):
        rd = program.issue(cycle, Command(Opcode.RD, column=column, **where))
        program.expected.append(Expected(rd.cycle + bus.read_data, "rd",
                                         {"bank": bank, "row": row, "column": column}))
        last_rd, cycle = rd.cycle, rd.cycle + bus.ccd(True)
    pre = program.issue(max(act.cycle + t.tRAS, last_rd + bus.rd_to_pre),
                        Command(Opcode.PRE, **where))
    return pre.cycle + t.tRP


def open_row_set(program: ChannelProgram, start: int, row: int) -> tuple[int, list[int]]:
    """G_ACT ``row`` in every bank group: bank groups tFAW apart within a rank, ranks
    interleaved one clock apart. Returns (first COMP cycle, G_ACT cycle per bank group)."""
    g, t = program.config.geometry, program.config.timing
    cycles = []
    for bankgroup in range(g.bankgroups):
        for rank in range(g.ranks):
            cycle = start + bankgroup * t.tFAW + rank
            program.issue(cycle, Command(Opcode.G_ACT, rank=rank, bankgroup=bankgroup, row=row))
            cycles.append(cycle)
    return cycles[-1] + t.tRCDRD, cycles


def close_row_set(program: ChannelProgram, start: int) -> list[int]:
    """PIM_PRECHARGE every bank, one per clock from ``start``; returns their cycles."""
    return [program.issue(start + bank, Command(Opcode.PIM_PRECHARGE, **_coords(program.config, bank))).cycle
            for bank in range(program.config.geometry.banks)]


def row_set_cycles(config, tiles: list[tuple[int, int]]) -> int:
    """Upper bound of one row set's span in ``gemv_program``: open, tiles, close."""
    t, bus, g = config.timing, config.bus, config.geometry
    return (bus.row_set_open(g.bankgroups) + g.ranks + sum(bus.gemv_busy(k) for _, k in tiles)
            + t.tRAS + t.tRTP + g.banks + t.tRP)


def gemv_program(config, vector_bursts: list[int], vector_row: int, row_sets: list[int],
                 tiles: list[tuple[int, int]], vector_bank: int = 0) -> ChannelProgram:
    """y = W x on one channel.

    The vector (one row of FP16) is written to ``vector_bank``/``vector_row`` with WR and
    loaded into the global buffer with GWRITE. Then, for each row set (the same row in all
    banks), G_ACTs open it and one PIM_GEMV(k) per ``(start chunk, k)`` tile computes one
    FP16 per bank; PIM_PRECHARGEs close it before the next row set. An all-bank REF goes
    between row sets whenever the next one could end past tREFI after the last refresh.
    """
    t, bus, g = config.timing, config.bus, config.geometry
    program = ChannelProgram(config)
    gw_done = write_row(program, 0, vector_bank, vector_row, vector_bursts, gwrite=True)
    gwrite_cycle = next(c.cycle for c in program.commands if c.op is Opcode.GWRITE)
    ready = max(gw_done, gwrite_cycle + bus.gwrite_busy)
    previous_gacts, precharges = None, None
    last_refresh = 0
    span = row_set_cycles(config, tiles)
    if span >= t.tREFI - t.tRFC:
        raise ValueError(f"a row set of {span} cycles cannot fit between refreshes")
    for row in row_sets:
        start = ready
        if start + span > last_refresh + t.tREFI:
            closed = max([ready] + [p + t.tRP for p in (precharges or [])])
            last_refresh = program.issue(closed, Command(Opcode.REF)).cycle
            start = ready = last_refresh + t.tRFC
        if previous_gacts is not None:
            # Each bank group after its banks' PIM_PRECHARGE (tRP) and its last G_ACT (tRC),
            # and each rank's G_ACTs a tFAW apart.
            per_group = g.banks_per_group
            for index, gact in enumerate(previous_gacts):
                bankgroup, rank = divmod(index, g.ranks)
                first_bank = g.bank_index(rank, bankgroup, 0)
                last_pre = max(precharges[first_bank:first_bank + per_group])
                offset = bankgroup * t.tFAW + rank
                start = max(start, last_pre + t.tRP - offset, gact + t.tRC - offset,
                            previous_gacts[-g.ranks + rank] + t.tFAW - offset)
        first_comp, gacts = open_row_set(program, start, row)
        cycle = first_comp
        for column, comps in tiles:
            gemv = program.issue(cycle, Command(Opcode.PIM_GEMV, column=column, comps=comps))
            readres = gemv.cycle + bus.readres_after_first_comp(comps)
            program.expected.append(Expected(readres + bus.read_data, "gemv",
                                             {"row": row, "column": column, "comps": comps}))
            last_comp = gemv.cycle + bus.comp_interval * (comps - 1)
            cycle = gemv.cycle + bus.gemv_busy(comps)
        close = max(readres + t.tRTP, last_comp + t.tRTP, max(gacts) + t.tRAS)
        precharges = close_row_set(program, close)
        previous_gacts = gacts
        ready = precharges[-1] + 1
    return program
