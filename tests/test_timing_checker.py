"""Unit tests of the independent DRAM/PIM timing checker (cocotb_tests/timing_checker.py).

Every cycle is computed from the config (timing table, bus timing, geometry): legal
sequences must pass; for every rule family, the illegal command one cycle too early
must raise that family and the same command one cycle later must pass.
"""
import dataclasses
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rtl.config import preset  # noqa: E402
from rtl.isa.dram import Command, Opcode  # noqa: E402
from cocotb_tests.timing_checker import (  # noqa: E402
    TimingChecker, TimingViolation, format_command, parse_command_log)

ACT, RD, WR, PRE, REF = Opcode.ACT, Opcode.RD, Opcode.WR, Opcode.PRE, Opcode.REF
GWRITE, G_ACT, COMP, READRES = Opcode.GWRITE, Opcode.G_ACT, Opcode.COMP, Opcode.READRES
PIM_GEMV, PIM_PRE, NOP = Opcode.PIM_GEMV, Opcode.PIM_PRECHARGE, Opcode.NOP

PRESETS = ["neupims", "small", "tiny"]
MODES = ["dual", "blocked"]


def c(op, cycle, r=0, g=0, b=0, row=0, col=0, k=0):
    return Command(op, rank=r, bankgroup=g, bank=b, row=row, column=col, comps=k, cycle=cycle)


def run(cfg, cmds):
    checker = TimingChecker(cfg)
    for cmd in cmds:
        checker.check(cmd)
    return checker


def expect(cfg, prefix, bad, rule, earlier=None):
    """The prefix passes, ``bad`` raises ``rule``; the message names both commands."""
    checker = run(cfg, prefix)
    with pytest.raises(TimingViolation) as info:
        checker.check(bad)
    v = info.value
    assert v.rule == rule, str(v)
    assert v.later == bad
    msg = str(v)
    assert msg.startswith(rule + ":"), msg
    assert str(bad) in msg, msg
    if earlier is not None:
        assert v.earlier == earlier, msg
    if v.earlier is not None:
        assert str(v.earlier) in msg, msg
    return v


def boundary(cfg, prefix, bad, rule, earlier=None):
    """``bad`` violates ``rule`` and the same command one cycle later passes."""
    v = expect(cfg, prefix, bad, rule, earlier)
    run(cfg, list(prefix) + [bad.at(bad.cycle + 1)])
    return v


def row_set(cfg, start, row=5, ranks=None):
    """G_ACTs of every bank group of every rank (ranks in parallel, one cycle apart),
    paced tFAW in a rank; returns (commands sorted by cycle, first legal COMP cycle)."""
    g, t = cfg.geometry, cfg.timing
    ranks = range(g.ranks) if ranks is None else ranks
    cmds = [c(G_ACT, start + bg * t.tFAW + i, r=r, g=bg, row=row)
            for i, r in enumerate(ranks) for bg in range(g.bankgroups)]
    cmds.sort(key=lambda x: x.cycle)
    return cmds, cmds[-1].cycle + t.tRCDRD


def pim_precharges(cfg, start):
    g = cfg.geometry
    return [c(PIM_PRE, start + i, r=r, g=bg, b=b)
            for i, (r, bg, b) in enumerate(g.bank_coords(n) for n in range(g.banks))]


def gemv_sequence(cfg, k_tile, start=0):
    """ACT, GWRITE, PRE, a full row set of G_ACTs, PIM_GEMV per tile, all PIM_PRECHARGEs,
    REF: a legal full-channel GEMV; returns (commands, cycle of the REF)."""
    t, bus = cfg.timing, cfg.bus
    act = c(ACT, start, row=1)
    gw = c(GWRITE, act.cycle + t.tRCDRD)
    pre = c(PRE, max(act.cycle + t.tRAS, gw.cycle + bus.gwrite_busy))
    gacts, ready = row_set(cfg, pre.cycle + t.tRP, row=5)
    cmds = [act, gw, pre] + gacts
    tiles = bus.comps_per_row // k_tile
    cycle = ready
    for i in range(tiles):
        cmds.append(c(PIM_GEMV, cycle, col=i * k_tile, k=k_tile))
        last_gemv = cycle
        cycle += bus.gemv_busy(k_tile)
    last_comp = last_gemv + bus.comp_interval * (k_tile - 1)
    readres = last_gemv + bus.readres_after_first_comp(k_tile)
    p0 = max(gacts[-1].cycle + t.tRAS, last_comp + t.tRTP, readres + t.tRTP)
    pres = pim_precharges(cfg, p0)
    ref = c(REF, pres[-1].cycle + t.tRP)
    cmds += pres + [ref]
    return cmds, ref.cycle


def normal_traffic(cfg, start=0):
    """ACT to one bank per (rank, bank group), RDs, WRs, RDs round robin, PREs, REF."""
    g, t, bus = cfg.geometry, cfg.timing, cfg.bus
    step = max(t.tRRD_L, -(-t.tFAW // 4) + 1)
    targets = [(r, bg, bg % g.banks_per_group) for bg in range(g.bankgroups)
               for r in range(g.ranks)]
    cmds = [c(ACT, start + i * step, r=r, g=bg, b=b, row=3 + i)
            for i, (r, bg, b) in enumerate(targets)]
    cycle = cmds[-1].cycle + t.tRCDWR
    gap = max(bus.rank_switch, bus.ccd(True))
    rounds = [(RD, 0), (WR, bus.rd_to_wr), (RD, bus.wr_to_rd(True))]
    for op, turn in rounds:
        cycle += turn
        for i, (r, bg, b) in enumerate(targets * 2):
            cmds.append(c(op, cycle, r=r, g=bg, b=b, col=i % g.bursts_per_row))
            cycle += gap
        cycle -= gap
    last = cycle
    p0 = max(last + max(bus.wr_to_pre, bus.rd_to_pre), cmds[len(targets) - 1].cycle + t.tRAS)
    pres = [c(PRE, p0 + i, r=r, g=bg, b=b) for i, (r, bg, b) in enumerate(targets)]
    cmds += pres + [c(REF, pres[-1].cycle + t.tRP)]
    return cmds, cmds[-1].cycle


@pytest.fixture
def cfg():
    return preset("neupims")


@pytest.fixture(params=[(n, m) for n in PRESETS for m in MODES], ids=lambda p: "-".join(p))
def anycfg(request):
    """Every preset in DUAL and BLOCKED mode (tests using rank 0, bank groups / banks 0-1)."""
    name, mode = request.param
    return preset(name, mode=mode)


# --------------------------------------------------------------------- legal sequences
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", PRESETS)
def test_gemv_sequence_legal(name, mode):
    cfg = preset(name, mode=mode)
    for k in (1, 4, cfg.bus.comps_per_row // 2, cfg.bus.comps_per_row):
        cmds, end = gemv_sequence(cfg, k)
        checker = run(cfg, cmds + [c(ACT, end + cfg.timing.tRFC, row=2)])
        checker.finish(end + cfg.timing.tREFI)
        assert checker.counts[PIM_GEMV] == cfg.bus.comps_per_row // k
        assert checker.counts[G_ACT] == cfg.geometry.ranks * cfg.geometry.bankgroups
        assert checker.counts[PIM_PRE] == cfg.geometry.banks


@pytest.mark.parametrize("mode", MODES + ["dram"])
@pytest.mark.parametrize("name", PRESETS)
def test_normal_traffic_legal(name, mode):
    cfg = preset(name, mode=mode)
    cmds, end = normal_traffic(cfg)
    checker = run(cfg, cmds)
    checker.finish(end)
    banks = cfg.geometry.ranks * cfg.geometry.bankgroups
    assert checker.counts[RD] == 4 * banks and checker.counts[WR] == 2 * banks
    assert sum(checker.counts.values()) == len(cmds)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", PRESETS)
def test_repeated_blocks_with_refresh(name, mode):
    """Back-to-back GEMV blocks (each ends with a REF) and normal traffic blocks; NOPs."""
    cfg = preset(name, mode=mode)
    checker = TimingChecker(cfg)
    start = 0
    for i in range(6):
        cmds, end = gemv_sequence(cfg, 8 if cfg.bus.comps_per_row >= 8 else 1, start) \
            if i % 2 == 0 else normal_traffic(cfg, start)
        for cmd in cmds:
            checker.check(cmd)
        checker.check(c(NOP, end))        # ignored: does not occupy the bus
        start = end + cfg.timing.tRFC
    checker.finish(start)


def test_refresh_sequence(cfg):
    t = cfg.timing
    limit = t.tREFI + t.refresh_max_late
    act = c(ACT, 0, row=7)
    rd = c(RD, t.tRCDRD)
    pre = c(PRE, t.tRAS)
    ref1 = c(REF, limit)                  # exactly at the deadline
    act2 = c(ACT, ref1.cycle + t.tRFC, row=7)
    pre2 = c(PRE, act2.cycle + t.tRAS)
    ref2 = c(REF, ref1.cycle + limit)
    ref3 = c(REF, ref2.cycle + t.tRFC)    # REF -> REF >= tRFC
    checker = run(cfg, [act, rd, pre, ref1, act2, pre2, ref2, ref3])
    checker.finish(ref3.cycle + limit)
    assert checker.counts[REF] == 3


def test_dual_mode_reads_during_gemv(cfg):
    """Normal reads of another row run while PIM_GEMVs execute (dual row buffers), with
    data bursts kept away from the READRES bursts (tRTRS: READRES is its own rank)."""
    t, bus = cfg.timing, cfg.bus
    act = c(ACT, 0, r=1, g=1, b=1, row=9)
    gacts, ready = row_set(cfg, t.tFAW)
    k = 8
    gemvs = [c(PIM_GEMV, ready + i * bus.gemv_busy(k), col=i * k, k=k) for i in range(4)]
    readres = [gv.cycle + bus.readres_after_first_comp(k) for gv in gemvs]
    busy = {gv.cycle for gv in gemvs} | {x.cycle for x in gacts}
    rds, x = [], ready
    while x < gemvs[-1].cycle + bus.gemv_busy(k):
        if x not in busy and all(abs(x - rr) >= bus.rank_switch for rr in readres):
            rds.append(c(RD, x, r=1, g=1, b=1, col=len(rds) % cfg.geometry.bursts_per_row))
            x += bus.ccd(True)
        else:
            x += 1
    assert len(rds) > 20
    cmds = sorted([act] + gacts + gemvs + rds, key=lambda y: y.cycle)
    run(cfg, cmds)
    # and a read whose data touches a READRES burst is caught
    bad = c(RD, readres[0] - bus.rank_switch + 1, r=1, g=1, b=1)
    prefix = [x for x in cmds if x.cycle < bad.cycle]
    if bad.cycle not in busy:
        v = expect(cfg, prefix, bad, "tRTRS")
        assert "expanded from" in str(v) and v.source == gemvs[0]


def test_pre_and_pim_precharge_of_closed_buffer_are_noops(cfg):
    t = cfg.timing
    run(cfg, [c(PRE, 0), c(PIM_PRE, 1), c(REF, 2), c(ACT, 2 + t.tRFC)])


def test_many_commands_fast():
    cfg = preset("neupims")
    checker = TimingChecker(cfg)
    start, n = 0, 0
    begin = time.perf_counter()
    while n < 20000:
        cmds, end = gemv_sequence(cfg, 4, start) if n % 2 else normal_traffic(cfg, start)
        for cmd in cmds:
            checker.check(cmd)
        n += len(cmds)
        start = end + cfg.timing.tRFC
    assert time.perf_counter() - begin < 3


# --------------------------------------------------------------------- bus / order / address
def test_bus(cfg):
    act = c(ACT, 5)
    boundary(cfg, [act], c(ACT, 5, r=1, row=1), "bus", act)


def test_bus_gemv_expansion_does_not_occupy_bus(cfg):
    act = c(ACT, 0, r=1, g=1, b=1, row=9)
    gacts, ready = row_set(cfg, cfg.timing.tFAW)
    gemv = c(PIM_GEMV, ready, k=8)
    run(cfg, [act] + gacts + [gemv, c(RD, ready + cfg.bus.comp_interval, r=1, g=1, b=1)])


def test_order(cfg):
    act = c(ACT, 5)
    expect(cfg, [act], c(ACT, 4, r=1), "order", act)


def test_address(cfg):
    g = cfg.geometry
    expect(cfg, [], c(ACT, 0, r=g.ranks), "address")
    expect(cfg, [], c(ACT, 0, b=g.banks_per_group), "address")
    expect(cfg, [], c(ACT, 0, row=g.rows), "address")
    expect(cfg, [c(ACT, 0)], c(RD, cfg.timing.tRCDRD, col=g.bursts_per_row), "address")
    gacts, ready = row_set(cfg, 0)
    expect(cfg, gacts, c(PIM_GEMV, ready, col=1, k=cfg.bus.comps_per_row), "address")
    expect(cfg, gacts, c(PIM_GEMV, ready, k=0), "address")
    with pytest.raises(ValueError):
        TimingChecker(cfg).check(c(ACT, -1))


# --------------------------------------------------------------------- state
def test_state_mem(cfg):
    act = c(ACT, 0, row=3)
    expect(cfg, [act], c(ACT, 200, row=4), "state", act)
    for op in (RD, WR, GWRITE):
        expect(cfg, [], c(op, 100), "state")
        expect(cfg, [act, c(PRE, 100)], c(op, 200), "state")


def test_state_dual_same_row(cfg):
    gact = c(G_ACT, 0, g=0, row=5)
    expect(cfg, [gact], c(ACT, 100, b=2, row=5), "state", gact)
    run(cfg, [gact, c(ACT, 100, b=2, row=6)])             # another row: fine in DUAL mode
    act = c(ACT, 0, b=3, row=5)
    expect(cfg, [act], c(G_ACT, 100, row=5), "state", act)
    run(cfg, [act, c(G_ACT, 100, row=6)])
    expect(cfg, [gact], c(G_ACT, 100, row=6), "state", gact)


def test_state_pim_needs_all_banks_open(cfg):
    for op in (COMP, READRES, PIM_GEMV):
        bad = c(op, 200, k=1 if op is PIM_GEMV else 0)
        expect(cfg, [], bad, "state")
        gacts, ready = row_set(cfg, 0)
        expect(cfg, gacts[:-1], bad.at(ready + 100), "state")
        pres = [c(PIM_PRE, ready + cfg.timing.tRAS, r=1, g=cfg.geometry.bankgroups - 1, b=1)]
        expect(cfg, gacts + pres, bad.at(pres[0].cycle + 50), "state")
        run(cfg, gacts + [bad.at(ready)])


def test_state_ref_needs_all_closed(cfg):
    act = c(ACT, 0, r=1, g=1, b=1)
    expect(cfg, [act], c(REF, 300), "state", act)
    gact = c(G_ACT, 0, g=1)
    expect(cfg, [gact], c(REF, 300), "state", gact)


def test_state_blocked_mode():
    cfg = preset("neupims", mode="blocked")
    act = c(ACT, 0, b=1, row=1)
    expect(cfg, [act], c(G_ACT, 200, row=5), "state", act)
    gact = c(G_ACT, 0, row=5)
    expect(cfg, [gact], c(ACT, 200, b=1, row=1), "state", gact)
    run(cfg, [gact, c(ACT, 200, g=1, row=1)])             # other bank group: fine


@pytest.mark.parametrize("op", [G_ACT, COMP, READRES, PIM_GEMV, PIM_PRE, GWRITE])
def test_state_dram_mode_forbids_pim(op):
    cfg = preset("neupims", mode="dram")
    expect(cfg, [c(ACT, 0)], c(op, 100, k=1), "state")


# --------------------------------------------------------------------- tRCD / tRAS / tRP / tRC
def test_tRCD(anycfg):
    cfg = anycfg
    t = cfg.timing
    act = c(ACT, 0)
    boundary(cfg, [act], c(RD, t.tRCDRD - 1), "tRCD", act)
    boundary(cfg, [act], c(WR, t.tRCDWR - 1), "tRCD", act)
    boundary(cfg, [act], c(GWRITE, t.tRCDRD - 1), "tRCD", act)
    gacts, ready = row_set(cfg, 0)
    boundary(cfg, gacts, c(COMP, ready - 1), "tRCD", gacts[-1])
    boundary(cfg, gacts, c(PIM_GEMV, ready - 1, k=4), "tRCD", gacts[-1])


def test_tRAS(anycfg):
    cfg = anycfg
    t = cfg.timing
    act = c(ACT, 0)
    boundary(cfg, [act], c(PRE, t.tRAS - 1), "tRAS", act)
    gact = c(G_ACT, 0, g=1)
    boundary(cfg, [gact], c(PIM_PRE, t.tRAS - 1, g=1, b=1), "tRAS", gact)


def test_tRP(anycfg):
    cfg = anycfg
    t = cfg.timing
    act, pre = c(ACT, 0), c(PRE, t.tRAS + 6)
    boundary(cfg, [act, pre], c(ACT, pre.cycle + t.tRP - 1), "tRP", pre)
    gact = c(G_ACT, 0)
    pres = [c(PIM_PRE, t.tRAS + 10 + b, b=b) for b in range(cfg.geometry.banks_per_group)]
    boundary(cfg, [gact] + pres, c(G_ACT, pres[-1].cycle + t.tRP - 1, row=2), "tRP", pres[-1])
    boundary(cfg, [act, pre], c(REF, pre.cycle + t.tRP - 1), "tRP", pre)
    boundary(cfg, [gact] + pres, c(REF, pres[-1].cycle + t.tRP - 1), "tRP", pres[-1])


def test_tRP_blocked_crosses_buffers():
    cfg = preset("neupims", mode="blocked")
    t = cfg.timing
    act, pre = c(ACT, 0), c(PRE, t.tRAS + 6)
    boundary(cfg, [act, pre], c(G_ACT, pre.cycle + t.tRP - 1, row=2), "tRP", pre)
    gact = c(G_ACT, 0)
    pres = [c(PIM_PRE, t.tRAS + 6 + b, b=b) for b in range(cfg.geometry.banks_per_group)]
    last = pres[-1]
    boundary(cfg, [gact] + pres, c(ACT, last.cycle + t.tRP - 1, b=last.bank), "tRP", last)
    # DUAL mode: no such constraint
    dual = preset("neupims")
    run(dual, [act, pre, c(G_ACT, pre.cycle + 1, row=2)])


def test_tRC(anycfg):
    cfg = anycfg
    t = cfg.timing
    act = c(ACT, 0)
    boundary(cfg, [act, c(PRE, t.tRAS)], c(ACT, t.tRC - 1), "tRC", act)
    gact = c(G_ACT, 0)
    pres = [c(PIM_PRE, t.tRAS + b, b=b) for b in range(cfg.geometry.banks_per_group)]
    expect(cfg, [gact] + pres, c(G_ACT, t.tRC - 1), "tRC", gact)


# --------------------------------------------------------------------- tRTP / tWR / tWTR / tRTW
def test_tRTP(anycfg):
    cfg = anycfg
    t, bus = cfg.timing, cfg.bus
    act, rd = c(ACT, 0), c(RD, t.tRAS + 6)
    boundary(cfg, [act, rd], c(PRE, rd.cycle + bus.rd_to_pre - 1), "tRTP", rd)
    gacts, ready = row_set(cfg, 0)
    comp = c(COMP, ready + t.tRAS)
    boundary(cfg, gacts + [comp], c(PIM_PRE, comp.cycle + t.tRTP - 1, g=1, b=1), "tRTP", comp)
    rr = c(READRES, comp.cycle + bus.readres_after_first_comp(1))
    boundary(cfg, gacts + [comp, rr], c(PIM_PRE, rr.cycle + t.tRTP - 1), "tRTP", rr)


def test_tRTP_pim_precharge_during_gemv_expansion(cfg):
    t, bus = cfg.timing, cfg.bus
    gacts, ready = row_set(cfg, 0)
    k = 8
    gemv = c(PIM_GEMV, ready + t.tRAS, k=k)
    last_comp = gemv.cycle + bus.comp_interval * (k - 1)
    v = expect(cfg, gacts + [gemv], c(PIM_PRE, last_comp + t.tRTP - 1, b=3), "tRTP")
    assert v.earlier == c(COMP, last_comp, col=k - 1) and v.source == gemv
    assert "expanded from" in str(v) and str(gemv) in str(v)
    readres = gemv.cycle + bus.readres_after_first_comp(k)
    boundary(cfg, gacts + [gemv], c(PIM_PRE, readres + t.tRTP - 1, b=3), "tRTP")


def test_tWR(anycfg):
    cfg = anycfg
    t, bus = cfg.timing, cfg.bus
    act, wr = c(ACT, 0), c(WR, t.tRAS)
    boundary(cfg, [act, wr], c(PRE, wr.cycle + bus.wr_to_pre - 1), "tWR", wr)


def test_tWTR(anycfg):
    cfg = anycfg
    t, bus = cfg.timing, cfg.bus
    act, wr = c(ACT, 0), c(WR, t.tRCDWR)
    boundary(cfg, [act, wr], c(RD, wr.cycle + bus.wr_to_rd(True) - 1, col=1), "tWTR", wr)
    act2 = c(ACT, t.tRRD_S, g=1)
    wr = c(WR, t.tRCDWR + t.tRRD_S)
    boundary(cfg, [act, act2, wr], c(RD, wr.cycle + bus.wr_to_rd(False) - 1, g=1), "tWTR", wr)


def test_tRTW(cfg):
    t, bus = cfg.timing, cfg.bus
    act, rd = c(ACT, 0), c(RD, t.tRCDRD)
    boundary(cfg, [act, rd], c(WR, rd.cycle + bus.rd_to_wr - 1), "tRTW", rd)
    act1 = c(ACT, 1, r=1)                                   # other rank: same turnaround
    boundary(cfg, [act, act1, rd], c(WR, rd.cycle + bus.rd_to_wr - 1, r=1), "tRTW", rd)
    # READRES -> WR
    gacts, ready = row_set(cfg, t.tFAW)
    rr = c(READRES, ready)
    boundary(cfg, [act] + gacts + [rr], c(WR, rr.cycle + bus.rd_to_wr - 1), "tRTW", rr)


def test_tRTW_after_gemv_readres(cfg):
    t, bus = cfg.timing, cfg.bus
    act = c(ACT, 0)
    gacts, ready = row_set(cfg, t.tFAW)
    k = 4
    gemv = c(PIM_GEMV, ready, k=k)
    readres = gemv.cycle + bus.readres_after_first_comp(k)
    v = boundary(cfg, [act] + gacts + [gemv], c(WR, readres + bus.rd_to_wr - 1), "tRTW")
    assert v.earlier == c(READRES, readres) and v.source == gemv


def test_tCCD(anycfg):
    cfg = anycfg
    t, bus = cfg.timing, cfg.bus
    act, rd = c(ACT, 0), c(RD, t.tRCDRD)
    boundary(cfg, [act, rd], c(RD, rd.cycle + bus.ccd(True) - 1, col=1), "tCCD", rd)
    wr = c(WR, t.tRCDWR)
    boundary(cfg, [act, wr], c(WR, wr.cycle + bus.ccd(True) - 1, col=1), "tCCD", wr)
    act2 = c(ACT, t.tRRD_S, g=1)
    rd = c(RD, t.tRRD_S + t.tRCDRD)
    boundary(cfg, [act, act2, rd], c(RD, rd.cycle + bus.ccd(False) - 1, g=1), "tCCD", rd)


# --------------------------------------------------------------------- data bus
def test_tRTRS(cfg):
    t, bus = cfg.timing, cfg.bus
    act0, act1 = c(ACT, 0), c(ACT, 1, r=1)
    rd = c(RD, 1 + t.tRCDRD)
    boundary(cfg, [act0, act1, rd], c(RD, rd.cycle + bus.rank_switch - 1, r=1), "tRTRS", rd)
    wr = c(WR, 1 + t.tRCDWR)
    boundary(cfg, [act0, act1, wr], c(WR, wr.cycle + bus.rank_switch - 1, r=1), "tRTRS", wr)
    # READRES data is a rank of its own
    gacts, ready = row_set(cfg, t.tFAW)
    rr = c(READRES, ready)
    boundary(cfg, [act0] + gacts + [rr], c(RD, rr.cycle + bus.rank_switch - 1), "tRTRS", rr)


def test_data_bus(cfg):
    t, bus = cfg.timing, cfg.bus
    gacts, ready = row_set(cfg, 0)
    rr = c(READRES, ready)
    boundary(cfg, gacts + [rr], c(READRES, ready + bus.burst - 1), "data-bus", rr)
    # without a rank-switch gap, bursts of two ranks may touch but not overlap
    cfg0 = cfg.replace(timing=dataclasses.replace(cfg.timing, tRTRS=0))
    act0, act1 = c(ACT, 0), c(ACT, 1, r=1)
    rd = c(RD, 1 + t.tRCDRD)
    boundary(cfg0, [act0, act1, rd], c(RD, rd.cycle + bus.burst - 1, r=1), "data-bus", rd)
    # a WR whose data lands on a READRES of a PIM_GEMV still pending
    k = 1
    gacts, ready = row_set(cfg, t.tFAW)
    gemv = c(PIM_GEMV, ready, k=k)
    readres = gemv.cycle + bus.readres_after_first_comp(k)
    v = expect(cfg, [act0] + gacts + [gemv], c(RD, readres), "data-bus")
    assert v.earlier == c(READRES, readres) and v.source == gemv


# --------------------------------------------------------------------- activation rate
def test_tRRD(cfg):
    t = cfg.timing
    act = c(ACT, 0)
    boundary(cfg, [act], c(ACT, t.tRRD_L - 1, b=1), "tRRD", act)
    boundary(cfg, [act], c(ACT, t.tRRD_S - 1, g=1), "tRRD", act)
    run(cfg, [act, c(ACT, 1, r=1)])                          # other rank: no tRRD
    # ACT <-> G_ACT: on "tiny" (G_ACT weighs 2) so that tFAW does not interfere
    tiny = preset("tiny")
    tt = tiny.timing
    gact = c(G_ACT, 0, g=1, row=5)
    boundary(tiny, [gact], c(ACT, tt.tRRD_L - 1, g=1, b=1, row=6), "tRRD", gact)
    boundary(tiny, [gact], c(ACT, tt.tRRD_S - 1, g=0, row=6), "tRRD", gact)
    boundary(tiny, [act], c(G_ACT, tt.tRRD_L - 1, row=6), "tRRD", act)
    boundary(tiny, [act], c(G_ACT, tt.tRRD_S - 1, g=1, row=6), "tRRD", act)


def test_tRRD_blocked_same_bank_group_is_tRC():
    cfg = preset("neupims", mode="blocked")
    t = cfg.timing
    act = c(ACT, 0, b=1)
    boundary(cfg, [act, c(PRE, t.tRAS, b=1)], c(G_ACT, t.tRC - 1, row=6), "tRRD", act)
    gact = c(G_ACT, 0, row=5)
    pres = [c(PIM_PRE, t.tRAS + b, b=b) for b in range(cfg.geometry.banks_per_group)]
    boundary(cfg, [gact] + pres, c(ACT, t.tRC - 1, b=0, row=6), "tRRD", gact)


def test_tRRD_gact_gact_other_bank_group():
    cfg = preset("tiny")                   # 2 banks per group: two G_ACTs fit one tFAW
    t = cfg.timing
    gact = c(G_ACT, 0, row=5)
    boundary(cfg, [gact], c(G_ACT, t.tRRD_S - 1, g=1, row=5), "tRRD", gact)


def test_tFAW(cfg):
    t = cfg.timing
    acts = [c(ACT, i * t.tRRD_S, g=i) for i in range(4)]
    boundary(cfg, acts, c(ACT, t.tFAW - 1, b=1), "tFAW", acts[0])
    gact = c(G_ACT, 0, row=5)
    boundary(cfg, [gact], c(G_ACT, t.tFAW - 1, g=1, row=5), "tFAW", gact)
    run(cfg, [gact, c(G_ACT, 1, r=1, row=5)])               # tFAW is per rank
    act = c(ACT, 0, row=1)
    boundary(cfg, [act], c(G_ACT, t.tFAW - 1, g=1, row=5), "tFAW", act)


def test_tFAW_mixed_weights():
    """ACT weighs 1, G_ACT banks_per_group (2 here): the activations that must leave the
    window before the next one fits are found."""
    cfg = preset("small")
    t = cfg.timing
    a0, a1 = c(ACT, 0, row=1), c(ACT, t.tRRD_S, g=1, row=1)
    g0 = c(G_ACT, max(t.tRRD_L, a1.cycle + t.tRRD_S), g=0, row=5)       # 1 + 1 + 2 = 4
    boundary(cfg, [a0, a1, g0], c(ACT, t.tFAW - 1, g=1, b=1, row=2), "tFAW", a0)
    boundary(cfg, [a0, a1, g0], c(G_ACT, a1.cycle + t.tFAW - 1, g=1, row=5), "tFAW", a1)


def test_tRFC(anycfg):
    cfg = anycfg
    t = cfg.timing
    ref = c(REF, 0)
    boundary(cfg, [ref], c(ACT, t.tRFC - 1), "tRFC", ref)
    boundary(cfg, [ref], c(G_ACT, t.tRFC - 1), "tRFC", ref)
    boundary(cfg, [ref], c(REF, t.tRFC - 1), "tRFC", ref)


@pytest.mark.parametrize("rate", [1, 2, 4])
def test_tREFI(anycfg, rate):
    """The deadline follows the configured refresh rate: tREFI // rate + refresh_max_late."""
    cfg = anycfg.replace(refresh_rate=rate)
    t = cfg.timing
    limit = t.tREFI // rate + t.refresh_max_late
    v = expect(cfg, [], c(ACT, limit + 1), "tREFI")
    assert v.earlier is None
    run(cfg, [c(ACT, limit)])
    expect(cfg, [], c(REF, limit + 1), "tREFI")
    run(cfg, [c(REF, limit)])
    ref = c(REF, 100)
    expect(cfg, [ref], c(ACT, ref.cycle + limit + 1), "tREFI", ref)
    run(cfg, [ref, c(REF, ref.cycle + limit)])
    # finish
    checker = run(cfg, [ref])
    checker.finish(ref.cycle + limit)
    with pytest.raises(TimingViolation) as info:
        checker.finish(ref.cycle + limit + 1)
    assert info.value.rule == "tREFI" and info.value.earlier == ref and str(ref) in str(info.value)
    with pytest.raises(TimingViolation):
        TimingChecker(cfg).finish(limit + 1)
    TimingChecker(cfg).finish(limit)


# --------------------------------------------------------------------- PIM rules
def test_comp_rules(anycfg):
    cfg = anycfg
    bus = cfg.bus
    ci = bus.comp_interval
    gacts, ready = row_set(cfg, 0)
    comp = c(COMP, ready)
    boundary(cfg, gacts + [comp], c(COMP, ready + ci - 1, col=1), "COMP", comp)
    # READRES after the first COMP of the accumulation
    boundary(cfg, gacts + [comp], c(READRES, ready + bus.readres_after_first_comp(1) - 1),
             "COMP", comp)
    n = cfg.timing.comp_min_slots + 2
    comps = [c(COMP, ready + i * ci, col=i) for i in range(n)]
    boundary(cfg, gacts + comps, c(READRES, comps[-1].cycle + ci - 1), "COMP", comps[-1])
    # COMP after READRES
    rr = c(READRES, ready + bus.readres_after_first_comp(1))
    boundary(cfg, gacts + [comp, rr], c(COMP, rr.cycle + ci - 1), "COMP", rr)


@pytest.mark.parametrize("k", [1, 6, 8])
def test_comp_gemv_busy(cfg, k):
    bus = cfg.bus
    gacts, ready = row_set(cfg, 0)
    gemv = c(PIM_GEMV, ready, k=k)
    busy = bus.gemv_busy(k)
    boundary(cfg, gacts + [gemv], c(PIM_GEMV, ready + busy - 1, col=k, k=k), "COMP", gemv)
    boundary(cfg, gacts + [gemv], c(COMP, ready + busy - 1), "COMP", gemv)
    boundary(cfg, gacts + [gemv], c(READRES, ready + busy - 1), "COMP", gemv)


def test_gwrite_rules(cfg):
    t, bus = cfg.timing, cfg.bus
    busy = bus.gwrite_busy
    act, act_b = c(ACT, 0), c(ACT, t.tRRD_S, g=1, b=1, row=4)
    gw = c(GWRITE, t.tRCDRD + t.tRRD_S)
    pre = [act, act_b, gw]
    end = gw.cycle + busy
    boundary(cfg, pre, c(GWRITE, end - 1, g=1, b=1), "GWRITE", gw)
    boundary(cfg, pre, c(RD, end - 1), "GWRITE", gw)
    boundary(cfg, pre, c(WR, end - 1), "GWRITE", gw)
    boundary(cfg, pre, c(PRE, end - 1), "GWRITE", gw)
    run(cfg, pre + [c(RD, gw.cycle + 1, g=1, b=1)])           # other bank: fine
    boundary(cfg, pre, c(G_ACT, end - 1, g=2, row=5), "GWRITE", gw)
    run(cfg, pre + [c(G_ACT, gw.cycle + 1, r=1, row=5)])     # other rank: fine
    boundary(cfg, pre, c(PIM_PRE, end - 1, g=3), "GWRITE", gw)


def test_gwrite_blocks_all_bank_pim(cfg):
    t, bus = cfg.timing, cfg.bus
    gacts, ready = row_set(cfg, 0)
    act = c(ACT, gacts[-1].cycle + t.tFAW, g=1, b=1, row=9)
    gw = c(GWRITE, act.cycle + t.tRCDRD, g=1, b=1)
    end = gw.cycle + bus.gwrite_busy
    prefix = gacts + [act, gw]
    boundary(cfg, prefix, c(COMP, end - 1), "GWRITE", gw)
    boundary(cfg, prefix, c(READRES, end - 1), "GWRITE", gw)
    boundary(cfg, prefix, c(PIM_GEMV, end - 1, k=2), "GWRITE", gw)


def test_gwrite_waits_for_pending_comps(cfg):
    t, bus = cfg.timing, cfg.bus
    act = c(ACT, 0, g=1, b=1, row=9)
    gacts, ready = row_set(cfg, t.tFAW)
    k = 8
    gemv = c(PIM_GEMV, ready, k=k)
    last = gemv.cycle + bus.comp_interval * (k - 1)
    v = boundary(cfg, [act] + gacts + [gemv], c(GWRITE, last + bus.comp_interval - 1, g=1, b=1),
                 "GWRITE")
    assert v.earlier == c(COMP, last, col=k - 1) and v.source == gemv
    comp = c(COMP, ready)
    boundary(cfg, [act] + gacts + [comp], c(GWRITE, ready + bus.comp_interval - 1, g=1, b=1),
             "GWRITE", comp)


# --------------------------------------------------------------------- command logs
def test_log_round_trip(cfg):
    cmds, _ = gemv_sequence(cfg, 8)
    cmds += [c(NOP, cmds[-1].cycle + 1), c(COMP, 7, col=3)]
    text = "\n".join(format_command(x) for x in cmds)
    assert parse_command_log(text.splitlines()) == cmds
    assert parse_command_log(text) == cmds
    assert format_command(c(PIM_GEMV, 12, col=4, k=8)) == "12 PIM_GEMV 0 0 0 0 4 8"
    assert format_command(c(ACT, 3, r=1, g=2, b=3, row=77)) == "3 ACT 1 2 3 77 0"
    lines = ["# header", "", "0 ACT 0 0 0 5 0  # comment", f"{cfg.timing.tRCDRD} rd 0 0 0 0 1"]
    assert parse_command_log(lines) == [c(ACT, 0, row=5), c(RD, cfg.timing.tRCDRD, col=1)]
    checker = run(cfg, parse_command_log(text.splitlines()[:-1]))
    assert checker.counts[PIM_GEMV] == cfg.bus.comps_per_row // 8


@pytest.mark.parametrize("bad", [
    "0 ACT 0 0 0 5",                    # too few fields
    "0 ACT 0 0 0 5 0 1 2",              # too many
    "0 FOO 0 0 0 5 0",                  # unknown command
    "x ACT 0 0 0 5 0",                  # not an integer
    "0 ACT 0 0 0 5 1.5",
    "0 ACT 0 -1 0 5 0",                 # negative
])
def test_log_bad_lines(bad):
    with pytest.raises(ValueError, match=r"line 3\b"):
        parse_command_log(["0 ACT 0 0 0 1 0", "# fine", bad, "100 PRE 0 0 0 0 0"])
