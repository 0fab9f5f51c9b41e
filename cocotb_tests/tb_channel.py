"""cocotb tests of one PIM channel: GEMV bit-exact and cycle-exact, RD/WR, error flags."""
from __future__ import annotations

import os

import cocotb
import numpy as np

from rtl.channel import ChannelError
from rtl.isa import Command, Opcode
from sim.golden.fp import random16
from sim.programs import ChannelProgram, gemv_program, read_row, write_row

from .timing_checker import TimingViolation
from .channel_tb import ChannelTB, bursts_of, finite_fp16, rng_from_env as _rng, tiles_from_env as _tiles, unpack_fp16


@cocotb.test()
async def gemv_bit_and_cycle_exact(dut):
    """y = W x over several row sets: results bit-exact, each at its predicted cycle."""
    tb = ChannelTB(dut)
    await tb.start()
    rng = _rng()
    rows = int(os.environ.get("NEUPIMS_ROW_SETS", min(3, tb.config.stored_rows - 1)))
    program = await tb.gemv(rng, list(range(rows)), _tiles(tb.config))
    # The timing table's closed form: a row set opens in tFAW x (groups - 1) + tRCDRD, and
    # its first result returns readres_after_first_comp(k) + RL + burst after the PIM_GEMV.
    bus, g = tb.config.bus, tb.config.geometry
    first_gact = next(c for c in program.commands if c.op is Opcode.G_ACT)
    first_gemv = next(c for c in program.commands if c.op is Opcode.PIM_GEMV)
    first_result = next(e for e in program.expected if e.kind == "gemv")
    assert first_gemv.cycle - first_gact.cycle == bus.row_set_open(g.bankgroups) + g.ranks - 1
    assert first_result.cycle - first_gemv.cycle == bus.gemv_result(first_gemv.comps)
    dut._log.info("GEMV: %d row sets x %d tiles, %d cycles, %d commands checked",
                  rows, len(_tiles(tb.config)), program.last_data, sum(tb.checker.counts.values()))


@cocotb.test()
async def gemv_head_tiles_with_special_values(dut):
    """K-cache style tiles (PIM_GEMV(k) over parts of the row) on operands that include
    zeros, subnormals, infinities and NaN."""
    tb = ChannelTB(dut)
    await tb.start()
    per_row = tb.config.bus.comps_per_row
    k = max(1, per_row // 4)
    await tb.gemv(_rng(), [0], [(start, k) for start in range(0, per_row, k)], special=True)


@cocotb.test()
async def write_then_read_back(dut):
    """WR a row through the bus, RD it back: data at RL + burst after each RD, bit-exact."""
    tb = ChannelTB(dut)
    await tb.start()
    cfg, rng = tb.config, _rng()
    g = cfg.geometry
    program = ChannelProgram(cfg)
    rows = {}
    cycle = 0
    for bank in (0, g.banks - 1):
        values = random16(rng, g.row_elements)
        rows[bank] = values
        cycle = write_row(program, cycle, bank, 1, bursts_of(cfg, values))
    for bank in (0, g.banks - 1):
        cycle = read_row(program, cycle, bank, 1, g.bursts_per_row)
    _, bursts = await tb.run(program)
    reads = [b for b in bursts if not b[1]]
    for expected, (_, _, payload) in zip(program.expected, reads):
        info = expected.info
        per = g.burst_bytes // 2
        want = rows[info["bank"]][info["column"] * per:(info["column"] + 1) * per]
        assert np.array_equal(unpack_fp16(payload, per), want), f"RD {info} returned wrong data"


@cocotb.test()
async def rtl_flags_illegal_state(dut):
    """The banks flag a RD to a closed row (the checker is bypassed on purpose here)."""
    tb = ChannelTB(dut)
    await tb.start()
    program = ChannelProgram(tb.config)
    program.issue(0, Command(Opcode.RD, column=0))
    await tb.load(program)
    dut.prog_start.value = 1
    await cocotb.triggers.RisingEdge(dut.clk)
    dut.prog_start.value = 0
    await cocotb.triggers.ClockCycles(dut.clk, 4)
    assert int(dut.error.value) == 1, "a RD to a closed bank was not flagged"
    assert ChannelError(int(dut.error_code.value)) is ChannelError.STATE


@cocotb.test()
async def checker_fails_an_illegal_program(dut):
    """A G_ACT one cycle early (inside tFAW, or inside tRRD_S where a bank group is small
    enough that two G_ACTs fit a tFAW window): the RTL does not police rank-level timing;
    the checker on the command log must fail the run, naming the rule."""
    tb = ChannelTB(dut)
    await tb.start()
    cfg = tb.config
    if cfg.geometry.bankgroups < 2:
        return
    vector = finite_fp16(_rng(), cfg.geometry.row_elements)
    program = gemv_program(cfg, bursts_of(cfg, vector), cfg.stored_rows - 1, [0], _tiles(cfg))
    index = next(i for i, c in enumerate(program.commands)
                 if c.op is Opcode.G_ACT and c.bankgroup == 1 and c.rank == 0)
    first = next(c for c in program.commands if c.op is Opcode.G_ACT)
    if 2 * cfg.geometry.banks_per_group > 4:
        rule, cycle = "tFAW", program.commands[index].cycle - 1
    else:
        rule, cycle = "tRRD", first.cycle + cfg.timing.tRRD_S - 1
    program.commands[index] = program.commands[index].at(cycle)
    try:
        await tb.run(program)
    except TimingViolation as violation:
        assert violation.rule == rule, violation
        dut._log.info("checker caught it: %s", violation)
    else:
        raise AssertionError("an illegal G_ACT passed the timing checker")
