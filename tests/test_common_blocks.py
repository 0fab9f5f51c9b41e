"""Unit tests of the small shared blocks (rtl/common) on Amaranth's Python simulator.

Convention: "cycle c" is the clock period after the c-th clock edge. A testbench sets the
inputs of cycle c, reads the combinational outputs of cycle c, then ticks to cycle c + 1.
"""
import gc
import random
import sys
import warnings
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from amaranth.sim import Simulator  # noqa: E402

from rtl.common import DelayLine, TimingCounter, TraceRecorder  # noqa: E402


def simulate(dut, bench, clocked=True):
    sim = Simulator(dut)
    if clocked:
        sim.add_clock(1e-9)
    sim.add_testbench(bench)
    sim.run()


# ---------------------------------------------------------------------------------------
# TimingCounter
# ---------------------------------------------------------------------------------------

def run_counter(max_cycles, loads, total):
    """Drive ``loads`` ({cycle: N}) and return ``ready`` of every cycle 0 .. total-1."""
    dut = TimingCounter(max_cycles)
    trace = []

    async def bench(ctx):
        for cycle in range(total):
            n = loads.get(cycle)
            ctx.set(dut.load, n is not None)
            ctx.set(dut.cycles, n or 0)
            trace.append(ctx.get(dut.ready))
            await ctx.tick()

    simulate(dut, bench)
    return trace


def expected_ready(loads, total):
    """The documented rule: a load of N on cycle t forbids the operation until t + N."""
    return [int(all(c >= t + n for t, n in loads.items() if t < c)) for c in range(total)]


@pytest.mark.parametrize("n", [2, 3, 14, 48])
def test_counter_ready_exactly_n_after_load(n):
    start = 3
    trace = run_counter(64, {start: n}, start + n + 4)
    assert trace[:start + 1] == [1] * (start + 1), "idle counter (and the load cycle) is ready"
    assert trace[start + 1:start + n] == [0] * (n - 1), "not ready before N cycles"
    assert trace[start + n:] == [1] * 4, "ready exactly N cycles after the load, and stays"


def test_counter_shorter_load_never_shortens():
    # 20 at cycle 0; 5 at cycle 4 (would end at 9) must not shorten the wait to 20.
    loads = {0: 20, 4: 5, 10: 1, 19: 1}
    trace = run_counter(32, loads, 26)
    assert trace.index(1, 1) == 20
    assert trace == expected_ready(loads, 26)


def test_counter_longer_load_extends():
    # 10 at cycle 0, then 12 at cycle 5: ready at 17, not at 10.
    loads = {0: 10, 5: 12}
    trace = run_counter(16, loads, 22)
    assert trace[10] == 0 and trace[16] == 0 and trace[17] == 1
    assert trace == expected_ready(loads, 22)


def test_counter_loads_of_one():
    # A load of 1 allows the operation on the very next cycle, every cycle.
    loads = {c: 1 for c in range(2, 12)}
    trace = run_counter(8, loads, 14)
    assert trace == [1] * 14
    # A load of 1 in the last cycle of a wait does not extend it; one just after 2 ends.
    loads = {0: 3, 2: 1, 5: 2}
    trace = run_counter(8, loads, 9)
    assert trace == [1, 0, 0, 1, 1, 1, 0, 1, 1]
    assert trace == expected_ready(loads, 9)


def test_counter_random_against_model():
    rng = random.Random(7)
    loads = {}
    for cycle in range(300):
        if rng.random() < 0.15:
            loads[cycle] = rng.randint(1, 40)
    trace = run_counter(40, loads, 300)
    assert trace == expected_ready(loads, 300)


# ---------------------------------------------------------------------------------------
# DelayLine
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("latency", [0, 1, 3, 15])
def test_delay_line(latency):
    width, total = 12, 60
    rng = random.Random(latency)
    data = [rng.randrange(1 << width) for _ in range(total)]
    valid = [rng.randrange(2) for _ in range(total)]
    dut = DelayLine(width, latency)
    out = []

    async def bench(ctx):
        for cycle in range(total):
            ctx.set(dut.i_data, data[cycle])
            ctx.set(dut.i_valid, valid[cycle])
            out.append((ctx.get(dut.o_data), ctx.get(dut.o_valid)))
            if latency:
                await ctx.tick()
            else:  # a wire: no clock domain at all
                await ctx.delay(1e-9)

    simulate(dut, bench, clocked=latency > 0)
    for cycle, (o_data, o_valid) in enumerate(out):
        if cycle < latency:
            assert (o_data, o_valid) == (0, 0), f"cycle {cycle}: pipeline not empty at reset"
        else:
            assert (o_data, o_valid) == (data[cycle - latency], valid[cycle - latency]), cycle


def test_delay_line_rejects_negative_latency():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the half-built component is never elaborated
        with pytest.raises(ValueError):
            DelayLine(8, -1)
        gc.collect()


# ---------------------------------------------------------------------------------------
# TraceRecorder
# ---------------------------------------------------------------------------------------

PAYLOAD_BITS, DEPTH, CYCLE_BITS = 10, 4, 16


async def read_entries(ctx, dut, count):
    entries = []
    for addr in range(count):
        ctx.set(dut.read_addr, addr)
        await ctx.tick()
        entries.append((ctx.get(dut.read_cycle), ctx.get(dut.read_payload)))
    return entries


async def record(ctx, dut, cycle_value, payload):
    ctx.set(dut.valid, 1)
    ctx.set(dut.cycle, cycle_value)
    ctx.set(dut.payload, payload)
    await ctx.tick()
    ctx.set(dut.valid, 0)


def test_recorder_records_cycle_and_payload():
    dut = TraceRecorder(PAYLOAD_BITS, DEPTH, CYCLE_BITS)
    log = {}

    async def bench(ctx):
        counts = []
        for cycle in range(10):
            ctx.set(dut.cycle, 1000 + cycle)
            ctx.set(dut.payload, (37 * cycle + 5) % (1 << PAYLOAD_BITS))
            ctx.set(dut.valid, cycle in (1, 2, 6))
            await ctx.tick()
            counts.append(ctx.get(dut.count))
        ctx.set(dut.valid, 0)
        log["counts"] = counts
        log["entries"] = await read_entries(ctx, dut, 3)
        log["overflow"] = ctx.get(dut.overflow)

    simulate(dut, bench)
    assert log["counts"] == [0, 1, 2, 2, 2, 2, 3, 3, 3, 3]
    assert log["entries"] == [(1000 + c, (37 * c + 5) % (1 << PAYLOAD_BITS)) for c in (1, 2, 6)]
    assert log["overflow"] == 0


def test_recorder_overflow_and_clear():
    dut = TraceRecorder(PAYLOAD_BITS, DEPTH, CYCLE_BITS)
    log = {}

    async def bench(ctx):
        for i in range(DEPTH):
            await record(ctx, dut, 10 + i, 100 + i)
        log["full"] = (ctx.get(dut.count), ctx.get(dut.overflow))
        await record(ctx, dut, 99, 999)          # lost
        await record(ctx, dut, 98, 998)          # lost
        log["over"] = (ctx.get(dut.count), ctx.get(dut.overflow))
        await ctx.tick()
        log["sticky"] = ctx.get(dut.overflow)
        log["kept"] = await read_entries(ctx, dut, DEPTH)
        ctx.set(dut.clear, 1)
        await ctx.tick()
        ctx.set(dut.clear, 0)
        log["cleared"] = (ctx.get(dut.count), ctx.get(dut.overflow))
        await record(ctx, dut, 500, 55)
        log["after"] = ctx.get(dut.count)
        log["new"] = await read_entries(ctx, dut, 2)

    simulate(dut, bench)
    assert log["full"] == (DEPTH, 0), "filling exactly to depth is not an overflow"
    assert log["over"] == (DEPTH, 1), "count saturates at depth, overflow is raised"
    assert log["sticky"] == 1
    assert log["kept"] == [(10 + i, 100 + i) for i in range(DEPTH)], "lost entries overwrote"
    assert log["cleared"] == (0, 0)
    assert log["after"] == 1
    assert log["new"] == [(500, 55), (11, 101)], "after clear, recording restarts at entry 0"


def test_recorder_read_latency_one_clock():
    dut = TraceRecorder(PAYLOAD_BITS, DEPTH, CYCLE_BITS)
    log = {}

    async def bench(ctx):
        await record(ctx, dut, 7, 70)
        await record(ctx, dut, 8, 80)
        ctx.set(dut.read_addr, 0)
        await ctx.tick()
        log["entry0"] = (ctx.get(dut.read_cycle), ctx.get(dut.read_payload))
        ctx.set(dut.read_addr, 1)
        log["same_cycle"] = (ctx.get(dut.read_cycle), ctx.get(dut.read_payload))
        await ctx.tick()
        log["next_cycle"] = (ctx.get(dut.read_cycle), ctx.get(dut.read_payload))

    simulate(dut, bench)
    assert log["entry0"] == (7, 70)
    assert log["same_cycle"] == (7, 70), "read port must not be combinational"
    assert log["next_cycle"] == (8, 80), "read data follows the address one clock later"
