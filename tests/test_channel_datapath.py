"""ChannelDatapath (rtl/channel/datapath.py) on Amaranth's Python simulator, ``tiny`` preset,
every bank an Amaranth submodule (``shared_bank_module=False``).

Storage is loaded by backdoor; the global buffer by ACT + GWRITE (+ ``bus.gwrite_busy``);
the PIM rows are opened by one G_ACT per bank group (tFAW apart within a rank). Results
are compared bit for bit with ``sim.golden.pim.gemv``; every cycle count comes from the
config.
"""
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from amaranth.sim import Simulator  # noqa: E402

from rtl.channel.datapath import ChannelDatapath, ChannelError  # noqa: E402
from rtl.config import preset  # noqa: E402
from rtl.isa import Opcode  # noqa: E402
from sim.golden import pim as golden_pim  # noqa: E402

CONFIG = preset("tiny")
GBUF_BANK = 0     # flat bank whose row is copied into the global buffer
GBUF_ROW = 2
PIM_ROW = 1


def moderate16(rng, n):
    mags = rng.integers(0x2000, 0x4C00, n, dtype=np.uint16)
    return mags | (rng.integers(0, 2, n, dtype=np.uint16) << np.uint16(15))


def make_storage(config, seed):
    """Random rows for every bank: {(bank, row): FP16 array of row_elements}. PIM and
    global-buffer rows hold moderate values so results are ordinary numbers."""
    rng = np.random.default_rng(seed)
    g = config.geometry
    rows = {}
    for bank in range(g.banks):
        for row in range(config.stored_rows):
            if row in (PIM_ROW, GBUF_ROW):
                rows[bank, row] = moderate16(rng, g.row_elements)
            else:
                rows[bank, row] = rng.integers(0, 1 << 16, g.row_elements, dtype=np.uint16)
    return rows


def burst_value(config, row_values, burst):
    """Burst ``burst`` of a row: element e of the burst in bits [16 e, 16 e + 16)."""
    per = config.geometry.burst_bytes // 2
    return sum(int(v) << (16 * i) for i, v in enumerate(row_values[burst * per:(burst + 1) * per]))


def backdoor_writes(config, rows):
    g = config.geometry
    return [(bank, row * g.bursts_per_row + burst, burst_value(config, values, burst))
            for (bank, row), values in rows.items() for burst in range(g.bursts_per_row)]


def cmd(op, bank=0, **fields):
    rank, group, b = CONFIG.geometry.bank_coords(bank)
    return dict(op=op, rank=rank, bankgroup=group, bank=b, **fields)


def pim_setup(config, gwrite=True):
    """Schedule that fills the global buffer (optional) and opens PIM_ROW in every bank.
    Returns (schedule, first cycle at which a COMP is allowed)."""
    t, bus, g = config.timing, config.bus, config.geometry
    schedule, at = {}, 0
    if gwrite:
        schedule[0] = cmd(Opcode.ACT, bank=GBUF_BANK, row=GBUF_ROW)
        schedule[t.tRCDRD] = cmd(Opcode.GWRITE, bank=GBUF_BANK)
        at = t.tRCDRD + bus.gwrite_busy   # GWRITE blocks PIM commands meanwhile
        schedule[at] = cmd(Opcode.PRE, bank=GBUF_BANK)
        at += 1
    last = at
    for rank in range(g.ranks):
        for group in range(g.bankgroups):
            when = at + group * t.tFAW + rank  # ranks in parallel, one command per clock
            schedule[when] = cmd(Opcode.G_ACT, bank=g.bank_index(rank, group, 0), row=PIM_ROW)
            last = max(last, when)
    return schedule, last + t.tRCDRD


def run_channel(config, schedule, total, backdoor=()):
    dut = ChannelDatapath(config, shared_bank_module=False)
    trace = []

    async def bench(ctx):
        for bank, addr, value in backdoor:
            ctx.set(dut.backdoor_en, 1)
            ctx.set(dut.backdoor_bank, bank)
            ctx.set(dut.backdoor_addr, addr)
            ctx.set(dut.backdoor_data, value)
            await ctx.tick()
        ctx.set(dut.backdoor_en, 0)
        for cycle in range(total):
            item = schedule.get(cycle, {})
            op = item.get("op")
            ctx.set(dut.cmd_valid, op is not None)
            ctx.set(dut.cmd.op, op if op is not None else Opcode.NOP)
            for name in ("rank", "bankgroup", "bank", "row", "column", "comps"):
                ctx.set(getattr(dut.cmd, name), item.get(name, 0))
            ctx.set(dut.wdata, item.get("wdata", 0))
            trace.append(dict(
                rdata=ctx.get(dut.rdata), rdata_valid=ctx.get(dut.rdata_valid),
                rdata_pim=ctx.get(dut.rdata_pim), error=ctx.get(dut.error),
                error_code=ctx.get(dut.error_code), error_cycle=ctx.get(dut.error_cycle),
                cycle=ctx.get(dut.cycle), pim_busy=ctx.get(dut.pim_busy)))
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-9)
    sim.add_testbench(bench)
    sim.run()
    return trace


def expected_results(config, rows, start, comps):
    g = config.geometry
    bank_rows = np.stack([rows[bank, PIM_ROW] for bank in range(g.banks)])
    vector = rows[GBUF_BANK, GBUF_ROW]
    result = golden_pim.gemv(bank_rows, vector, config.pim.lanes, start=start, comps=comps)
    return sum(int(v) << (16 * bank) for bank, v in enumerate(result))


def pim_reads(trace):
    return {c: s["rdata"] for c, s in enumerate(trace) if s["rdata_pim"]}


@pytest.mark.parametrize("comps,start", [(3, 0), (CONFIG.bus.comps_per_row, 0), (7, 5)])
def test_gemv_result(comps, start):
    config = CONFIG
    bus = config.bus
    assert start + comps <= bus.comps_per_row
    rows = make_storage(config, 10 + comps)
    schedule, at = pim_setup(config)
    schedule[at] = cmd(Opcode.PIM_GEMV, column=start, comps=comps)
    due = at + bus.readres_after_first_comp(comps) + bus.read_data
    assert due == at + bus.gemv_result(comps)
    trace = run_channel(config, schedule, due + 3, backdoor_writes(config, rows))
    want = expected_results(config, rows, start, comps)
    assert pim_reads(trace) == {due: want}, \
        f"READRES data of PIM_GEMV({comps}) at {at} expected exactly at {due}"
    assert [c for c, s in enumerate(trace) if s["rdata_valid"]] == [due]
    assert trace[at + 1]["pim_busy"] == 1 and trace[at + bus.gemv_busy(comps)]["pim_busy"] == 0
    assert trace[-1]["error"] == 0, f"unexpected error {trace[-1]['error_code']}"


def test_back_to_back_gemvs_and_direct_comps():
    """GEMVs issued every ``bus.gemv_busy(k)`` clocks (READRES clears the accumulators),
    then the same computation with explicit COMPs and a READRES."""
    config = CONFIG
    bus = config.bus
    rows = make_storage(config, 20)
    schedule, at = pim_setup(config)
    expects = {}
    for comps, start in [(4, 12), (CONFIG.bus.comps_per_row, 0), (9, 2), (1, 15)]:
        schedule[at] = cmd(Opcode.PIM_GEMV, column=start, comps=comps)
        expects[at + bus.gemv_result(comps)] = expected_results(config, rows, start, comps)
        at += bus.gemv_busy(comps)
    comps, start = 5, 6
    for i in range(comps):
        schedule[at + i * bus.comp_interval] = cmd(Opcode.COMP, column=start + i)
    readres = at + bus.readres_after_first_comp(comps)
    schedule[readres] = cmd(Opcode.READRES)
    expects[readres + bus.read_data] = expected_results(config, rows, start, comps)
    assert len(set(expects.values())) == len(expects)
    trace = run_channel(config, schedule, readres + bus.read_data + 3,
                        backdoor_writes(config, rows))
    got = pim_reads(trace)
    assert sorted(got) == sorted(expects), "READRES data at the wrong cycles"
    for cycle, want in expects.items():
        assert got[cycle] == want, f"result at {cycle}: {got[cycle]:#x} != golden {want:#x}"
    assert trace[-1]["error"] == 0, f"unexpected error {trace[-1]['error_code']}"


@pytest.mark.parametrize("second", [Opcode.PIM_GEMV, Opcode.COMP, Opcode.READRES])
def test_gemv_overlap(second):
    config = CONFIG
    bus = config.bus
    comps = 4
    schedule, at = pim_setup(config, gwrite=False)
    schedule[at] = cmd(Opcode.PIM_GEMV, column=0, comps=comps)
    clash = at + bus.readres_after_first_comp(comps) - 1   # the expansion is still running
    schedule[clash] = cmd(second, column=3, comps=2)
    trace = run_channel(config, schedule, clash + 3)
    assert trace[clash]["error"] == 0, f"error before the overlap: {trace[clash]['error_code']}"
    assert trace[clash + 1]["error"] == 1
    assert trace[clash + 1]["error_code"] == ChannelError.GEMV_OVERLAP
    assert trace[clash + 1]["error_cycle"] == trace[clash]["cycle"]
    assert trace[clash + 2]["error"] == 1, "error is sticky"


@pytest.mark.parametrize("comps,start", [(0, 0), (2, CONFIG.bus.comps_per_row - 1)])
def test_bad_gemv_is_flagged_and_not_run(comps, start):
    """PIM_GEMV with k = 0, or chunks past the end of the row: an error, no COMPs, no data."""
    schedule, at = pim_setup(CONFIG, gwrite=False)
    schedule[at] = cmd(Opcode.PIM_GEMV, column=start, comps=comps)
    trace = run_channel(CONFIG, schedule, at + CONFIG.bus.gemv_result(CONFIG.timing.comp_min_slots) + 3)
    assert trace[at + 1]["error"] == 1
    assert trace[at + 1]["error_code"] == ChannelError.BAD_GEMV
    assert not any(s["rdata_valid"] for s in trace), "a bad PIM_GEMV produced data"
    assert not any(s["pim_busy"] for s in trace), "a bad PIM_GEMV started the expander"


def test_read_data_latency():
    config = CONFIG
    t, bus, g = config.timing, config.bus, config.geometry
    rows = make_storage(config, 30)
    a, b = g.banks - 1, 1  # two banks in different bank groups
    assert g.bank_coords(a)[1] != g.bank_coords(b)[1]
    act_b = t.tRRD_L
    rd = act_b + t.tRCDRD
    ccd = bus.ccd(same_bankgroup=False)
    reads = {rd: (a, 3, 1), rd + ccd: (b, 0, 0), rd + 2 * ccd: (a, 3, 0)}
    schedule = {0: cmd(Opcode.ACT, bank=a, row=3), act_b: cmd(Opcode.ACT, bank=b, row=0)}
    for when, (bank, row, burst) in reads.items():
        schedule[when] = cmd(Opcode.RD, bank=bank, column=burst)
    end = rd + 2 * ccd + bus.read_data + 3
    trace = run_channel(config, schedule, end, backdoor_writes(config, rows))
    valid = [c for c, s in enumerate(trace) if s["rdata_valid"]]
    assert valid == [when + bus.read_data for when in reads], \
        f"RD data must appear exactly {bus.read_data} clocks after the RD"
    for when, (bank, row, burst) in reads.items():
        snap = trace[when + bus.read_data]
        assert snap["rdata_pim"] == 0
        assert snap["rdata"] == burst_value(config, rows[bank, row], burst), f"RD at {when}"
    assert trace[-1]["error"] == 0
