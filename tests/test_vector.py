"""The NPU vector unit and its FP32 building blocks on Amaranth's simulator.

* The combinational FP32 components of :mod:`rtl.arith.fp32` against
  :mod:`sim.golden.fp32`, bit for bit (special values and random operands).
* :class:`rtl.npu.vector.VectorUnit` with 4 lanes: every op bit-exact against
  :mod:`sim.golden.vector` on special and random vectors, latency and back-to-back
  spacing as documented, back-pressure, scalar-broadcast operand, non-power-of-two
  lane counts, and a small softmax driven as an op sequence.
* The golden model against float64: the documented error bounds hold.
"""
import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from amaranth.sim import Simulator  # noqa: E402

from rtl.arith.fp32 import (FP16ToFP32, FP32Frexp, FP32Ldexp, FP32MinMax,  # noqa: E402
                            FP32Multiplier)
from rtl.config import preset  # noqa: E402
from rtl.npu.vector import (VectorOp, VectorUnit, latency_for, pack_input, steps_for,  # noqa: E402
                            unpack_output)
from sim.golden import fp as gfp  # noqa: E402
from sim.golden import fp32 as g32  # noqa: E402
from sim.golden import pim as gpim  # noqa: E402
from sim.golden import vector as golden  # noqa: E402

LANES = 4
SPECIALS = gfp.special_values32()
#: A smaller set for all-pairs tests of binary ops on the slow simulator.
FEW_SPECIALS = np.array([0x00000000, 0x80000000, 0x00000001, 0x807FFFFF, 0x00800000, 0x3F800000,
                         0xBF800000, 0x3F800001, 0x7F7FFFFF, 0xFF7FFFFF, 0x7F800000, 0xFF800000,
                         0x7FC00000, 0xFFA00000, 0x4B400000, 0xC2B20000, 0x33800000, 0x5F000000,
                         0x1F000000, 0xC0490FDB], dtype=np.uint32)


def config(lanes):
    """The small preset with ``lanes`` vector lanes."""
    base = preset("small")
    return base.replace(npu=dataclasses.replace(base.npu, vector_lanes=lanes))


def f32bits(values):
    return np.asarray(values, dtype=np.float32).view(np.uint32)


# ---------------------------------------------------------------------------
# FP32 components (combinational)
# ---------------------------------------------------------------------------

def simulate_comb(dut, inputs, outputs):
    names = list(inputs)
    cols = [np.asarray(inputs[n]).tolist() for n in names]
    got = {o: [] for o in outputs}

    async def bench(ctx):
        for vals in zip(*cols):
            for name, v in zip(names, vals):
                ctx.set(getattr(dut, name), v)
            for o in outputs:
                got[o].append(ctx.get(getattr(dut, o)))

    sim = Simulator(dut)
    sim.add_testbench(bench)
    sim.run()
    return {o: np.array(v, dtype=np.int64) for o, v in got.items()}


def assert_same(got, want, operands, label):
    want = np.asarray(want).astype(np.int64)
    bad = np.nonzero(got != want)[0]
    if len(bad):
        lines = [f"{label}({', '.join(hex(int(o[i])) for o in operands)}) = {int(got[i]):#x}, "
                 f"expected {int(want[i]):#x}" for i in bad[:8]]
        pytest.fail(f"{len(bad)}/{len(got)} mismatches:\n" + "\n".join(lines))


def pairs(values):
    a, b = np.meshgrid(values, values, indexing="ij")
    return a.ravel(), b.ravel()


def test_fp32_multiplier():
    rng = np.random.default_rng(1)
    sa, sb = pairs(FEW_SPECIALS)
    k = 400
    ra = np.concatenate([g32.random32(rng, k), g32.random32(rng, k, 0, 80),
                         g32.random32(rng, k, 100, 160)])
    rb = np.concatenate([g32.random32(rng, k), g32.random32(rng, k, 40, 130),
                         g32.random32(rng, k, 150, 255)])
    a, b = np.concatenate([sa, ra]), np.concatenate([sb, rb])
    got = simulate_comb(FP32Multiplier(), {"a": a, "b": b}, ["p"])["p"]
    assert_same(got, g32.fp32_mul(a, b), (a, b), "mul")


def test_fp16_to_fp32():
    rng = np.random.default_rng(2)
    h = np.concatenate([gfp.special_values16(), np.arange(0, 0x400, 7), np.arange(0x7C00, 0x7C10),
                        rng.integers(0, 1 << 16, 1500)]).astype(np.uint16)
    got = simulate_comb(FP16ToFP32(), {"a": h}, ["f"])["f"]
    assert_same(got, g32.fp16_to_fp32(h), (h,), "cvt16")


def test_fp32_minmax():
    rng = np.random.default_rng(3)
    sa, sb = pairs(FEW_SPECIALS)
    ra = g32.random32(rng, 1000)
    rb = np.where(rng.random(1000) < 0.3, ra ^ np.uint32(0x80000000), g32.random32(rng, 1000))
    a, b = np.concatenate([sa, ra]), np.concatenate([sb, rb])
    mn = (np.arange(len(a)) % 2).astype(np.uint32)
    got = simulate_comb(FP32MinMax(), {"a": a, "b": b, "min": mn}, ["s"])["s"]
    want = np.where(mn == 1, g32.fp32_min(a, b), g32.fp32_max(a, b))
    assert_same(got, want, (a, b, mn), "minmax")
    # -0 < +0 whatever the operand order
    assert g32.fp32_max(np.uint32(0x80000000), np.uint32(0))[()] == 0
    assert g32.fp32_max(np.uint32(0), np.uint32(0x80000000))[()] == 0


def test_fp32_ldexp():
    rng = np.random.default_rng(4)
    a = np.concatenate([np.repeat(SPECIALS, 4), g32.random32(rng, 1500)])
    n = np.concatenate([np.tile([-300, -150, 0, 149], len(SPECIALS)),
                        rng.integers(-300, 300, 1500)]).astype(np.int64)
    got = simulate_comb(FP32Ldexp(10), {"a": a, "n": n}, ["s"])["s"]
    want = g32.fp32_ldexp(a, n)
    assert_same(got, want, (a, n), "ldexp")
    # the golden agrees with C's ldexpf (numpy float32 ldexp) on finite values
    fin = ~g32.is_nan32(a)
    with np.errstate(all="ignore"):
        ref = g32.bits(np.ldexp(g32.f32(a), n.astype(np.int32)))
    assert np.array_equal(want[fin], ref[fin])


def test_fp32_frexp():
    rng = np.random.default_rng(5)
    a = g32.random32(rng, 1500, 0, 255)
    a = a[((a & np.uint32(0x7FFFFFFF)) != 0) & ~g32.is_nan32(a)
          & ((a & np.uint32(0x7FFFFFFF)) != np.uint32(0x7F800000))]
    subnormals = np.arange(1, 64, dtype=np.uint32)
    a = np.concatenate([a, subnormals, subnormals | np.uint32(0x80000000)])
    got = simulate_comb(FP32Frexp(), {"a": a}, ["m", "e"])
    m, e = g32.fp32_frexp(a)
    assert_same(got["m"], m, (a,), "frexp.m")
    e_got = np.where(got["e"] >= 256, got["e"] - 512, got["e"])
    assert_same(e_got, e, (a,), "frexp.e")


# ---------------------------------------------------------------------------
# The vector unit
# ---------------------------------------------------------------------------

def run_requests(lanes, requests, valid_prob=1.0, ready_prob=1.0, seed=0, max_cycles=100_000):
    """Drive ``requests`` [(op, a, b, scalar_b)] through a VectorUnit; return
    (outputs, accept cycles, first-valid cycles)."""
    dut = VectorUnit(config(lanes))
    rng = np.random.default_rng(seed)
    packed = [pack_input(lanes, op, a, b, sb) for op, a, b, sb in requests]
    outs, accepted, first_valid = [], [], []

    async def bench(ctx):
        sent, offering, held, cycle = 0, False, None, 0
        while len(outs) < len(packed):
            if sent < len(packed) and (offering or rng.random() < valid_prob):
                if not offering:
                    ctx.set(dut.i.payload.as_value(), packed[sent])
                offering = True
            ctx.set(dut.i.valid, offering)
            ready = ready_prob >= 1.0 or bool(rng.random() < ready_prob)
            ctx.set(dut.o.ready, ready)
            if offering and ctx.get(dut.i.ready):
                accepted.append(cycle)
                sent += 1
                offering = False
            if ctx.get(dut.o.valid):
                payload = ctx.get(dut.o.payload.as_value())
                if held is None:
                    first_valid.append(cycle)
                assert held is None or payload == held, f"cycle {cycle}: output changed while held"
                held = payload
                if ready:
                    outs.append(unpack_output(lanes, payload))
                    held = None
            else:
                assert held is None, f"cycle {cycle}: o.valid dropped before o.ready"
            await ctx.tick()
            cycle += 1
            assert cycle < max_cycles, "simulation ran too long"

    sim = Simulator(dut)
    sim.add_clock(1e-9)
    sim.add_testbench(bench)
    sim.run()
    return np.array(outs, dtype=np.uint32).reshape(-1, lanes), accepted, first_valid


def as_vectors(values, lanes=LANES):
    values = np.asarray(values, dtype=np.uint32)
    extra = (-len(values)) % lanes
    if extra:
        values = np.concatenate([values, values[:extra]])
    return values.reshape(-1, lanes)


def requests_for(op, rng):
    """Special-value vectors and random vectors for one op (4 lanes)."""
    zero = np.zeros(LANES, np.uint32)
    if op in (VectorOp.ADD, VectorOp.SUB, VectorOp.MUL, VectorOp.MAX):
        sa, sb = pairs(FEW_SPECIALS)
        if op is VectorOp.MUL:
            ra, rb = g32.random32(rng, 64, 60, 200), g32.random32(rng, 64, 0, 255)
        else:
            ra, rb = gfp.random32_add_pairs(rng, 64)
        a = as_vectors(np.concatenate([sa, ra]))
        b = as_vectors(np.concatenate([sb, rb]))
        return [(op, a[k], b[k], k % 7 == 3) for k in range(len(a))]
    if op is VectorOp.CVT16TO32:
        vals = np.concatenate([gfp.special_values16(),
                               rng.integers(0, 1 << 16, 40)]).astype(np.uint32)
    elif op is VectorOp.CVT32TO16:
        vals = np.concatenate([SPECIALS, gfp.random32_cvt(rng, 40)])
    elif op is VectorOp.EXP:
        vals = np.concatenate([SPECIALS, f32bits(rng.uniform(-110, 95, 40)),
                               f32bits([-87.5, -100.0, -103.97, 88.72, 88.73, -0.34657, 0.34658])])
    elif op is VectorOp.GELU:  # (its EXP and RECIP steps see all specials in their own tests)
        vals = np.concatenate([FEW_SPECIALS, f32bits(rng.uniform(-12, 12, 28)),
                               f32bits([-10.1, -10.05, 1e-30, -3.0])])
    elif op in (VectorOp.RECIP, VectorOp.RSQRT):
        vals = np.concatenate([SPECIALS, g32.random32(rng, 40),
                               f32bits([1.0, 2.0, 4.0, 1.9999999, 3.9999998, 0.75, 1e-40,
                                        2.0 ** -149])])
    else:  # SUM, RMAX
        vals = np.concatenate([SPECIALS, f32bits(rng.standard_normal(40) * 100),
                               g32.random32(rng, 40, 120, 135)])
    a = as_vectors(vals)
    return [(op, a[k], zero, False) for k in range(len(a))]


@pytest.fixture(scope="module")
def all_ops_run():
    """All ops back to back (o.ready high) in one simulation of a 4-lane unit."""
    rng = np.random.default_rng(11)
    requests = []
    for op in VectorOp:
        requests += requests_for(op, rng)
    requests.append((12, np.arange(LANES, dtype=np.uint32) + 0x40000000,
                     np.zeros(LANES, np.uint32), False))  # undefined opcode: copies a
    outs, accepted, first_valid = run_requests(LANES, requests)
    return requests, outs, accepted, first_valid


def expected(requests):
    return np.array([golden.execute(op, a, b, sb) for op, a, b, sb in requests], dtype=np.uint32)


@pytest.mark.parametrize("op", list(VectorOp), ids=lambda op: op.name)
def test_op_bit_exact(all_ops_run, op):
    requests, outs, _, _ = all_ops_run
    mine = [k for k, r in enumerate(requests) if r[0] == op]
    assert len(mine) >= 10
    want = expected([requests[k] for k in mine])
    got = outs[mine]
    bad = np.nonzero((got != want).any(axis=1))[0]
    if len(bad):
        lines = []
        for j in bad[:6]:
            _, a, b, sb = requests[mine[j]]
            lines.append(f"a={[hex(int(v)) for v in a]} b={[hex(int(v)) for v in b]} sb={sb}: "
                         f"got {[hex(int(v)) for v in got[j]]}, "
                         f"want {[hex(int(v)) for v in want[j]]}")
        pytest.fail(f"{op.name}: {len(bad)}/{len(mine)} vectors differ:\n" + "\n".join(lines))


def test_undefined_opcode_copies_a(all_ops_run):
    requests, outs, _, _ = all_ops_run
    assert np.array_equal(outs[-1], requests[-1][1])


def test_latency_and_spacing(all_ops_run):
    """o.ready high: each op's result appears latency_for(op) clocks after its input
    transfer, and the next op transfers steps_for(op) clocks later (back to back)."""
    requests, _, accepted, first_valid = all_ops_run
    for k, (op, *_rest) in enumerate(requests):
        op = op if isinstance(op, VectorOp) else None
        lat = latency_for(op, LANES) if op is not None else 2
        assert first_valid[k] - accepted[k] == lat, f"request {k} ({op}): latency"
        if k + 1 < len(requests):
            steps = steps_for(op, LANES) if op is not None else 1
            assert accepted[k + 1] - accepted[k] == steps, f"request {k} ({op}): spacing"


def test_documented_latencies():
    table = {VectorOp.ADD: 2, VectorOp.SUB: 2, VectorOp.MUL: 2, VectorOp.MAX: 2,
             VectorOp.EXP: 23, VectorOp.RECIP: 13, VectorOp.RSQRT: 16, VectorOp.GELU: 42,
             VectorOp.CVT16TO32: 2, VectorOp.CVT32TO16: 2}
    for op, lat in table.items():
        assert latency_for(op, LANES) == lat
    for lanes, lat in ((1, 2), (2, 2), (4, 3), (5, 4), (8, 4), (128, 8)):
        assert latency_for(VectorOp.SUM, lanes) == latency_for(VectorOp.RMAX, lanes) == lat


def test_backpressure():
    """Random input gaps and random o.ready: results in order, bit-exact, held stable."""
    rng = np.random.default_rng(12)
    pool = []
    for op in (VectorOp.ADD, VectorOp.MUL, VectorOp.SUM, VectorOp.RECIP, VectorOp.CVT32TO16,
               VectorOp.MAX, VectorOp.RMAX, VectorOp.SUB):
        pool += requests_for(op, rng)[-4:]
    order = rng.permutation(len(pool))
    requests = [pool[k] for k in order]
    for valid_prob, ready_prob, seed in ((0.6, 0.4, 1), (1.0, 0.25, 2)):
        outs, accepted, first_valid = run_requests(LANES, requests, valid_prob, ready_prob, seed)
        assert np.array_equal(outs, expected(requests))


def test_scalar_broadcast_operand():
    a = f32bits([1.5, -2.0, 3.25, 1e-3])
    b = f32bits([2.0, 100.0, -7.0, 0.5])
    requests = [(VectorOp.MUL, a, b, True), (VectorOp.SUB, a, b, True), (VectorOp.MUL, a, b, False)]
    outs, _, _ = run_requests(LANES, requests)
    assert np.array_equal(outs[0], f32bits(np.float32(a.view(np.float32)) * np.float32(2.0)))
    assert np.array_equal(outs[1], f32bits(a.view(np.float32) - np.float32(2.0)))
    assert np.array_equal(outs, expected(requests))


@pytest.mark.parametrize("lanes", [1, 3, 5])
def test_reductions_any_lane_count(lanes):
    """Tree reductions with lanes that are not a power of two (a lane without a partner
    passes its value up), results broadcast to every lane."""
    rng = np.random.default_rng(20 + lanes)
    requests = []
    for _ in range(6):
        a = f32bits(rng.standard_normal(lanes) * 10)
        requests += [(VectorOp.SUM, a, a, False), (VectorOp.RMAX, a, a, False),
                     (VectorOp.ADD, a, a[::-1].copy(), True)]
    outs, accepted, first_valid = run_requests(lanes, requests)
    assert np.array_equal(outs, expected(requests))
    for k, (op, *_r) in enumerate(requests):
        assert first_valid[k] - accepted[k] == latency_for(op, lanes)


def test_softmax_sequence_on_rtl():
    """A 10-element softmax (3 chunks of 4, the last padded) driven as vector-unit ops on
    the RTL, bit-exact with the golden composition."""
    rng = np.random.default_rng(30)
    x = f32bits(rng.standard_normal(10) * 3)
    log = []

    def executor(op, a, b, sb):
        log.append((op, a, b, sb))
        return golden.execute(op, a, b, sb)

    want = golden.run(golden.softmax_program(x, LANES), executor)
    assert np.array_equal(want, golden.softmax(x, LANES))
    # Replay the exact op sequence on the RTL: each op's inputs are the golden outputs
    # of the ops before it, so equal outputs everywhere mean an equal softmax.
    outs, _, _ = run_requests(LANES, log)
    assert np.array_equal(outs, expected(log))
    assert [op for op, *_ in log].count(VectorOp.EXP) == 3


# ---------------------------------------------------------------------------
# Golden model checks
# ---------------------------------------------------------------------------

def test_golden_error_bounds():
    """golden vs float64 within the bounds stated in sim.golden.vector (a worse
    algorithm, e.g. one Newton step or a lower-degree polynomial, fails these)."""
    measured = golden.measure_errors(n=20_000, seed=3, lanes=LANES)
    assert set(measured) == set(golden.ERROR_BOUNDS)
    for name, (metric, value) in measured.items():
        assert value <= golden.ERROR_BOUNDS[name][1], f"{name}: {value} > bound"


def mantissa_sweep(stride):
    """RECIP and RSQRT over every ``stride``-th binary32 mantissa (normal results scale
    exactly, so this covers them all with stride 1)."""
    mant = np.arange(0, 1 << 23, stride, dtype=np.uint32) | np.uint32(0x3F800000)
    err = golden.ulp_error(golden.recip(mant), 1.0 / g32.f32(mant).astype(np.float64))
    assert err.max() <= golden.ERROR_BOUNDS["recip"][1]
    for x in (mant, mant + np.uint32(1 << 23)):
        err = golden.ulp_error(golden.rsqrt(x), 1.0 / np.sqrt(g32.f32(x).astype(np.float64)))
        assert err.max() <= golden.ERROR_BOUNDS["rsqrt"][1]


def test_golden_mantissa_sweep():
    mantissa_sweep(61)


@pytest.mark.slow
def test_golden_exhaustive_mantissas():
    mantissa_sweep(1)


def test_golden_special_values():
    def one(fn, v):
        return int(fn(f32bits([v]))[0])
    inf, ninf, nan = 0x7F800000, 0xFF800000, 0x7FC00000
    assert one(golden.exp, np.inf) == inf and one(golden.exp, -np.inf) == 0
    assert one(golden.exp, np.nan) == nan and one(golden.exp, 0.0) == 0x3F800000
    assert one(golden.exp, 89.0) == inf and one(golden.exp, -104.0) == 0
    assert one(golden.recip, 0.0) == inf and one(golden.recip, -0.0) == ninf
    assert one(golden.recip, -np.inf) == 0x80000000 and one(golden.recip, 1.0) == 0x3F800000
    assert one(golden.rsqrt, -0.0) == ninf and one(golden.rsqrt, -1.0) == nan
    assert one(golden.rsqrt, np.inf) == 0 and one(golden.rsqrt, 4.0) == 0x3F000000
    assert one(golden.gelu, -np.inf) == 0x80000000 and one(golden.gelu, np.inf) == inf
    assert one(golden.gelu, -20.0) == 0x80000000 and one(golden.gelu, 0.0) == 0


def test_golden_tree_matches_pim_tree():
    """The vector unit's SUM tree is the PIM MAC unit's pairwise tree."""
    rng = np.random.default_rng(6)
    v = f32bits(rng.standard_normal((50, 16)) * 1000)
    assert np.array_equal(golden.tree_reduce(v, gfp.fp32_add)[:, 0], gpim.tree_sum(v))


def test_golden_compositions():
    rng = np.random.default_rng(7)
    for n in (10, 64, 100):
        z = (rng.standard_normal(n) * 3).astype(np.float32)
        p = golden.softmax(z.view(np.uint32), 8).view(np.float32).astype(np.float64)
        ref = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
        assert np.allclose(p, ref, rtol=1e-5) and len(p) == n
        g, b = np.ones(n, np.float32), np.zeros(n, np.float32)
        y = golden.layernorm(z.view(np.uint32), g.view(np.uint32), b.view(np.uint32), 1e-5, 8)
        ref = (z - z.astype(np.float64).mean()) / np.sqrt(z.astype(np.float64).var() + 1e-5)
        assert np.allclose(y.view(np.float32), ref, atol=1e-5)
    h = (rng.standard_normal(37) * 10).astype(np.float16)
    s = golden.residual_add(h.view(np.uint16), h.view(np.uint16), 8, fp16=True)
    assert np.array_equal(s.view(np.float16), h * np.float16(2))
    # the FP16 softmax is the FP32 one rounded (CVT ops at both ends)
    x16 = (rng.standard_normal(20) * 2).astype(np.float16)
    p16 = golden.softmax(x16.view(np.uint16), 8, fp16=True)
    p32 = golden.softmax(x16.astype(np.float32).view(np.uint32), 8)
    assert np.array_equal(p16, gfp.fp32_to_fp16(p32))


def test_error_report_prints(capsys):
    golden.error_report(n=4000, lanes=LANES)
    text = capsys.readouterr().out
    assert "softmax" in text and "EXCEEDED" not in text
