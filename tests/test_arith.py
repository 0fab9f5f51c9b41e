"""Unit tests of the bit-exact FP components against the numpy golden model.

Uses Amaranth's Python simulator (combinational, no clock). For each
component: all pairs of special values (all specials for the converter) plus
random operands from several distributions, compared bit for bit.
"""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from amaranth.sim import Simulator  # noqa: E402

from rtl.arith import FP16Multiplier, FP32Adder, FP32ToFP16  # noqa: E402
from rtl.arith import PipelinedFP16Multiplier, PipelinedFP32Adder, PipelinedFP32ToFP16  # noqa: E402
from rtl.arith.pipelined import ADDER_CUTS, CONVERTER_CUTS, MULTIPLIER_CUTS  # noqa: E402
from sim.golden import fp as golden  # noqa: E402

N_RANDOM = 4000


def _simulate(dut, inputs, output):
    """Drive ``inputs`` (dict port-name -> uint array) and collect ``output``."""
    names = list(inputs)
    cols = [inputs[n].tolist() for n in names]
    ports = [getattr(dut, n) for n in names]
    out_port = getattr(dut, output)
    results = []

    async def bench(ctx):
        for vals in zip(*cols):
            for port, v in zip(ports, vals):
                ctx.set(port, v)
            results.append(ctx.get(out_port))

    sim = Simulator(dut)
    sim.add_testbench(bench)
    sim.run()
    return np.array(results, dtype=np.uint64)


def _check(got, expected, operands, width):
    expected = expected.astype(np.uint64)
    bad = np.nonzero(got != expected)[0]
    if len(bad):
        lines = []
        for i in bad[:8]:
            ops = ", ".join(f"0x{int(o[i]):0{width}X}" for o in operands)
            lines.append(f"({ops}) -> got 0x{int(got[i]):X}, expected 0x{int(expected[i]):X}")
        pytest.fail(f"{len(bad)}/{len(got)} mismatches:\n" + "\n".join(lines))


def _pairs(vals):
    a, b = np.meshgrid(vals, vals, indexing="ij")
    return a.ravel(), b.ravel()


# --------------------------------------------------------------------------
# Golden-model self checks
# --------------------------------------------------------------------------


def test_golden_fp16_mul_exact():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 1 << 16, 20000, dtype=np.uint16)
    b = rng.integers(0, 1 << 16, 20000, dtype=np.uint16)
    fa = a.view(np.float16).astype(np.float64)
    fb = b.view(np.float16).astype(np.float64)
    fin = np.isfinite(fa) & np.isfinite(fb)
    p = golden.fp16_mul(a, b).view(np.float32).astype(np.float64)
    assert np.array_equal(p[fin], fa[fin] * fb[fin])
    assert golden.fp16_mul(np.array([0x7C00], np.uint16), np.array([0x0000], np.uint16))[0] == golden.canonical_nan32


def test_golden_nan_canonical():
    s32 = golden.special_values32()
    a, b = _pairs(s32)
    out = golden.fp32_add(a, b)
    nan = np.isnan(out.view(np.float32))
    assert nan.any() and np.all(out[nan] == golden.canonical_nan32)
    h = golden.fp32_to_fp16(s32)
    nan = np.isnan(h.view(np.float16))
    assert nan.any() and np.all(h[nan] == golden.canonical_nan16)


def test_golden_known_values():
    u32 = lambda *v: np.array(v, dtype=np.uint32)  # noqa: E731
    # 1 + 2^-24 ties to even -> 1.0; 1 + 3*2^-24 -> 1 + 2^-22
    assert golden.fp32_add(u32(0x3F800000), u32(0x33800000))[0] == 0x3F800000
    assert golden.fp32_add(u32(0x3F800001), u32(0x33800000))[0] == 0x3F800002
    # x + (-x) = +0, -0 + -0 = -0, subnormal sum
    assert golden.fp32_add(u32(0xC0000000), u32(0x40000000))[0] == 0
    assert golden.fp32_add(u32(0x80000000), u32(0x80000000))[0] == 0x80000000
    assert golden.fp32_add(u32(0x00000001), u32(0x00000001))[0] == 0x00000002
    # overflow after rounding
    assert golden.fp32_add(u32(0x7F7FFFFF), u32(0x73000000))[0] == 0x7F800000
    # conversions
    assert list(golden.fp32_to_fp16(u32(0x477FF000, 0x477FEFFF, 0x33000000, 0x33000001, 0x387FF000))) == [
        0x7C00, 0x7BFF, 0x0000, 0x0001, 0x0400]


def test_special_value_sets():
    s16, s32 = golden.special_values16(), golden.special_values32()
    assert s16.dtype == np.uint16 and s32.dtype == np.uint32
    for v in (0x0000, 0x8000, 0x0001, 0x03FF, 0x0400, 0x7BFF, 0x7C00, 0xFC00, 0x7E00, 0x7C01):
        assert v in s16
    for v in (0x0, 0x80000000, 0x1, 0x007FFFFF, 0x00800000, 0x7F7FFFFF, 0x7F800000, 0xFF800000, 0x7FC00000):
        assert v in s32


# --------------------------------------------------------------------------
# Hardware vs golden
# --------------------------------------------------------------------------


def test_fp16_multiplier():
    rng = np.random.default_rng(1)
    sa, sb = _pairs(golden.special_values16())
    ra, rb = golden.random16(rng, N_RANDOM), golden.random16(rng, N_RANDOM)
    a, b = np.concatenate([sa, ra]), np.concatenate([sb, rb])
    got = _simulate(FP16Multiplier(), {"a": a, "b": b}, "p")
    _check(got, golden.fp16_mul(a, b), (a, b), 4)


def test_fp32_adder():
    rng = np.random.default_rng(2)
    sa, sb = _pairs(golden.special_values32())
    ra, rb = golden.random32_add_pairs(rng, N_RANDOM)
    a, b = np.concatenate([sa, ra]), np.concatenate([sb, rb])
    got = _simulate(FP32Adder(), {"a": a, "b": b}, "s")
    _check(got, golden.fp32_add(a, b), (a, b), 8)


def test_fp32_to_fp16():
    rng = np.random.default_rng(3)
    a = np.concatenate([golden.special_values32(), golden.random32_cvt(rng, N_RANDOM)])
    # also every binary16 value widened to binary32, and the midpoints between
    # consecutive binary16 values (ties) and their neighbours
    h = np.arange(0, 1 << 16, 7, dtype=np.uint32).astype(np.uint16)
    wide = h.view(np.float16).astype(np.float32).view(np.uint32)
    fin = np.isfinite(h.view(np.float16)) & ((h & 0x7FFF) < 0x7BFF)
    mid = ((h[fin].view(np.float16).astype(np.float64) + (h[fin] + 1).astype(np.uint16).view(np.float16).astype(np.float64)) / 2)
    mid = mid.astype(np.float32).view(np.uint32)
    a = np.concatenate([a, wide, mid, mid + 1, mid - 1]).astype(np.uint32)
    got = _simulate(FP32ToFP16(), {"a": a}, "h")
    _check(got, golden.fp32_to_fp16(a), (a,), 8)


# --------------------------------------------------------------------------
# Pipelined versions (rtl/arith/pipelined.py): same results, ``stages - 1`` clocks later
# --------------------------------------------------------------------------


def _simulate_pipelined(dut, inputs, output, stages):
    """Drive one operand set per clock; the output of set i is read ``stages - 1``
    clocks later (combinational from the last internal register)."""
    names = list(inputs)
    cols = [inputs[n].tolist() for n in names]
    ports = [getattr(dut, n) for n in names]
    out_port = getattr(dut, output)
    count = len(cols[0])
    results = []

    async def bench(ctx):
        for cycle in range(count + stages - 1):
            if cycle < count:
                for port, col in zip(ports, cols):
                    ctx.set(port, col[cycle])
            if cycle >= stages - 1:
                results.append(ctx.get(out_port))
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return np.array(results, dtype=np.uint64)


def _adder_operands(seed, specials, randoms):
    rng = np.random.default_rng(seed)
    sa, sb = _pairs(golden.special_values32())
    pick = rng.permutation(len(sa))[:specials] if specials < len(sa) else np.arange(len(sa))
    ra, rb = golden.random32_add_pairs(rng, randoms)
    # and exact cancellations, +-0 pairs and a carry into infinity
    ca = np.array([0x3F800001, 0x00000000, 0x80000000, 0x7F7FFFFF, 0x00800000], np.uint32)
    cb = np.array([0xBF800001, 0x80000000, 0x80000000, 0x7F7FFFFF, 0x807FFFFF], np.uint32)
    return (np.concatenate([sa[pick], ra, ca]).astype(np.uint32),
            np.concatenate([sb[pick], rb, cb]).astype(np.uint32))


def test_pipelined_fp32_adder_combinational_all_specials():
    """stages = 1 (no register): every pair of special values and random operands."""
    a, b = _adder_operands(4, 10 ** 6, N_RANDOM)
    got = _simulate(PipelinedFP32Adder(1), {"a": a, "b": b}, "s")
    _check(got, golden.fp32_add(a, b), (a, b), 8)


@pytest.mark.parametrize("stages", sorted(set(ADDER_CUTS) - {1}))
def test_pipelined_fp32_adder(stages):
    """Each stage count, one operand pair per clock, back to back, bit for bit."""
    a, b = _adder_operands(10 + stages, 1500, 1500)
    got = _simulate_pipelined(PipelinedFP32Adder(stages), {"a": a, "b": b}, "s", stages)
    _check(got, golden.fp32_add(a, b), (a, b), 8)


@pytest.mark.parametrize("stages", sorted(MULTIPLIER_CUTS))
def test_pipelined_fp16_multiplier(stages):
    rng = np.random.default_rng(20 + stages)
    sa, sb = _pairs(golden.special_values16())
    ra, rb = golden.random16(rng, 1500), golden.random16(rng, 1500)
    a, b = np.concatenate([sa, ra]), np.concatenate([sb, rb])
    dut = PipelinedFP16Multiplier(stages)
    got = (_simulate(dut, {"a": a, "b": b}, "p") if stages == 1 else
           _simulate_pipelined(dut, {"a": a, "b": b}, "p", stages))
    _check(got, golden.fp16_mul(a, b), (a, b), 4)


@pytest.mark.parametrize("stages", sorted(CONVERTER_CUTS))
def test_pipelined_fp32_to_fp16(stages):
    rng = np.random.default_rng(30 + stages)
    a = np.concatenate([golden.special_values32(), golden.random32_cvt(rng, 2500)])
    h = np.arange(0, 1 << 16, 61, dtype=np.uint32).astype(np.uint16)   # ties and neighbours
    fin = np.isfinite(h.view(np.float16)) & ((h & 0x7FFF) < 0x7BFF)
    mid = ((h[fin].view(np.float16).astype(np.float64)
            + (h[fin] + 1).astype(np.uint16).view(np.float16).astype(np.float64)) / 2)
    mid = mid.astype(np.float32).view(np.uint32)
    a = np.concatenate([a, mid, mid + 1, mid - 1]).astype(np.uint32)
    dut = PipelinedFP32ToFP16(stages)
    got = (_simulate(dut, {"a": a}, "h") if stages == 1 else
           _simulate_pipelined(dut, {"a": a}, "h", stages))
    _check(got, golden.fp32_to_fp16(a), (a,), 8)


def test_pipelined_stage_counts_are_checked():
    with pytest.raises(ValueError, match="stages"):
        PipelinedFP32Adder(7)
    with pytest.raises(ValueError, match="stages"):
        PipelinedFP16Multiplier(5)
    with pytest.raises(ValueError, match="stages"):
        PipelinedFP32ToFP16(3)
