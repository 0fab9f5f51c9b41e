"""cocotb tests of one PIM channel: GEMV bit-exact and cycle-exact, RD/WR, error flags."""
from __future__ import annotations

import os

import cocotb
import numpy as np

from rtl.isa import Command, Opcode
from sim.golden.fp import random16
from sim.golden.pim import gemv
from sim.programs import ChannelProgram, gemv_program, read_row, write_row

from .channel_tb import ChannelTB, pack_fp16, unpack_fp16


def _rng():
    return np.random.default_rng(int(os.environ.get("NEUPIMS_SEED", "1")))


def _finite_fp16(rng, shape, scale=1.0):
    """Random finite FP16 values of moderate size (so sums stay finite)."""
    return (rng.standard_normal(shape) * scale).astype(np.float16).view(np.uint16)


def _bursts(config, row: np.ndarray) -> list[int]:
    per = config.geometry.burst_bytes // 2
    return [pack_fp16(row[i:i + per]) for i in range(0, len(row), per)]


def _tiles(config) -> list[tuple[int, int]]:
    """Whole-row GEMV tiles: NEUPIMS_TILE comps each (default: the whole row at once)."""
    per_row = config.bus.comps_per_row
    k = int(os.environ.get("NEUPIMS_TILE", per_row))
    return [(start, min(k, per_row - start)) for start in range(0, per_row, k)]


async def _gemv_run(tb, rng, row_sets, tiles, special=False):
    cfg = tb.config
    g = cfg.geometry
    matrix = {}
    for row in row_sets:
        values = (random16(rng, g.banks * g.row_elements).reshape(g.banks, -1) if special
                  else _finite_fp16(rng, (g.banks, g.row_elements)))
        matrix[row] = values
        for bank in range(g.banks):
            await tb.backdoor_rows(bank, row, values[bank])
    vector = (random16(rng, g.row_elements) if special else _finite_fp16(rng, g.row_elements))
    vector_row = cfg.stored_rows - 1
    program = gemv_program(cfg, _bursts(cfg, vector), vector_row, row_sets, tiles)
    _, bursts = await tb.run(program)
    results = [b for b in bursts if b[1]]
    for expected, (cycle, _, payload) in zip([e for e in program.expected if e.kind == "gemv"], results):
        info = expected.info
        want = gemv(matrix[info["row"]], vector, cfg.pim.lanes, info["column"], info["comps"])
        got = unpack_fp16(payload, g.burst_bytes // 2)[:g.banks]
        mismatch = np.nonzero(got != want)[0]
        assert mismatch.size == 0, (
            f"GEMV row {info['row']} chunks {info['column']}+{info['comps']} at cycle {cycle}: "
            f"banks {mismatch[:4].tolist()} got {[hex(v) for v in got[mismatch[:4]]]}, "
            f"golden {[hex(v) for v in want[mismatch[:4]]]}")
    return program


@cocotb.test()
async def gemv_bit_and_cycle_exact(dut):
    """y = W x over several row sets: results bit-exact, each at its predicted cycle."""
    tb = ChannelTB(dut)
    await tb.start()
    rng = _rng()
    rows = int(os.environ.get("NEUPIMS_ROW_SETS", min(3, tb.config.stored_rows - 1)))
    program = await _gemv_run(tb, rng, list(range(rows)), _tiles(tb.config))
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
    await _gemv_run(tb, _rng(), [0], [(start, k) for start in range(0, per_row, k)], special=True)


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
        cycle = write_row(program, cycle, bank, 1, _bursts(cfg, values))
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
    from rtl.channel import ChannelError
    assert ChannelError(int(dut.error_code.value)) is ChannelError.STATE
