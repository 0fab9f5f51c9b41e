"""cocotb tests of the NPU vector unit (:class:`rtl.npu.vector.VectorUnit`) on Verilator.

Environment: ``NEUPIMS_CONFIG`` (device configuration JSON; the lane count comes from
it), ``NEUPIMS_SEED`` (default 1), ``NEUPIMS_VECTOR_N`` (random vectors per op,
default 2000), ``NEUPIMS_REPORT`` (optional JSON file for per-test statistics).

Every output is compared bit for bit with :mod:`sim.golden.vector`; with ``o.ready``
always high, every op's latency (input transfer to first ``o.valid``) and the
spacing of back-to-back transfers are checked against ``latency_for`` / ``steps_for``.
"""
from __future__ import annotations

import json
import os
import time

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge

from rtl.config import DeviceConfig
from rtl.npu.vector import VectorOp, latency_for, pack_input, steps_for, unpack_output
from sim.golden import fp as gfp
from sim.golden import fp32 as g32
from sim.golden import vector as golden

UNARY = [VectorOp.EXP, VectorOp.RECIP, VectorOp.RSQRT, VectorOp.GELU, VectorOp.CVT16TO32,
         VectorOp.CVT32TO16, VectorOp.SUM, VectorOp.RMAX]
BINARY = [VectorOp.ADD, VectorOp.SUB, VectorOp.MUL, VectorOp.MAX]


def _seed():
    return int(os.environ.get("NEUPIMS_SEED", "1"))


def _config():
    return DeviceConfig.from_json(os.environ["NEUPIMS_CONFIG"])


def _report(name, **data):
    path = os.environ.get("NEUPIMS_REPORT")
    if not path:
        return
    report = json.loads(open(path).read()) if os.path.exists(path) else {}
    report[name] = data
    with open(path, "w") as f:
        json.dump(report, f, indent=1)


class VectorTB:
    """Drives ``i`` and takes ``o`` cycle by cycle; records transfer cycles."""

    def __init__(self, dut, lanes, rng):
        self.dut, self.lanes, self.rng = dut, lanes, rng
        self.cycle = 0
        self.cycles_run = 0
        self.wall = 0.0

    async def start(self):
        dut = self.dut
        Clock(dut.clk, 1, "ns").start()
        dut.i__valid.value = 0
        dut.o__ready.value = 0
        dut.rst.value = 1
        await ClockCycles(dut.clk, 2)
        dut.rst.value = 0
        await RisingEdge(dut.clk)

    async def execute(self, requests, valid_prob=1.0, ready_prob=1.0, watchdog=200):
        """Run ``requests`` ((op, a, b, scalar_b) with lane arrays); return
        (outputs (n x lanes uint32), accept cycles, first-valid cycles)."""
        dut, rng, lanes = self.dut, self.rng, self.lanes
        packed = [pack_input(lanes, op, a, b, sb) for op, a, b, sb in requests]
        n = len(requests)
        outs = np.zeros((n, lanes), dtype=np.uint32)
        accepted, first_valid = [], []
        sent = taken = 0
        offering = False
        held = None  # output payload seen valid and not taken: must stay
        quiet = 0
        started = time.perf_counter()
        while taken < n:
            await RisingEdge(dut.clk)
            self.cycle += 1
            if sent < n and (offering or rng.random() < valid_prob):
                if not offering:
                    dut.i__payload.value = packed[sent]
                offering = True
            dut.i__valid.value = offering
            ready = bool(ready_prob >= 1.0 or rng.random() < ready_prob)
            dut.o__ready.value = ready
            await ReadOnly()
            progress = False
            if offering and dut.i__ready.value:
                accepted.append(self.cycle)
                sent += 1
                offering = False
                progress = True
            if dut.o__valid.value:
                payload = int(dut.o__payload.value)
                if held is None:
                    first_valid.append(self.cycle)
                elif payload != held:
                    raise AssertionError(f"cycle {self.cycle}: output changed while not taken")
                held = payload
                if ready:
                    outs[taken] = unpack_output(lanes, payload)
                    taken += 1
                    held = None
                    progress = True
            elif held is not None:
                raise AssertionError(f"cycle {self.cycle}: o.valid dropped before o.ready")
            quiet = 0 if progress else quiet + 1
            if quiet > watchdog:
                raise AssertionError(f"watchdog: no transfer for {quiet} cycles at cycle "
                                     f"{self.cycle} ({sent} sent, {taken} taken of {n})")
        await RisingEdge(dut.clk)
        dut.i__valid.value = 0
        self.cycle += 1
        self.wall += time.perf_counter() - started
        self.cycles_run += self.cycle
        return outs, accepted, first_valid

    async def executor_run(self, program):
        """Drive a :mod:`sim.golden.vector` program generator on the DUT."""
        try:
            request = next(program)
            while True:
                op, a, b, sb = request
                outs, _, _ = await self.execute([(op, a, b, sb)])
                request = program.send(outs[0])
        except StopIteration as done:
            return done.value


def _check(label, requests, outs, lanes):
    bad = []
    for k, (op, a, b, sb) in enumerate(requests):
        want = golden.execute(op, np.asarray(a, np.uint32), np.asarray(b, np.uint32), sb)
        if not np.array_equal(want, outs[k]):
            bad.append((k, op, a, b, sb, outs[k], want))
    if bad:
        lines = []
        for k, op, a, b, sb, got, want in bad[:6]:
            lines.append(f"  #{k} {VectorOp(op).name} scalar_b={sb} a={[hex(int(v)) for v in a]} "
                         f"b={[hex(int(v)) for v in b]} got={[hex(int(v)) for v in got]} "
                         f"want={[hex(int(v)) for v in want]}")
        raise AssertionError(f"{label}: {len(bad)}/{len(requests)} vectors differ "
                             f"(seed {_seed()}):\n" + "\n".join(lines))


def _vectors(values, lanes):
    values = np.asarray(values, dtype=np.uint32)
    extra = (-len(values)) % lanes
    values = np.concatenate([values, values[:extra]]) if extra else values
    return values.reshape(-1, lanes)


def operands(op, rng, n, lanes):
    """(a, b, scalar_b) arrays for ``op``: special values first, then ``n`` random
    vectors from distributions that reach the op's interesting ranges."""
    specials = golden_specials()
    if op in BINARY:
        sa, sb = np.meshgrid(specials, specials, indexing="ij")
        a_s, b_s = sa.ravel(), sb.ravel()
        if op in (VectorOp.ADD, VectorOp.SUB):
            ra, rb = gfp.random32_add_pairs(rng, n * lanes)
        elif op is VectorOp.MUL:
            ra = _mul_operands(rng, n * lanes)
            rb = _mul_operands(rng, n * lanes)
        else:  # MAX: random, plus equal magnitudes of either sign
            ra = g32.random32(rng, n * lanes)
            rb = np.where(rng.random(n * lanes) < 0.3, ra ^ np.uint32(0x80000000),
                          g32.random32(rng, n * lanes))
        a = _vectors(np.concatenate([a_s, ra]), lanes)
        b = _vectors(np.concatenate([b_s, rb]), lanes)
        sb = np.zeros(len(a), dtype=bool)
        sb[len(a) // 2:] = rng.random(len(a) - len(a) // 2) < 0.25
        return a, b, sb
    if op is VectorOp.CVT16TO32:
        a = np.arange(1 << 16, dtype=np.uint32)
        a = np.concatenate([a, rng.integers(0, 1 << 32, n * lanes, dtype=np.uint32)])
        return _vectors(a, lanes), None, None
    if op is VectorOp.CVT32TO16:
        r = gfp.random32_cvt(rng, n * lanes)
    elif op is VectorOp.EXP:
        r = _mix(rng, n * lanes, -110.0, 95.0)
    elif op is VectorOp.GELU:
        r = _mix(rng, n * lanes, -15.0, 15.0)
    elif op in (VectorOp.SUM, VectorOp.RMAX):
        normal = (rng.standard_normal(n * lanes - n * lanes // 2) * 100).astype(np.float32)
        r = np.concatenate([g32.random32(rng, n * lanes // 2, 100, 150), normal.view(np.uint32),
                            g32.random32(rng, n * lanes // 4)])
    else:  # RECIP, RSQRT: every exponent, both signs, plus mantissas in [1, 4)
        r = np.concatenate([g32.random32(rng, n * lanes),
                            rng.integers(0x3F800000, 0x40800000, n * lanes // 2, dtype=np.uint32)])
    a = _vectors(np.concatenate([specials, r]), lanes)
    return a, None, None


def _mix(rng, count, lo, hi):
    uniform = rng.uniform(lo, hi, count - count // 4).astype(np.float32).view(np.uint32)
    return np.concatenate([uniform, g32.random32(rng, count // 4)])


def _mul_operands(rng, count):
    """Exponents spread so products cover underflow, subnormal, normal and overflow."""
    k = count // 3
    return np.concatenate([g32.random32(rng, count - 2 * k),
                           g32.random32(rng, k, 0, 80),
                           g32.random32(rng, k, 170, 255)])


def golden_specials():
    return gfp.special_values32()


@cocotb.test()
async def ops_bit_exact(dut):
    """Every op: special values and NEUPIMS_VECTOR_N random vectors, bit-exact; with
    o.ready high, latency = latency_for(op) and back-to-back spacing = steps_for(op)."""
    cfg = _config()
    lanes = cfg.npu.vector_lanes
    n = int(os.environ.get("NEUPIMS_VECTOR_N", "2000"))
    tb = VectorTB(dut, lanes, np.random.default_rng(_seed()))
    await tb.start()
    stats = {}
    for op in VectorOp:
        rng = np.random.default_rng([_seed(), op.value])
        a, b, sb = operands(op, rng, n, lanes)
        b = np.zeros_like(a) if b is None else b
        sb = np.zeros(len(a), dtype=bool) if sb is None else sb
        requests = [(op, a[k], b[k], bool(sb[k])) for k in range(len(a))]
        cycle0, wall0 = tb.cycle, time.perf_counter()
        outs, accepted, first_valid = await tb.execute(requests)
        _check(op.name, requests, outs, lanes)
        lat = latency_for(op, lanes)
        latencies = {v - a_ for a_, v in zip(accepted, first_valid)}
        assert latencies == {lat}, f"{op.name}: latencies {sorted(latencies)}, documented {lat}"
        spacing = {y - x for x, y in zip(accepted, accepted[1:])}
        assert spacing == {steps_for(op, lanes)}, f"{op.name}: input spacing {sorted(spacing)}"
        stats[op.name] = {"vectors": len(requests), "cycles": tb.cycle - cycle0,
                          "wall_s": round(time.perf_counter() - wall0, 2)}
        dut._log.info("%s: %d vectors x %d lanes bit-exact, latency %d, one every %d clocks",
                      op.name, len(requests), lanes, lat, steps_for(op, lanes))
    _report("ops_bit_exact", lanes=lanes, seed=_seed(), ops=stats,
            cycles_per_s=round(tb.cycles_run / max(tb.wall, 1e-9)))


@cocotb.test()
async def backpressure_mixed(dut):
    """A random mix of ops with random input gaps and random o.ready: outputs in order,
    bit-exact, held stable while not taken."""
    cfg = _config()
    lanes = cfg.npu.vector_lanes
    rng = np.random.default_rng([_seed(), 99])
    tb = VectorTB(dut, lanes, rng)
    await tb.start()
    requests = []
    ops = list(VectorOp)
    for _ in range(int(os.environ.get("NEUPIMS_VECTOR_N", "2000")) // 4):
        op = ops[int(rng.integers(len(ops)))]
        a, b, sb = operands(op, rng, 1, lanes)
        k = int(rng.integers(len(a)))
        bv = np.zeros(lanes, np.uint32) if b is None else b[k]
        requests.append((op, a[k], bv, bool(sb[k]) if sb is not None else bool(rng.random() < 0.3)))
    for valid_prob, ready_prob in ((0.5, 0.5), (1.0, 0.2), (0.3, 1.0)):
        outs, _, _ = await tb.execute(requests, valid_prob, ready_prob, watchdog=1000)
        _check(f"mix valid {valid_prob} ready {ready_prob}", requests, outs, lanes)


def attention_logits(rng, length, d_head=128):
    """q.k / sqrt(d) for FP16 q, k (what the attention GEMV produces), as binary32."""
    q = rng.standard_normal(d_head).astype(np.float16)
    k = (rng.standard_normal((length, d_head)) * rng.uniform(0.5, 2.0)).astype(np.float16)
    scores = k.astype(np.float32) @ q.astype(np.float32)
    return (scores / np.float32(np.sqrt(d_head))).astype(np.float32)


@cocotb.test()
async def softmax_sequence(dut):
    """Softmax of attention logits driven as a sequence of vector-unit ops, bit-exact
    with sim.golden.vector.softmax (FP32 in/out for 128 values; FP16 in/out for 100
    values, with a padded last chunk); then LayerNorm and an FP16 residual add."""
    cfg = _config()
    lanes = cfg.npu.vector_lanes
    rng = np.random.default_rng([_seed(), 7])
    tb = VectorTB(dut, lanes, rng)
    await tb.start()
    results = {}
    for length in (128, 64):
        x = attention_logits(rng, length).view(np.uint32)
        cycle0 = tb.cycle
        got = await tb.executor_run(golden.softmax_program(x, lanes))
        want = golden.softmax(x, lanes)
        assert np.array_equal(got, want), f"softmax({length}) differs from golden"
        p = got.view(np.float32).astype(np.float64)
        assert abs(p.sum() - 1) < 1e-5
        results[f"softmax{length}"] = tb.cycle - cycle0
    x16 = attention_logits(rng, 100).astype(np.float16).view(np.uint16)
    got = await tb.executor_run(golden.softmax_program(x16, lanes, fp16=True))
    assert np.array_equal(got, golden.softmax(x16, lanes, fp16=True)), "FP16 softmax differs"

    n = 96 + lanes // 2
    x = (rng.standard_normal(n) * 2 + 0.5).astype(np.float32).view(np.uint32)
    g = rng.uniform(0.5, 1.5, n).astype(np.float32).view(np.uint32)
    bb = rng.uniform(-0.5, 0.5, n).astype(np.float32).view(np.uint32)
    got = await tb.executor_run(golden.layernorm_program(x, g, bb, 1e-5, lanes))
    assert np.array_equal(got, golden.layernorm(x, g, bb, 1e-5, lanes)), "layernorm differs"

    h1 = (rng.standard_normal(n) * 4).astype(np.float16).view(np.uint16)
    h2 = (rng.standard_normal(n) * 4).astype(np.float16).view(np.uint16)
    got = await tb.executor_run(golden.residual_add_program(h1, h2, lanes, fp16=True))
    assert np.array_equal(got, golden.residual_add(h1, h2, lanes, fp16=True)), "residual differs"
    _report("softmax_sequence", lanes=lanes, cycles=results)
