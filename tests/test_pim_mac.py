"""PimMacUnit on Amaranth's Python simulator against the golden PIM model, bit for bit.

The unit multiplies ``lanes`` FP16 pairs, sums them with a pairwise FP32 tree and adds
the tree to an FP32 accumulator; READRES rounds the accumulator to FP16 and clears it.
The result must appear exactly ``PimMacUnit.latency_for(lanes)`` clocks after READRES.
"""
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from amaranth.sim import Simulator  # noqa: E402

from rtl.pim import PimMacUnit  # noqa: E402
from sim.golden import fp as golden_fp  # noqa: E402
from sim.golden import pim as golden_pim  # noqa: E402

LANES = [4, 16]


def pack(values) -> int:
    """Lane i of an FP16 vector in bits [16 i, 16 i + 16)."""
    return sum(int(v) << (16 * i) for i, v in enumerate(values))


def moderate16(rng, n):
    """FP16 values of mixed sign in [2^-7, 2^4): sums stay finite, rounding matters."""
    mags = rng.integers(0x2000, 0x4C00, n, dtype=np.uint16)
    return mags | (rng.integers(0, 2, n, dtype=np.uint16) << np.uint16(15))


def golden_result(pairs, lanes):
    """Golden FP16 result of one accumulation (a list of (a, b) lane vectors)."""
    acc = np.zeros(1, dtype=np.uint32)
    for a, b in pairs:
        acc = golden_pim.comp(acc, np.asarray(a, np.uint16).reshape(1, lanes),
                              np.asarray(b, np.uint16))
    return int(golden_fp.fp32_to_fp16(acc)[0])


def golden_tree(pairs, lanes):
    """The same via tree_sum directly (acc = acc + tree), as an independent check."""
    acc = np.zeros(1, dtype=np.uint32)
    for a, b in pairs:
        products = golden_fp.fp16_mul(np.asarray(a, np.uint16), np.asarray(b, np.uint16))
        acc = golden_fp.fp32_add(acc, golden_pim.tree_sum(products[None, :]))
    return int(golden_fp.fp32_to_fp16(acc)[0])


def run_schedule(lanes, schedule, total, **stages):
    """``schedule``: {cycle: ("comp", a, b) | ("readres",)}. Returns, for every cycle,
    (result_valid, result) as seen in that cycle. ``stages``: PimMacUnit's pipeline."""
    dut = PimMacUnit(lanes, **stages)
    trace = []

    async def bench(ctx):
        for cycle in range(total):
            item = schedule.get(cycle)
            is_comp = item is not None and item[0] == "comp"
            ctx.set(dut.comp, is_comp)
            ctx.set(dut.readres, item is not None and item[0] == "readres")
            if is_comp:
                ctx.set(dut.a, pack(item[1]))
                ctx.set(dut.b, pack(item[2]))
            else:  # garbage on the operands while not computing must not matter
                ctx.set(dut.a, (0x3C00 * 0x10001 * cycle) & ((1 << 16 * lanes) - 1))
                ctx.set(dut.b, 0x4000 << (16 * (cycle % lanes)))
            trace.append((ctx.get(dut.result_valid), ctx.get(dut.result)))
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-9)
    sim.add_testbench(bench)
    sim.run()
    return trace


def build(rng, lanes, groups, start=2, spacing=1, gap=1, values=moderate16):
    """Accumulations of ``groups[i]`` COMPs each, COMPs ``spacing`` apart, READRES ``gap``
    after the last COMP, the next accumulation starting the cycle after READRES.
    Returns (schedule, [(readres cycle, expected FP16)], last cycle)."""
    schedule, expects, cycle = {}, [], start
    for count in groups:
        pairs = [(values(rng, lanes), values(rng, lanes)) for _ in range(count)]
        for i, (a, b) in enumerate(pairs):
            schedule[cycle] = ("comp", a, b)
            cycle += spacing if i < count - 1 else gap
        schedule[cycle] = ("readres",)
        expected = golden_result(pairs, lanes)
        assert expected == golden_tree(pairs, lanes)
        expects.append((cycle, expected))
        cycle += 1
    return schedule, expects, cycle


def check(lanes, schedule, expects, last, **stages):
    latency = PimMacUnit.latency_for(lanes, **stages)
    trace = run_schedule(lanes, schedule, last + latency + 3, **stages)
    valid_cycles = [c for c, (v, _) in enumerate(trace) if v]
    assert valid_cycles == [c + latency for c, _ in expects], \
        f"result_valid must follow each READRES by exactly {latency} clocks"
    for c, want in expects:
        got = trace[c + latency][1]
        assert got == want, f"READRES @{c}: got {got:#06x}, golden {want:#06x}"


def test_latency_formula():
    # Products register, one register per tree level (log2 lanes), accumulator/result.
    for lanes in (1, 2, 4, 8, 16, 32):
        assert PimMacUnit.latency_for(lanes) == 1 + (lanes.bit_length() - 1) + 1
    unit = PimMacUnit(8)
    unit._MustUse__silence = True  # built only to read an attribute, never elaborated
    assert unit.latency == PimMacUnit.latency_for(8)


@pytest.mark.parametrize("lanes", LANES)
def test_comps_then_readres(lanes):
    rng = np.random.default_rng(100 + lanes)
    schedule, expects, last = build(rng, lanes, [7])
    check(lanes, schedule, expects, last)


@pytest.mark.parametrize("lanes", LANES)
def test_back_to_back_accumulations(lanes):
    """READRES clears: each accumulation is independent of the one before, even when the
    next COMP follows READRES on the very next clock; a READRES with no COMP gives +0."""
    rng = np.random.default_rng(200 + lanes)
    schedule, expects, last = build(rng, lanes, [5, 3, 1, 0, 4])
    assert expects[3][1] == 0x0000
    assert len({e for _, e in expects}) >= 4, "test data should give distinct results"
    check(lanes, schedule, expects, last)


@pytest.mark.parametrize("lanes", LANES)
def test_comps_every_two_clocks(lanes):
    """The hardware's cadence: one COMP every 2 clocks, READRES one interval after the
    last COMP (max(k, 6) slots after the first), back to back."""
    rng = np.random.default_rng(300 + lanes)
    schedule, expects, last = build(rng, lanes, [8, 6, 2], spacing=2, gap=2)
    check(lanes, schedule, expects, last)


@pytest.mark.parametrize("lanes", LANES)
def test_readres_long_after_last_comp(lanes):
    rng = np.random.default_rng(400 + lanes)
    schedule, expects, last = build(rng, lanes, [3, 2], spacing=3, gap=9)
    check(lanes, schedule, expects, last)


@pytest.mark.parametrize("lanes", LANES)
def test_special_values(lanes):
    """Operands from the golden model's mixed distribution (uniform bit patterns incl.
    Inf/NaN, subnormals, ordinary values)."""
    rng = np.random.default_rng(500 + lanes)
    schedule, expects, last = build(rng, lanes, [1, 1, 2, 1, 3],
                                    values=golden_fp.random16)
    check(lanes, schedule, expects, last)


# -- the pipelined unit (PimUnit.mul_stages / add_stages / acc_stages, the ``fpga`` preset) --

PIPELINES = [dict(mul_stages=3, add_stages=5, acc_stages=5, round_stages=2),     # fpga
             dict(mul_stages=1, add_stages=3, acc_stages=2, round_stages=1),
             dict(mul_stages=4, add_stages=6, acc_stages=6, round_stages=2)]


def test_pipelined_latency_formula():
    from rtl.config import PimUnit
    for lanes in (1, 2, 4, 16):
        for stages in PIPELINES:
            latency = PimMacUnit.latency_for(lanes, **stages)
            assert latency == (stages["mul_stages"] + (lanes.bit_length() - 1)
                               * stages["add_stages"] + stages["acc_stages"]
                               + stages["round_stages"] - 1)
            assert latency == PimUnit(lanes=lanes, **stages).mac_latency


@pytest.mark.parametrize("stages", PIPELINES, ids=lambda s: "-".join(map(str, s.values())))
def test_pipelined_accumulations(stages):
    """COMPs ``acc_stages`` apart, READRES on the clock after the last COMP, the next
    accumulation on the clock after READRES; READRES with no COMP; special values.
    Bit for bit against the golden model, the result exactly latency_for clocks after
    READRES."""
    lanes, spacing = 4, stages["acc_stages"]
    rng = np.random.default_rng(600 + spacing)
    schedule, expects, last = build(rng, lanes, [5, 1, 0, 3, 2], spacing=spacing, gap=1)
    assert len({e for _, e in expects}) >= 4
    check(lanes, schedule, expects, last, **stages)
    schedule, expects, last = build(rng, lanes, [1, 2, 1, 3], spacing=spacing + 1, gap=5,
                                    values=golden_fp.random16)
    check(lanes, schedule, expects, last, **stages)


def test_pipelined_sixteen_lanes():
    stages = PIPELINES[0]
    rng = np.random.default_rng(700)
    schedule, expects, last = build(rng, 16, [4, 2], spacing=stages["acc_stages"], gap=1)
    check(16, schedule, expects, last, **stages)


def test_pipelined_timing_only_has_the_same_strobe_pipeline():
    """datapath False: result_valid on the same clock as the full unit's."""
    stages = PIPELINES[0]
    dut = PimMacUnit(4, datapath=False, **stages)
    seen = []

    async def bench(ctx):
        for cycle in range(30):
            ctx.set(dut.readres, cycle == 3)
            seen.append(ctx.get(dut.result_valid))
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-9)
    sim.add_testbench(bench)
    sim.run()
    assert [c for c, v in enumerate(seen) if v] == [3 + PimMacUnit.latency_for(4, **stages)]


def test_pipeline_checked_against_dram_timing():
    """A 5-clock accumulator needs COMPs 5 clocks apart (tiny: 2), and the result must
    be ready RL + BL/2 after READRES: ConfigError naming the field, when the
    configuration is made."""
    import dataclasses

    from rtl.config import ConfigError, preset
    from rtl.config.pim import check_pim_timing
    from rtl.dram.bank import Bank
    fpga = preset("fpga")
    check_pim_timing(fpga)
    p = fpga.pim
    assert Bank.result_latency(fpga) == 1 + PimMacUnit.latency_for(
        4, p.add_stages, p.acc_stages, p.mul_stages, p.round_stages) == fpga.bus.read_data
    with pytest.raises(ConfigError, match="PimUnit.acc_stages") as error:
        fpga.replace(timing=preset("tiny").timing)
    assert "tCCD_S" in str(error.value)
    with pytest.raises(ConfigError, match="PimUnit.add_stages") as error:
        fpga.replace(pim=dataclasses.replace(fpga.pim, add_stages=6))
    assert "CL" in str(error.value)
    with pytest.raises(ConfigError, match="PimUnit.mul_stages"):
        dataclasses.replace(fpga.pim, mul_stages=5)
