"""cocotb tests of ``rtl.npu.systolic.SystolicArray`` on Verilator.

GEMMs of random shapes (K and N tiled, padded) are cut into array passes by
``sim.golden.gemm.plan_gemm`` and driven through the three streams one clock at a time
(``GemmStreamDriver``); every FP32 and FP16 result is compared bit for bit with
``sim.golden.gemm.gemm``, every result's latency with the documented one when the output
is not back-pressured. The utilization test streams many rows through resident weights
and reads MACs per busy cycle from the array's counters.

Environment: ``NEUPIMS_CONFIG`` (DeviceConfig JSON), ``NEUPIMS_SEED`` (default 1),
``NEUPIMS_GEMMS`` (random GEMMs, default 24), ``NEUPIMS_UTIL_ROWS`` (rows of the
utilization run, default 2048), ``NEUPIMS_RAW_CYCLES`` (free-running clocks timed without Python per clock, default
20000), ``NEUPIMS_REPORT`` (a JSON file for the launcher).
"""
from __future__ import annotations

import os
import time

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge

from rtl.config import DeviceConfig
from rtl.npu.systolic import SystolicArray, activation_layout, result_layout, weight_layout
from sim.golden.fp import fp32_to_fp16, random16
from sim.golden.gemm import GemmStreamDriver, gemm, pack_payload, plan_gemm
from .report import update_report


def _seed() -> int:
    return int(os.environ.get("NEUPIMS_SEED", "1"))


def moderate16(rng, shape):
    """Finite FP16 values of mixed sign and magnitude (sums stay finite)."""
    return (rng.standard_normal(shape) * 2.0 ** rng.integers(-6, 4, shape)).astype(np.float16).view(np.uint16)


def moderate32(rng, shape):
    return (rng.standard_normal(shape) * 4).astype(np.float32).view(np.uint32)


def tb_row(tb, values) -> int:
    """An activation row payload (no partial sums, ``last`` clear)."""
    return pack_payload(tb.layouts[1], {"values": values})


class SystolicTB:
    """Clock, reset, the per-clock stream loop, counters and the report."""

    def __init__(self, dut):
        self.dut = dut
        self.config = DeviceConfig.from_json(os.environ["NEUPIMS_CONFIG"])
        self.rows, self.cols = self.config.npu.array_rows, self.config.npu.array_cols
        self.latency = SystolicArray.latency_for(self.rows, self.cols)
        self.layouts = (weight_layout(self.config), activation_layout(self.config),
                        result_layout(self.config))
        self.cycles = 0
        self.wall = 0.0

    async def start(self):
        dut = self.dut
        Clock(dut.clk, 1, "ns").start()
        for name in ("weights__valid", "activations__valid", "results__ready"):
            getattr(dut, name).value = 0
        dut.rst.value = 1
        await ClockCycles(dut.clk, 2)
        dut.rst.value = 0
        await RisingEdge(dut.clk)

    async def run(self, plan, rng, ready_rate=1.0, valid_rate=1.0, watchdog=None):
        """Drive one plan to completion; return its driver."""
        dut = self.dut
        drv = GemmStreamDriver(plan, self.layouts, rng, valid_rate)
        watchdog = watchdog or 64 * (self.latency + self.rows) + 1000
        quiet = 0
        last_w = last_a = None
        began = time.perf_counter()
        cycles = 0
        while not drv.done:
            w, a = drv.offer()
            dut.weights__valid.value = int(w is not None)
            if w is not None and w is not last_w:
                dut.weights__payload.value = w
                last_w = w
            dut.activations__valid.value = int(a is not None)
            if a is not None and a is not last_a:
                dut.activations__payload.value = a
                last_a = a
            ready = ready_rate >= 1 or rng.random() < ready_rate
            dut.results__ready.value = int(ready)
            await ReadOnly()
            w_fire = w is not None and bool(dut.weights__ready.value)
            a_fire = a is not None and bool(dut.activations__ready.value)
            result = (int(dut.results__payload.value)
                      if ready and dut.results__valid.value else None)
            await RisingEdge(dut.clk)
            drv.commit(w_fire, a_fire, result)
            cycles += 1
            quiet = 0 if (w_fire or a_fire or result is not None) else quiet + 1
            if quiet >= watchdog:
                raise AssertionError(
                    f"watchdog: no handshake for {quiet} clocks: pass {drv.pass_index}/"
                    f"{len(plan.passes)}, weight row {drv.weight_row}, activation row "
                    f"{drv.act_row}, {drv.received}/{plan.activation_rows} results; offering "
                    f"weights {w is not None}, activations {a is not None}; weights.ready "
                    f"{dut.weights__ready.value}, activations.ready "
                    f"{dut.activations__ready.value}, results.valid {dut.results__valid.value}")
        dut.weights__valid.value = 0
        dut.activations__valid.value = 0
        self.wall += time.perf_counter() - began
        self.cycles += cycles
        return drv

    async def counters(self):
        await ReadOnly()
        values = int(self.dut.busy_cycles.value), int(self.dut.macs.value)
        await RisingEdge(self.dut.clk)
        return values

    def check(self, drv, a, b, psum=None):
        fp32, fp16 = drv.outputs()
        want32, want16 = gemm(a, b, self.rows, self.cols, psum)
        bad = np.argwhere(fp32 != want32)
        if len(bad):
            i = tuple(bad[0])
            raise AssertionError(f"{len(bad)} FP32 mismatches (seed {_seed()}), first at {i}: "
                                 f"{fp32[i]:#010x}, golden {want32[i]:#010x}")
        assert np.array_equal(fp16, want16), f"FP16 results differ from the golden (seed {_seed()})"
        for got32, got16 in zip(drv.results, drv.results16):
            assert np.array_equal(got16, fp32_to_fp16(got32)), "FP16 output is not the rounded FP32"

    def report(self, **values):
        update_report(**values)


@cocotb.test()
async def random_gemms_bit_exact(dut):
    """Random shapes (M up to 12, K up to 3H + 1, N up to 2W + 3), half with incoming
    partial sums, half with random back-pressure and input gaps; bit-exact results."""
    tb = SystolicTB(dut)
    await tb.start()
    rng = np.random.default_rng(_seed())
    H, W = tb.rows, tb.cols
    count = int(os.environ.get("NEUPIMS_GEMMS", "24"))
    rows_sent = 0
    for index in range(count):
        m = int(rng.integers(1, 13))
        k = int(rng.integers(1, 3 * H + 2))
        n = int(rng.integers(1, 2 * W + 4))
        if index == 0:
            k, n = 2 * H + 1, W + 1           # always one K and N tail
        a, b = moderate16(rng, (m, k)), moderate16(rng, (k, n))
        psum = moderate32(rng, (m, n)) if index % 2 else None
        plan = plan_gemm(a, b, H, W, psum)
        pressured = index % 4 >= 2
        drv = await tb.run(plan, rng, ready_rate=0.5 if pressured else 1.0,
                           valid_rate=0.85 if pressured else 1.0)
        tb.check(drv, a, b, psum)
        if not pressured:
            lat = [r - c for c, r in zip(drv.accept_cycles, drv.result_cycles)]
            assert lat == [tb.latency] * len(lat), f"latencies {sorted(set(lat))}, expected {tb.latency}"
        rows_sent += plan.activation_rows
        dut._log.info("GEMM %d: M %d K %d N %d, %d passes, %s, bit-exact", index, m, k, n,
                      len(plan.passes), "back-pressured" if pressured else "full rate")
    busy, macs = await tb.counters()
    assert macs == rows_sent * H * W, f"macs counter {macs}, expected {rows_sent * H * W}"
    tb.report(gemms=count, rows=rows_sent, cycles_random=tb.cycles,
              cycles_per_s_random=tb.cycles / tb.wall)


@cocotb.test()
async def special_values_bit_exact(dut):
    """Zeros of both signs, subnormals, infinities and NaN in A, B and the partial sums."""
    tb = SystolicTB(dut)
    await tb.start()
    rng = np.random.default_rng(_seed() + 1000)
    H, W = tb.rows, tb.cols
    m, k, n = 7, H + H // 2, W + 1
    a = random16(rng, m * k).reshape(m, k)
    b = random16(rng, k * n).reshape(k, n)
    psum = np.where(rng.random((m, n)) < 0.3, np.uint32(0x80000000),
                    moderate32(rng, (m, n))).astype(np.uint32)
    plan = plan_gemm(a, b, H, W, psum)
    drv = await tb.run(plan, rng)
    tb.check(drv, a, b, psum)


@cocotb.test()
async def utilization_weights_resident(dut):
    """One weight tile, NEUPIMS_UTIL_ROWS rows back to back: MACs per busy cycle from the
    counters, as a fraction of H x W; and a K- and N-tiled GEMM with weight reloads."""
    tb = SystolicTB(dut)
    await tb.start()
    rng = np.random.default_rng(_seed() + 2000)
    H, W = tb.rows, tb.cols
    m = int(os.environ.get("NEUPIMS_UTIL_ROWS", "2048"))
    a, b = moderate16(rng, (m, H)), moderate16(rng, (H, W))
    plan = plan_gemm(a, b, H, W)
    busy0, macs0 = await tb.counters()
    cycles0, wall0 = tb.cycles, tb.wall
    drv = await tb.run(plan, rng)
    busy1, macs1 = await tb.counters()
    tb.check(drv, a, b)
    busy, macs = busy1 - busy0, macs1 - macs0
    assert macs == m * H * W
    assert busy == m + tb.latency, f"busy {busy}, expected M + latency = {m + tb.latency}"
    utilization = macs / (busy * H * W)
    cycles, wall = tb.cycles - cycles0, tb.wall - wall0
    dut._log.info("utilization, weights resident: %d rows, %d MACs in %d busy cycles = %.1f %% "
                  "of %d x %d; %d cycles in %.2f s = %.0f cycles/s", m, macs, busy,
                  100 * utilization, H, W, cycles, wall, cycles / wall)
    assert utilization >= 0.9, f"utilization {utilization:.3f} below 90 %"

    # a tiled GEMM: 3 K tiles x 2 N tiles, M rows per pass, weight preloads between passes
    mt = m // 4
    a2, b2 = moderate16(rng, (mt, 3 * H)), moderate16(rng, (3 * H, 2 * W))
    plan2 = plan_gemm(a2, b2, H, W)
    busy0, macs0 = await tb.counters()
    cycles0 = tb.cycles
    drv2 = await tb.run(plan2, rng)
    busy1, macs1 = await tb.counters()
    tb.check(drv2, a2, b2)
    tiled_cycles = tb.cycles - cycles0
    tiled = {"busy": busy1 - busy0, "macs": macs1 - macs0, "cycles": tiled_cycles,
             "utilization_busy": (macs1 - macs0) / ((busy1 - busy0) * H * W),
             "utilization_total": (macs1 - macs0) / (tiled_cycles * H * W)}
    dut._log.info("tiled GEMM %dx%dx%d: %d passes, %d cycles, %.1f %% of busy, %.1f %% of all "
                  "cycles", mt, 3 * H, 2 * W, len(plan2.passes), tiled_cycles,
                  100 * tiled["utilization_busy"], 100 * tiled["utilization_total"])

    # the model alone: one row held valid, results always ready, no Python per clock
    raw = int(os.environ.get("NEUPIMS_RAW_CYCLES", "20000"))
    dut.activations__payload.value = tb_row(tb, a[0])
    dut.activations__valid.value = 1
    dut.results__ready.value = 1
    began = time.perf_counter()
    await ClockCycles(dut.clk, raw)
    raw_rate = raw / (time.perf_counter() - began)
    dut.activations__valid.value = 0
    dut._log.info("free-running model: %d cycles at %.0f cycles/s", raw, raw_rate)
    tb.report(rows=H, cols=W, util_rows=m, raw_cycles_per_s=raw_rate, busy=busy, macs=macs, utilization=utilization,
              latency=tb.latency, cycles=cycles, wall_s=wall, cycles_per_s=cycles / wall,
              tiled=tiled)
