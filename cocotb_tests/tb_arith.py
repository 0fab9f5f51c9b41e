"""cocotb bit-exactness test of the FP components on Verilator.

The toplevel is :class:`rtl.arith.lanes.ArithLanes` (combinational, no clock):
each step drives ``lanes`` operand sets per component, waits 1 ns and compares
all outputs bit for bit with :mod:`sim.golden.fp`. At least ``NEUPIMS_ARITH_N``
(default 100,000) random operand sets per component, drawn from the mixed
distributions of the golden module, preceded by all pairs of special values.
Seed: env ``NEUPIMS_SEED`` (default 1).
"""

import os

import cocotb
import numpy as np
from cocotb.triggers import Timer

from sim.golden import fp as golden

N_OPS = int(os.environ.get("NEUPIMS_ARITH_N", "100000"))


def _seed():
    return int(os.environ.get("NEUPIMS_SEED", "1"))


def _pack(arr, width):
    dtype = {16: "<u2", 32: "<u4"}[width]
    return int.from_bytes(np.ascontiguousarray(arr, dtype=dtype).tobytes(), "little")


def _unpack(value, lanes, width):
    dtype = {16: "<u2", 32: "<u4"}[width]
    return np.frombuffer(int(value).to_bytes(lanes * width // 8, "little"), dtype=dtype)


def _pad(arr, lanes):
    """Pad to a multiple of ``lanes`` (with zeros) so every step is full."""
    extra = (-len(arr)) % lanes
    return np.concatenate([arr, np.zeros(extra, dtype=arr.dtype)])


def _lanes(dut):
    return len(dut.mul_a.value) // 16


async def _init(dut):
    for name in ("mul_a", "mul_b", "add_a", "add_b", "cvt_a"):
        getattr(dut, name).value = 0
    await Timer(1, "ns")


async def _run(dut, label, ins, in_widths, out_name, out_width, golden_fn):
    """Drive ``ins`` (dict port -> array) in chunks of ``lanes``; compare."""
    lanes = _lanes(dut)
    names = list(ins)
    arrays = [_pad(ins[n], lanes) for n in names]
    total = len(arrays[0])
    got = np.empty(total, dtype=np.uint32 if out_width == 32 else np.uint16)
    out = getattr(dut, out_name)
    ports = [getattr(dut, n) for n in names]
    for start in range(0, total, lanes):
        for port, arr, w in zip(ports, arrays, in_widths):
            port.value = _pack(arr[start:start + lanes], w)
        await Timer(1, "ns")
        got[start:start + lanes] = _unpack(out.value, lanes, out_width)
    expected = golden_fn(*arrays)
    bad = np.nonzero(got != expected)[0]
    dut._log.info("%s: %d operand sets checked in %d lanes, seed %d, %d mismatches",
                  label, total, lanes, _seed(), len(bad))
    if len(bad):
        lines = []
        for i in bad[:8]:
            ops = ", ".join(f"0x{int(a[i]):0{w // 4}X}" for a, w in zip(arrays, in_widths))
            lines.append(f"  {label}({ops}) = 0x{int(got[i]):0{out_width // 4}X}, "
                         f"expected 0x{int(expected[i]):0{out_width // 4}X}")
        raise AssertionError(f"{label}: {len(bad)}/{total} mismatches (seed {_seed()}):\n" + "\n".join(lines))


def _pairs(vals):
    a, b = np.meshgrid(vals, vals, indexing="ij")
    return a.ravel(), b.ravel()


@cocotb.test()
async def fp16_mul_bit_exact(dut):
    rng = np.random.default_rng([_seed(), 16])
    dut._log.info("NEUPIMS_SEED=%d, %d random operand sets per component", _seed(), N_OPS)
    await _init(dut)
    sa, sb = _pairs(golden.special_values16())
    a = np.concatenate([sa, golden.random16(rng, N_OPS)])
    b = np.concatenate([sb, golden.random16(rng, N_OPS)])
    await _run(dut, "fp16_mul", {"mul_a": a, "mul_b": b}, (16, 16), "mul_p", 32, golden.fp16_mul)


@cocotb.test()
async def fp32_add_bit_exact(dut):
    rng = np.random.default_rng([_seed(), 32])
    await _init(dut)
    sa, sb = _pairs(golden.special_values32())
    ra, rb = golden.random32_add_pairs(rng, N_OPS)
    a, b = np.concatenate([sa, ra]), np.concatenate([sb, rb])
    await _run(dut, "fp32_add", {"add_a": a, "add_b": b}, (32, 32), "add_s", 32, golden.fp32_add)


@cocotb.test()
async def fp32_to_fp16_bit_exact(dut):
    rng = np.random.default_rng([_seed(), 1632])
    await _init(dut)
    a = np.concatenate([golden.special_values32(), golden.random32_cvt(rng, N_OPS)])
    await _run(dut, "fp32_to_fp16", {"cvt_a": a}, (32,), "cvt_h", 16, golden.fp32_to_fp16)
