"""One Bank (rtl/dram/bank.py) on Amaranth's Python simulator, ``tiny`` preset, DUAL and
BLOCKED row-buffer modes.

Every expected cycle count comes from the config. Convention: the command of cycle c is
presented during cycle c and takes effect at the clock edge that ends it; "ready N after
a command at c" means the ready flag is 1 from cycle c + N on (and 0 from c + 1 to c + N - 1).
"""
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from amaranth.sim import Simulator  # noqa: E402

from rtl.config import RowBufferMode, preset  # noqa: E402
from rtl.dram import Bank, BankError  # noqa: E402
from rtl.dram.bank import BankReady  # noqa: E402
from rtl.isa import Opcode  # noqa: E402

MODES = ["dual", "blocked"]
READY = list(BankReady.members)
POSITION = 3  # the bank under test: not bank 0, so address decoding matters
NONE, STATE, TIMING, ROW_NOT_STORED = (BankError.NONE, BankError.STATE, BankError.TIMING,
                                       BankError.ROW_NOT_STORED)


def config_for(mode):
    return preset("tiny", mode=mode)


def coords(config, position=POSITION):
    return config.geometry.bank_coords(position)


def other_bank_same_group(config):
    rank, group, bank = coords(config)
    return rank, group, (bank + 1) % config.geometry.banks_per_group


def other_group(config):
    rank, group, bank = coords(config)
    return rank, (group + 1) % config.geometry.bankgroups, bank


def cmd(op, **fields):
    return dict(op=op, **fields)


def random_storage(config, seed):
    """One random burst per stored (row, burst) address: {address: value}."""
    rng = np.random.default_rng(seed)
    g = config.geometry
    nbytes = g.burst_bytes
    return {addr: int.from_bytes(rng.integers(0, 256, nbytes, dtype=np.uint8).tobytes(), "little")
            for addr in range(config.stored_rows * g.bursts_per_row)}


def address(config, row, burst):
    return row * config.geometry.bursts_per_row + burst


def run_bank(config, schedule, total, backdoor=None, position=POSITION, blocked=None):
    """Play ``schedule`` ({cycle: {"op", "row", "column", "wdata", "target", "comp",
    "readres", "comp_column"}}) for ``total`` cycles after loading ``backdoor``
    ({address: burst}). Returns one snapshot dict per cycle, read during that cycle.
    ``blocked``: drive the row-buffer mode input (default: its reset value, the
    configuration's mode)."""
    dut = Bank(config)
    home = coords(config, position)
    trace = []

    async def bench(ctx):
        ctx.set(dut.position, position)
        if blocked is not None:
            ctx.set(dut.blocked, blocked)
        for addr, value in (backdoor or {}).items():
            ctx.set(dut.backdoor_en, 1)
            ctx.set(dut.backdoor_addr, addr)
            ctx.set(dut.backdoor_data, value)
            await ctx.tick()
        ctx.set(dut.backdoor_en, 0)
        for cycle in range(total):
            item = schedule.get(cycle, {})
            op = item.get("op")
            rank, group, bank = item.get("target", home)
            ctx.set(dut.cmd_valid, op is not None)
            ctx.set(dut.cmd.op, op if op is not None else Opcode.NOP)
            ctx.set(dut.cmd.rank, rank)
            ctx.set(dut.cmd.bankgroup, group)
            ctx.set(dut.cmd.bank, bank)
            ctx.set(dut.cmd.row, item.get("row", 0))
            ctx.set(dut.cmd.column, item.get("column", 0))
            ctx.set(dut.wdata, item.get("wdata", 0))
            ctx.set(dut.comp, item.get("comp", 0))
            ctx.set(dut.readres, item.get("readres", 0))
            ctx.set(dut.comp_column, item.get("comp_column", 0))
            snap = {name: ctx.get(getattr(dut.ready, name)) for name in READY}
            snap.update(error=ctx.get(dut.error), rdata=ctx.get(dut.rdata),
                        gwrite_valid=ctx.get(dut.gwrite_valid),
                        gwrite_index=ctx.get(dut.gwrite_index),
                        mem_open=ctx.get(dut.mem_open), mem_row=ctx.get(dut.mem_row),
                        pim_open=ctx.get(dut.pim_open), pim_row=ctx.get(dut.pim_row))
            trace.append(snap)
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-9)
    sim.add_testbench(bench)
    sim.run()
    return trace


def expect_ready(trace, key, start, n, end=None):
    """``key`` is 0 on cycles start+1 .. start+n-1 and 1 on start+n .. end-1."""
    end = len(trace) if end is None else end
    got = [trace[c][key] for c in range(start + 1, end)]
    want = [int(c >= start + n) for c in range(start + 1, end)]
    assert got == want, (f"ready.{key} after the command at {start}: expected ready at "
                         f"{start + n}, got ready on cycles "
                         f"{[c for c in range(start + 1, end) if trace[c][key]]}")


def errors(trace):
    return {c: snap["error"] for c, snap in enumerate(trace) if snap["error"] != NONE}


# ---------------------------------------------------------------------------------------
# ready flags follow the per-bank timing
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_ready_after_act(mode):
    config = config_for(mode)
    t = config.timing
    trace = run_bank(config, {0: cmd(Opcode.ACT, row=2)}, t.tRAS + 4)
    assert trace[0]["act"] == 1 and trace[0]["pre"] == 1 and trace[0]["rd"] == 0
    expect_ready(trace, "rd", 0, t.tRCDRD)
    expect_ready(trace, "gwrite", 0, t.tRCDRD)
    expect_ready(trace, "wr", 0, t.tRCDWR)
    expect_ready(trace, "pre", 0, t.tRAS)
    assert all(s["mem_open"] == 1 and s["mem_row"] == 2 and s["act"] == 0 for s in trace[1:])
    assert errors(trace) == {}


@pytest.mark.parametrize("mode", MODES)
def test_ready_act_tRP_after_pre(mode):
    config = config_for(mode)
    t = config.timing
    pre_at = t.tRAS + 7  # late enough that tRP after PRE, not tRC after ACT, decides
    assert pre_at + t.tRP > t.tRC
    trace = run_bank(config, {0: cmd(Opcode.ACT, row=1), pre_at: cmd(Opcode.PRE)},
                     pre_at + t.tRP + 4)
    assert [s["act"] for s in trace[1:pre_at + 1]] == [0] * pre_at
    expect_ready(trace, "act", pre_at, t.tRP)
    assert trace[pre_at + 1]["mem_open"] == 0
    assert errors(trace) == {}


@pytest.mark.parametrize("mode", MODES)
def test_ready_act_tRC_after_act(mode):
    config = config_for(mode)
    t = config.timing
    assert 1 + t.tRP < t.tRC  # an early PRE leaves tRC (ACT->ACT) as the binding rule
    trace = run_bank(config, {0: cmd(Opcode.ACT, row=1), 1: cmd(Opcode.PRE)}, t.tRC + 4)
    assert errors(trace) == {1: TIMING}, "PRE before tRAS is a timing error"
    expect_ready(trace, "act", 1, t.tRC - 1)


@pytest.mark.parametrize("mode", MODES)
def test_ready_pim_side_after_gact(mode):
    config = config_for(mode)
    t = config.timing
    comp_at = t.tRAS + 2
    pim_pre_at = comp_at + t.tRTP + 1
    assert pim_pre_at + t.tRP > t.tRC
    schedule = {
        # G_ACT addresses a bank group: a different bank field still opens this bank.
        0: cmd(Opcode.G_ACT, row=1, target=other_bank_same_group(config)),
        comp_at: dict(comp=1, comp_column=3),
        pim_pre_at: cmd(Opcode.PIM_PRECHARGE),
    }
    trace = run_bank(config, schedule, pim_pre_at + t.tRP + 4)
    assert trace[1]["pim_open"] == 1 and trace[1]["pim_row"] == 1
    expect_ready(trace, "comp", 0, t.tRCDRD, end=pim_pre_at + 1)
    expect_ready(trace, "pim_pre", 0, t.tRAS, end=comp_at + 1)
    expect_ready(trace, "pim_pre", comp_at, t.tRTP, end=pim_pre_at + 1)  # COMP -> PIM_PRE
    assert all(s["gact"] == 0 for s in trace[1:pim_pre_at + 1])
    assert all(s["comp"] == 0 and s["pim_open"] == 0 for s in trace[pim_pre_at + 1:])
    expect_ready(trace, "gact", pim_pre_at, t.tRP)
    assert errors(trace) == {}


@pytest.mark.parametrize("mode", MODES)
def test_gact_other_group_ignored(mode):
    config = config_for(mode)
    t = config.timing
    trace = run_bank(config, {0: cmd(Opcode.G_ACT, row=1, target=other_group(config)),
                              1: cmd(Opcode.ACT, row=1, target=other_bank_same_group(config))},
                     t.tRCDRD + 2)
    assert all(s["pim_open"] == 0 and s["mem_open"] == 0 for s in trace)
    assert all(s["gact"] == 1 and s["act"] == 1 for s in trace)


@pytest.mark.parametrize("mode", MODES)
def test_pim_precharge_vs_act_spacing(mode):
    """BLOCKED: one row buffer, so PIM_PRECHARGE -> ACT is tRP and ACT waits for it;
    DUAL: the MEM buffer is free all along (for a row other than the PIM one)."""
    config = config_for(mode)
    t = config.timing
    pim_pre_at = t.tRAS + 5
    assert pim_pre_at + t.tRP > t.tRC
    trace = run_bank(config, {0: cmd(Opcode.G_ACT, row=1), pim_pre_at: cmd(Opcode.PIM_PRECHARGE)},
                     pim_pre_at + t.tRP + 4)
    if config.mode is RowBufferMode.DUAL:
        assert all(s["act"] == 1 for s in trace)
    else:
        assert all(s["act"] == 0 for s in trace[1:pim_pre_at + 1])
        expect_ready(trace, "act", pim_pre_at, t.tRP)


@pytest.mark.parametrize("mode", MODES)
def test_pre_vs_gact_spacing(mode):
    config = config_for(mode)
    t = config.timing
    pre_at = t.tRAS + 5
    trace = run_bank(config, {0: cmd(Opcode.ACT, row=2), pre_at: cmd(Opcode.PRE)},
                     pre_at + t.tRP + 4)
    if config.mode is RowBufferMode.DUAL:
        assert all(s["gact"] == 1 for s in trace)  # (NOP presents row 0 != the MEM row)
    else:
        assert all(s["gact"] == 0 for s in trace[1:pre_at + 1])
        expect_ready(trace, "gact", pre_at, t.tRP)


@pytest.mark.parametrize("mode", MODES)
def test_refresh(mode):
    config = config_for(mode)
    t = config.timing
    trace = run_bank(config, {0: cmd(Opcode.REF), t.tRFC + 2: cmd(Opcode.ACT, row=1),
                              t.tRFC + 3: cmd(Opcode.REF)}, t.tRFC + 5)
    assert trace[0]["ref"] == 1
    expect_ready(trace, "act", 0, t.tRFC, end=t.tRFC + 3)
    expect_ready(trace, "gact", 0, t.tRFC, end=t.tRFC + 3)
    assert errors(trace) == {t.tRFC + 3: STATE}, "REF with a row open"


# ---------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_commands_on_closed_bank(mode):
    config = config_for(mode)
    schedule = {0: cmd(Opcode.PRE), 1: cmd(Opcode.PIM_PRECHARGE),
                2: cmd(Opcode.RD), 4: cmd(Opcode.WR), 6: cmd(Opcode.GWRITE),
                8: cmd(Opcode.RD, target=other_bank_same_group(config)),
                9: cmd(Opcode.RD, target=other_group(config)),
                10: dict(readres=1), 12: dict(comp=1)}
    trace = run_bank(config, schedule, 14)
    # PRE/PIM_PRECHARGE of a closed buffer are harmless; RD/WR/GWRITE need an open row (and
    # the error is a one-cycle pulse); commands to other banks are not this bank's;
    # READRES/COMP strobes need an open PIM row.
    assert errors(trace) == {2: STATE, 4: STATE, 6: STATE, 10: STATE, 12: STATE}


@pytest.mark.parametrize("mode", MODES)
def test_access_too_early(mode):
    config = config_for(mode)
    t = config.timing
    schedule = {0: cmd(Opcode.ACT, row=3), 1: cmd(Opcode.WR, column=1),
                t.tRCDRD - 1: cmd(Opcode.RD), t.tRCDRD: cmd(Opcode.RD),
                t.tRCDRD + 2: cmd(Opcode.PRE)}
    trace = run_bank(config, schedule, t.tRCDRD + 4)
    assert errors(trace) == {1: TIMING, t.tRCDRD - 1: TIMING, t.tRCDRD + 2: TIMING}


@pytest.mark.parametrize("mode", MODES)
def test_comp_too_early(mode):
    config = config_for(mode)
    t = config.timing
    schedule = {0: cmd(Opcode.G_ACT, row=1), t.tRCDRD - 1: dict(comp=1),
                t.tRCDRD: dict(comp=1), t.tRCDRD + 2: dict(readres=1)}
    trace = run_bank(config, schedule, t.tRCDRD + 4)
    assert errors(trace) == {t.tRCDRD - 1: STATE}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("op", [Opcode.ACT, Opcode.G_ACT])
def test_row_not_stored(mode, op):
    config = config_for(mode)
    t, stored = config.timing, config.stored_rows
    close = Opcode.PRE if op is Opcode.ACT else Opcode.PIM_PRECHARGE
    rows = [(stored - 1, NONE), (stored, ROW_NOT_STORED),
            (config.geometry.rows - 1, ROW_NOT_STORED), (stored + 1, ROW_NOT_STORED), (0, NONE)]
    schedule, expected, at = {}, {}, 0
    for row, error in rows:
        schedule[at] = cmd(op, row=row)
        schedule[at + t.tRAS] = cmd(close)
        if error != NONE:
            expected[at] = error
        at += t.tRC
    trace = run_bank(config, schedule, at)
    assert errors(trace) == expected


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("first,second", [(Opcode.G_ACT, Opcode.ACT), (Opcode.ACT, Opcode.G_ACT)])
@pytest.mark.parametrize("same_row", [False, True])
def test_row_in_both_buffers(mode, first, second, same_row):
    """DUAL: ACT of row A while the PIM buffer holds row B is fine (and vice versa), even on
    the next clock; the same row in both is a STATE error. BLOCKED: any ACT/G_ACT while the
    other side holds the bank's only row buffer is a STATE error (tested after tRC, so
    that no timing counter is involved)."""
    config = config_for(mode)
    at = 1 if config.mode is RowBufferMode.DUAL else config.timing.tRC
    second_row = 1 if same_row else 2
    trace = run_bank(config, {0: cmd(first, row=1), at: cmd(second, row=second_row)}, at + 2)
    legal = config.mode is RowBufferMode.DUAL and not same_row
    assert errors(trace) == ({} if legal else {at: STATE})
    flag = "act" if second is Opcode.ACT else "gact"
    # the ready flag is the bank's state alone (no path from the command's row): in DUAL
    # mode it stays set, and the same-row conflict is caught as a STATE error
    assert trace[at][flag] == int(config.mode is RowBufferMode.DUAL)
    if legal:
        assert trace[at + 1]["mem_open"] == 1 and trace[at + 1]["pim_open"] == 1
        key = "mem_row" if second is Opcode.ACT else "pim_row"
        assert trace[at + 1][key] == second_row


@pytest.mark.parametrize("mode", MODES)
def test_row_buffer_mode_is_a_run_time_input(mode):
    """A bank built for either PIM mode behaves as the other when its ``blocked`` input
    says so: the same ready flags, states and errors, clock for clock, over a schedule
    that tells the modes apart (G_ACT, ACT of another row, both precharges, ACT again);
    and both modes elaborate to the same Verilog."""
    config = config_for(mode)
    other = config_for("blocked" if mode == "dual" else "dual")
    t = config.timing
    pim_pre = t.tRAS + 5
    schedule = {0: cmd(Opcode.G_ACT, row=1), 1: cmd(Opcode.ACT, row=2),
                pim_pre: cmd(Opcode.PIM_PRECHARGE), pim_pre + 1: cmd(Opcode.PRE),
                pim_pre + 2: cmd(Opcode.ACT, row=3)}
    total = pim_pre + t.tRC + 4
    as_other = run_bank(config, schedule, total, blocked=int(other.mode is RowBufferMode.BLOCKED))
    assert as_other == run_bank(other, schedule, total)
    assert as_other != run_bank(config, schedule, total)
    from sim.harness import to_verilog
    assert to_verilog(Bank(config), "b") == to_verilog(Bank(other), "b")


# ---------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_write_then_read(mode):
    config = config_for(mode)
    t, bus = config.timing, config.bus
    storage = random_storage(config, 1)
    x, y = (1 << 511) | 0x1234_5678_9ABC, (0xDEAD_BEEF << 300) | 0x55
    ccd = bus.ccd(same_bankgroup=True)
    wr1 = t.tRCDWR
    wr0 = wr1 + ccd
    rd1 = wr0 + bus.wr_to_rd(same_bankgroup=True)
    rd0 = rd1 + ccd
    pre = max(rd0 + bus.rd_to_pre, wr0 + bus.wr_to_pre, t.tRAS)
    act3 = max(pre + t.tRP, t.tRC)
    rd3 = act3 + t.tRCDRD
    pre3 = act3 + t.tRAS
    act2 = pre3 + t.tRC - t.tRAS
    rd2 = act2 + t.tRCDRD
    schedule = {0: cmd(Opcode.ACT, row=2), wr1: cmd(Opcode.WR, column=1, wdata=x),
                wr0: cmd(Opcode.WR, column=0, wdata=y), rd1: cmd(Opcode.RD, column=1),
                rd0: cmd(Opcode.RD, column=0), pre: cmd(Opcode.PRE),
                act3: cmd(Opcode.ACT, row=3), rd3: cmd(Opcode.RD, column=1), pre3: cmd(Opcode.PRE),
                act2: cmd(Opcode.ACT, row=2), rd2: cmd(Opcode.RD, column=1),
                rd2 + ccd: cmd(Opcode.RD, column=0)}
    trace = run_bank(config, schedule, rd2 + ccd + 2, backdoor=storage)
    assert errors(trace) == {}
    assert trace[rd1 + 1]["rdata"] == x, "RD returns the burst written to that column"
    assert trace[rd0 + 1]["rdata"] == y
    assert trace[rd3 + 1]["rdata"] == storage[address(config, 3, 1)], "other rows untouched"
    assert trace[rd2 + 1]["rdata"] == x, "written data survives PRE/ACT"
    assert trace[rd2 + ccd + 1]["rdata"] == y


@pytest.mark.parametrize("mode", MODES)
def test_backdoor_visible_to_read(mode):
    config = config_for(mode)
    t, bus, g = config.timing, config.bus, config.geometry
    storage = random_storage(config, 2)
    ccd = bus.ccd(same_bankgroup=True)
    schedule, reads, at = {}, {}, 0
    for row in (3, 0, 2, 1):
        schedule[at] = cmd(Opcode.ACT, row=row)
        for burst in range(g.bursts_per_row):
            rd = at + t.tRCDRD + ccd * burst
            schedule[rd] = cmd(Opcode.RD, column=burst)
            reads[rd] = storage[address(config, row, burst)]
        pre = max(at + t.tRAS, rd + bus.rd_to_pre)
        schedule[pre] = cmd(Opcode.PRE)
        at = max(pre + t.tRP, at + t.tRC)
    trace = run_bank(config, schedule, at, backdoor=storage)
    assert errors(trace) == {}
    for rd, want in reads.items():
        assert trace[rd + 1]["rdata"] == want, f"RD at {rd}"


@pytest.mark.parametrize("mode", MODES)
def test_gwrite_streams_open_row(mode):
    config = config_for(mode)
    t, bus, g = config.timing, config.bus, config.geometry
    storage = random_storage(config, 3)
    gw = t.tRCDRD
    assert gw + bus.gwrite_busy > t.tRAS
    end = gw + bus.gwrite_busy + 3
    trace = run_bank(config, {0: cmd(Opcode.ACT, row=3), gw: cmd(Opcode.GWRITE)}, end,
                     backdoor=storage)
    assert errors(trace) == {}
    beats = [(c, s["gwrite_index"], s["rdata"]) for c, s in enumerate(trace) if s["gwrite_valid"]]
    assert [index for _, index, _ in beats] == list(range(g.bursts_per_row)), \
        "every burst of the row exactly once, in order"
    first = beats[0][0]
    assert gw < first <= gw + 2
    assert [c for c, _, _ in beats] == list(range(first, first + g.bursts_per_row)), \
        "one burst per clock"
    for _, index, data in beats:
        assert data == storage[address(config, 3, index)]
    # The MEM path is busy for the whole GWRITE.
    expect_ready(trace, "rd", gw, bus.gwrite_busy)
    expect_ready(trace, "pre", gw, bus.gwrite_busy)
