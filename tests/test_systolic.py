"""The weight-stationary systolic array on Amaranth's simulator: GEMMs bit-exact against
``sim.golden.gemm`` (K and N tiled, padding), back-pressure without loss, the documented
latency, the preload rules and the counters; and the golden model itself."""
import dataclasses

import numpy as np
import pytest
from amaranth.sim import Simulator

from rtl.config import NpuConfig, preset
from rtl.npu.systolic import (PE_MODULE, TO_FP16_MODULE, SystolicArray, activation_layout,
                              result_layout, weight_layout)
from sim.golden.fp import fp16_mul, fp32_add, fp32_to_fp16, random16
from sim.golden.gemm import (GemmStreamDriver, array_pass, error_bound, gemm, pack_payload,
                             plan_gemm, unpack_payload)
from sim.harness import to_verilog

SIZES = [(2, 2), (4, 3)]


def config_for(rows, cols):
    return preset("small", npu=NpuConfig(arrays=1, array_rows=rows, array_cols=cols,
                                         vector_lanes=4))


def layouts(config):
    return weight_layout(config), activation_layout(config), result_layout(config)


def moderate16(rng, shape):
    """Finite FP16 values of mixed sign and magnitude: sums stay finite, rounding matters."""
    return (rng.standard_normal(shape) * 2.0 ** rng.integers(-6, 4, shape)).astype(np.float16).view(np.uint16)


def moderate32(rng, shape):
    return (rng.standard_normal(shape) * 4).astype(np.float32).view(np.uint32)


def run_plans(config, plans, seed=0, ready_rate=1.0, valid_rate=1.0):
    """Drive ``plans`` one after the other through one SystolicArray; return the drivers
    and the counters at the end."""
    dut = SystolicArray(config)
    rng = np.random.default_rng(seed)
    drivers = [GemmStreamDriver(plan, layouts(config), rng, valid_rate) for plan in plans]
    counters = {}

    async def bench(ctx):
        cycle = 0
        for drv in drivers:
            drv.cycle = cycle
            while not drv.done:
                w, a = drv.offer()
                ctx.set(dut.weights.valid, w is not None)
                if w is not None:
                    ctx.set(dut.weights.payload.as_value(), w)
                ctx.set(dut.activations.valid, a is not None)
                if a is not None:
                    ctx.set(dut.activations.payload.as_value(), a)
                ready = bool(ready_rate >= 1 or rng.random() < ready_rate)
                ctx.set(dut.results.ready, ready)
                w_fire = w is not None and ctx.get(dut.weights.ready)
                a_fire = a is not None and ctx.get(dut.activations.ready)
                result = (ctx.get(dut.results.payload.as_value())
                          if ready and ctx.get(dut.results.valid) else None)
                await ctx.tick()
                drv.commit(w_fire, a_fire, result)
                cycle += 1
                assert cycle < 20000, "the array stopped making progress"
        ctx.set(dut.weights.valid, 0)
        ctx.set(dut.activations.valid, 0)
        await ctx.tick()
        counters["busy_cycles"] = ctx.get(dut.busy_cycles)
        counters["macs"] = ctx.get(dut.macs)
        counters["cycles"] = cycle

    sim = Simulator(dut)
    sim.add_clock(1e-9)
    sim.add_testbench(bench)
    sim.run()
    return drivers, counters


def check_outputs(driver, a, b, rows, cols, psum=None):
    fp32, fp16 = driver.outputs()
    want32, want16 = gemm(a, b, rows, cols, psum)
    bad = np.argwhere(fp32 != want32)
    assert not len(bad), (f"{len(bad)} FP32 mismatches, first at {tuple(bad[0])}: "
                          f"{fp32[tuple(bad[0])]:#010x} vs golden {want32[tuple(bad[0])]:#010x}")
    assert np.array_equal(fp16, want16), "FP16 results differ from the golden"
    for got32, got16 in zip(driver.results, driver.results16):
        assert np.array_equal(got16, fp32_to_fp16(got32)), "FP16 output is not the rounded FP32"


@pytest.mark.parametrize("rows,cols", SIZES)
def test_random_gemms_bit_exact(rows, cols):
    """Shapes that are not multiples of the array (K and N tiled, padded), with and without
    incoming partial sums, several GEMMs through one array."""
    check_random_gemms(config_for(rows, cols), [])


def check_random_gemms(config, more_shapes, **run):
    """Random GEMMs of shapes that are not multiples of the array (and ``more_shapes``: (M,
    K, N, with partial sums)) through one array: bit-exact, and the MACs counted."""
    rows, cols = config.npu.array_rows, config.npu.array_cols
    rng = np.random.default_rng(rows * 10 + cols)
    shapes = [(3, 2 * rows + 1, cols + 1, False), (5, rows - 1 or 1, 2 * cols, True),
              (1, 3 * rows, cols - 1 or 1, True), (4, rows, cols, False)] + more_shapes
    cases, plans = [], []
    for m, k, n, with_psum in shapes:
        a, b = moderate16(rng, (m, k)), moderate16(rng, (k, n))
        psum = moderate32(rng, (m, n)) if with_psum else None
        cases.append((a, b, psum))
        plans.append(plan_gemm(a, b, rows, cols, psum))
    drivers, counters = run_plans(config, plans, **run)
    for drv, (a, b, psum) in zip(drivers, cases):
        check_outputs(drv, a, b, rows, cols, psum)
    assert counters["macs"] == rows * cols * sum(p.activation_rows for p in plans)


def test_special_values_bit_exact():
    """Zeros of both signs, subnormals, infinities, NaN (canonical NaN out), overflow."""
    rows, cols = 4, 3
    rng = np.random.default_rng(7)
    a, b = random16(rng, 6 * 9).reshape(6, 9), random16(rng, 9 * 5).reshape(9, 5)
    psum = np.where(rng.random((6, 5)) < 0.3, np.uint32(0x80000000),
                    moderate32(rng, (6, 5))).astype(np.uint32)
    plan = plan_gemm(a, b, rows, cols, psum)
    (drv,), _ = run_plans(config_for(rows, cols), [plan])
    check_outputs(drv, a, b, rows, cols, psum)


def test_back_pressure_without_loss():
    """Random results.ready and random gaps on the inputs: every row comes back, in order,
    bit-exact."""
    rows, cols = 4, 3
    rng = np.random.default_rng(11)
    a, b = moderate16(rng, (9, 7)), moderate16(rng, (7, 5))
    plan = plan_gemm(a, b, rows, cols)
    (drv,), counters = run_plans(config_for(rows, cols), [plan], seed=3, ready_rate=0.45,
                                 valid_rate=0.8)
    check_outputs(drv, a, b, rows, cols)
    assert len(drv.result_cycles) == plan.activation_rows
    assert counters["macs"] == rows * cols * plan.activation_rows


def test_chained_passes_under_heavy_back_pressure():
    """results.ready mostly low: results of a pass are still coming back when the next
    pass (chained through the partial sums) starts; row m must carry result m."""
    rows, cols = 2, 2
    rng = np.random.default_rng(13)
    cases = [(moderate16(rng, (m, 7)), moderate16(rng, (7, 3))) for m in (8, 1)]
    drivers, _ = run_plans(config_for(rows, cols), [plan_gemm(a, b, rows, cols) for a, b in cases],
                           seed=4, ready_rate=0.15)
    for drv, (a, b) in zip(drivers, cases):
        check_outputs(drv, a, b, rows, cols)


@pytest.mark.parametrize("rows,cols", SIZES)
def test_latency_and_counters(rows, cols):
    """One row alone, then M rows back to back with results.ready high: result r is valid
    exactly LATENCY = H + W - 1 clocks after row r was accepted; busy = M + LATENCY; the
    pass ends at the reference model's H + W - 2 + max(M, 4) for M >= 4."""
    config = config_for(rows, cols)
    latency = SystolicArray.latency_for(rows, cols)
    assert latency == rows + cols - 1
    rng = np.random.default_rng(5)
    for m in (1, 6):
        a, b = moderate16(rng, (m, rows)), moderate16(rng, (rows, cols))
        plan = plan_gemm(a, b, rows, cols)
        (drv,), counters = run_plans(config, [plan])
        check_outputs(drv, a, b, rows, cols)
        assert [r - c for c, r in zip(drv.accept_cycles, drv.result_cycles)] == [latency] * m
        assert np.all(np.diff(drv.accept_cycles) == 1), "rows must be accepted one per clock"
        assert drv.accept_cycles[0] == rows, "a preload takes H clocks"
        assert counters["busy_cycles"] == m + latency
        assert counters["macs"] == m * rows * cols
        span = drv.result_cycles[-1] - drv.accept_cycles[0]
        assert span == rows + cols - 2 + m
        if m >= 4:
            assert span == config.npu.tile_latency(m)


def test_preload_and_handshake_rules():
    """weights.ready is low while a row is inside the PEs; activations.ready is low during
    a partial preload and while weights.valid is high; no path from results.ready to
    activations.ready or weights.ready; the array holds while results.ready is low."""
    rows, cols = 2, 2
    config = config_for(rows, cols)
    dut = SystolicArray(config)
    wl, al, _ = layouts(config)
    one = np.full(cols, 0x3C00, np.uint16)   # 1.0
    row = pack_payload(al, {"values": np.array([0x4000, 0x4200], np.uint16), "last": 1})

    async def bench(ctx):
        ctx.set(dut.results.ready, 1)
        ctx.set(dut.weights.payload.as_value(), pack_payload(wl, {"values": one}))
        ctx.set(dut.weights.valid, 1)
        assert ctx.get(dut.weights.ready)
        await ctx.tick()                            # weight row 0
        ctx.set(dut.activations.payload.as_value(), row)
        ctx.set(dut.activations.valid, 1)
        ctx.set(dut.weights.valid, 0)
        assert not ctx.get(dut.activations.ready), "accepted a row during a partial preload"
        ctx.set(dut.weights.valid, 1)
        await ctx.tick()                            # weight row 1: preload complete
        ctx.set(dut.weights.valid, 0)
        assert ctx.get(dut.activations.ready)
        await ctx.tick()                            # row accepted
        ctx.set(dut.weights.valid, 1)               # the next preload waits for the drain
        assert not ctx.get(dut.activations.ready), "a waiting preload must block activations"
        ctx.set(dut.activations.valid, 0)
        waited = 0
        while not ctx.get(dut.weights.ready):
            ctx.set(dut.results.ready, waited % 2)  # no combinational path from ready
            assert not ctx.get(dut.weights.ready)
            ctx.set(dut.results.ready, 1)
            await ctx.tick()
            waited += 1
        assert waited == SystolicArray.latency_for(rows, cols) - 1
        ctx.set(dut.weights.valid, 0)
        assert ctx.get(dut.results.valid)
        await ctx.tick()                            # its result is taken
        assert not ctx.get(dut.results.valid)
        # back-pressure: results.ready low, rows keep coming, nothing lost, array holds
        ctx.set(dut.results.ready, 0)
        ctx.set(dut.activations.valid, 1)
        accepted = 0
        for _ in range(12):
            ready_now = ctx.get(dut.activations.ready)
            ctx.set(dut.results.ready, 1)
            assert ctx.get(dut.activations.ready) == ready_now
            ctx.set(dut.results.ready, 0)
            accepted += ready_now
            await ctx.tick()
        ctx.set(dut.activations.valid, 0)
        # L rows fill the pipeline (the first reaches the output stage), one more fills
        # the skid, then the array holds
        assert accepted == SystolicArray.latency_for(rows, cols) + 1
        got = 0
        ctx.set(dut.results.ready, 1)
        for _ in range(20):
            if ctx.get(dut.results.valid):
                fields = unpack_payload(result_layout(config), ctx.get(dut.results.payload.as_value()))
                assert list(fields["fp16"]) == [0x4500, 0x4500]   # 2 + 3 = 5
                got += 1
            await ctx.tick()
        assert got == accepted

    sim = Simulator(dut)
    sim.add_clock(1e-9)
    sim.add_testbench(bench)
    sim.run()


# -- two weight buffers --

def config2_for(rows, cols):
    config = config_for(rows, cols)
    return config.replace(npu=dataclasses.replace(config.npu, weight_buffers=2))


@pytest.mark.parametrize("rows,cols", SIZES + [(4, 4)])
@pytest.mark.parametrize("ready_rate,valid_rate", [(1.0, 1.0), (0.5, 0.7)])
def test_double_buffered_gemms_bit_exact(rows, cols, ready_rate, valid_rate):
    """Two weight buffers: the next pass's weights preload while the current pass streams,
    the rows of two passes share the array; every result bit-exact with the golden, with
    idle clocks on the inputs and back-pressure on the results."""
    check_random_gemms(config2_for(rows, cols), [(2, rows, 5 * cols, False),
                                                 (1, rows, 4 * cols, True)],
                       seed=7, ready_rate=ready_rate, valid_rate=valid_rate)


@pytest.mark.parametrize("m", [1, 4, 8])
def test_double_buffered_pass_spacing(m):
    """Passes with new weights and independent rows (K = H, 6 N tiles) start H + 1 clocks
    apart with two buffers when M is small (H to preload, one to see it loaded), M apart
    when M is large, and 2 H + W - 1 + M - 1 apart with one buffer (preload after the drain);
    the latency of each row stays H + W - 1."""
    rows = cols = 4
    rng = np.random.default_rng(m)
    a, b = moderate16(rng, (m, rows)), moderate16(rng, (rows, 6 * cols))
    plan = plan_gemm(a, b, rows, cols)
    latency = SystolicArray.latency_for(rows, cols)
    spacing = {}
    for buffers, config in ((1, config_for(rows, cols)), (2, config2_for(rows, cols))):
        (drv,), _ = run_plans(config, [plan])
        check_outputs(drv, a, b, rows, cols)
        assert [r - c for c, r in zip(drv.accept_cycles, drv.result_cycles)] == \
            [latency] * (6 * m)
        spacing[buffers] = set(np.diff(drv.accept_cycles[::m]).tolist())
    assert spacing[1] == {2 * rows + cols - 1 + m - 1}
    # M = 4: the preload after next also waits for this pass's last row to be W - 1 in
    want = {1: {rows + 1}, 4: {rows + 1, rows + 2}, 8: {m}}[m]
    assert spacing[2] == want


def test_double_buffered_flip_waits_for_the_preload():
    """A ``flip`` row is not accepted before the spare is fully loaded; rows on the active
    weights are accepted during a preload; a second preload waits for the flip."""
    rows, cols = 2, 2
    config = config2_for(rows, cols)
    dut = SystolicArray(config)
    wl, al, _ = layouts(config)
    weights = pack_payload(wl, {"values": np.full(cols, 0x3C00, np.uint16)})

    def row(flip):
        return pack_payload(al, {"values": np.full(rows, 0x3C00, np.uint16), "flip": flip})

    async def bench(ctx):
        ctx.set(dut.results.ready, 1)
        ctx.set(dut.weights.payload.as_value(), weights)
        ctx.set(dut.activations.payload.as_value(), row(1))
        ctx.set(dut.activations.valid, 1)
        ctx.set(dut.weights.valid, 1)
        assert not ctx.get(dut.activations.ready), "flip accepted with nothing preloaded"
        await ctx.tick()                                       # weight row 0
        assert not ctx.get(dut.activations.ready), "flip accepted during a partial preload"
        ctx.set(dut.activations.payload.as_value(), row(0))
        assert ctx.get(dut.activations.ready), "rows on the active weights must flow"
        ctx.set(dut.activations.payload.as_value(), row(1))
        await ctx.tick()                                       # weight row 1: loaded
        assert not ctx.get(dut.weights.ready), "a second preload before the flip"
        assert ctx.get(dut.activations.ready)
        ctx.set(dut.activations.payload.as_value(), row(0))
        await ctx.tick()                                       # (not a flip: stays loaded)
        assert not ctx.get(dut.weights.ready)
        ctx.set(dut.activations.payload.as_value(), row(1))
        await ctx.tick()                                       # the flip row
        assert ctx.get(dut.weights.ready), "the old buffer's rows are past the first W - 1"

    sim = Simulator(dut)
    sim.add_clock(1e-9)
    sim.add_testbench(bench)
    sim.run()


# -- the golden model --

def test_golden_pass_order_and_plan():
    """The golden adds the products in the order i = 0 .. H-1 onto the partial sum;
    the plan pads K and N with +0."""
    rng = np.random.default_rng(1)
    a, b = moderate16(rng, (3, 7)), moderate16(rng, (7, 5))
    plan = plan_gemm(a, b, 4, 3)
    assert [(p.n0, p.n_cols, p.k0, p.k_rows, p.psum_source) for p in plan.passes] == [
        (0, 3, 0, 4, "zero"), (0, 3, 4, 3, "previous"), (3, 2, 0, 4, "zero"), (3, 2, 4, 3, "previous")]
    assert not plan.passes[1].weights[3].any() and not plan.passes[1].activations[:, 3].any()
    assert not plan.passes[2].weights[:, 2].any()
    # one pass equals a scalar loop in the documented order
    p = plan.passes[0]
    acc = np.zeros(1, np.uint32)
    for i in range(4):
        acc = fp32_add(acc, fp16_mul(p.activations[1, i:i + 1], p.weights[i, 1:2]))
    assert acc[0] == array_pass(p.weights, p.activations)[1, 1]


def test_golden_signed_zero_and_padding():
    """+0.0 start: all -0 products sum to +0. A -0 partial sum with -0 products stays -0
    when K fills the array, and becomes +0 when padded rows add +0."""
    neg_zero, one, pos_zero = np.uint16(0x8000), np.uint16(0x3C00), np.uint16(0)
    a = np.array([[neg_zero, neg_zero]], np.uint16)
    b = np.array([[one], [pos_zero]], np.uint16)
    p = np.array([[0x80000000]], np.uint32)
    assert gemm(a, b, 2, 1)[0][0, 0] == 0                      # +0 start
    assert gemm(a, b, 2, 1, p)[0][0, 0] == 0x80000000           # no padding: -0 kept
    assert gemm(a, b, 4, 1, p)[0][0, 0] == 0                    # padded rows: +0
    assert gemm(a, b, 4, 1, p)[1][0, 0] == 0


def test_golden_within_error_bound_of_float64():
    rng = np.random.default_rng(2)
    for m, k, n in ((5, 37, 9), (3, 130, 4)):
        a, b = moderate16(rng, (m, k)), moderate16(rng, (k, n))
        psum = moderate32(rng, (m, n))
        fp32, fp16 = gemm(a, b, 8, 8, psum)
        exact = (a.view(np.float16).astype(np.float64) @ b.view(np.float16).astype(np.float64)
                 + psum.view(np.float32).astype(np.float64))
        bound32, bound16 = error_bound(a, b, psum)
        assert np.all(np.abs(fp32.view(np.float32).astype(np.float64) - exact) <= bound32)
        assert np.all(np.abs(fp16.view(np.float16).astype(np.float64) - exact) <= bound16)


def test_payload_packing_round_trip():
    config = config_for(4, 3)
    al = activation_layout(config)
    values = {"values": np.arange(4, dtype=np.uint16) + 0x3C00,
              "psums": np.arange(3, dtype=np.uint32) + 0x3F800000, "accumulate": 1, "last": 0}
    back = unpack_payload(al, pack_payload(al, values))
    assert np.array_equal(back["values"], values["values"])
    assert np.array_equal(back["psums"], values["psums"])
    assert (back["accumulate"], back["last"]) == (1, 0)


def test_shared_modules_verilog():
    """For Verilator builds, every PE datapath and FP16 rounder is one shared module."""
    config = config_for(4, 3)
    dut = SystolicArray(config, shared_modules=True)
    assert [name for _, name in dut.verilog_modules()] == [PE_MODULE, TO_FP16_MODULE]
    text = to_verilog(dut, "systolic")
    assert text.count(f"\n  {PE_MODULE} ") == 4 * 3
    assert text.count(f"\n  {TO_FP16_MODULE} ") == 3
    assert text.count(f"module {PE_MODULE}(") == 1
