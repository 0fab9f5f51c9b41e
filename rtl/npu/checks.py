"""The sequencer's dispatch checks (``Sequencer._checks``) in Python: which
:class:`NpuError` an instruction stops the core with, and why, from its fields and the
configuration alone. The decode compiler checks every program it makes with it
(:func:`sim.decode.run.check_dispatch`); ``tests/test_npu_checks.py`` holds it equal to
the RTL's check on random and boundary instructions."""
from __future__ import annotations

from ..controller.interface import MOST_GEMVS, most_comps
from ..isa.npu import PIM_OPS, Instruction, NpuOp
from .scratchpad import word_bursts, word_lanes
from .sequencer import NpuError
from .vector import VectorOp

__all__ = ["DispatchCheck"]

_FIRST_UNARY = VectorOp.EXP.value
_CVT16TO32 = VectorOp.CVT16TO32.value
_CVT32TO16 = VectorOp.CVT32TO16.value
_OK = (NpuError.NONE, "")


class DispatchCheck:
    """Called on an instruction: (the NpuError the core stops on at it, the reason), or
    (NONE, "") when it may run; the first failing check wins, in the sequencer's order.
    The configuration's limits are computed once: a million instructions take about a
    second."""

    def __init__(self, config):
        g, npu, bus = config.geometry, config.npu, config.bus
        self.spw, self.lanes, self.k = npu.scratchpad_words, word_lanes(config), word_bursts(config)
        self.burst, self.bursts = g.burst_bytes, g.capacity_bytes // g.burst_bytes
        self.array_rows, self.accumulator_rows = npu.array_rows, npu.accumulator_rows
        self.pim_limits = {"pim_op": len(PIM_OPS), "channel": g.channels, "rank": g.ranks,
                           "bankgroup": g.bankgroups, "bank": g.banks_per_group,
                           "row": g.rows, "column": bus.comps_per_row,
                           "comps": most_comps(config) + 1, "gemvs": MOST_GEMVS + 1}
        self._by_op = {NpuOp.DMA_LOAD: self._dma, NpuOp.DMA_STORE: self._dma,
                       NpuOp.GEMM: self._gemm, NpuOp.VECTOR: self._vector,
                       NpuOp.PIM: self._pim}

    def __call__(self, ins: Instruction) -> tuple[NpuError, str]:
        check = self._by_op.get(ins.op)
        return check(ins.args.get) if check else _OK

    def _dma(self, arg) -> tuple[NpuError, str]:
        hbm, sp, count, first = arg("hbm", 0), arg("sp", 0), arg("count", 0), arg("slice", 0)
        k = self.k
        if hbm % self.burst:
            return NpuError.HBM_ALIGN, f"hbm {hbm:#x} is not a multiple of {self.burst}"
        if count == 0 or first >= k:
            return NpuError.BAD_SHAPE, (f"count {count}" if count == 0
                                        else f"slice {first} of {k} bursts per word")
        if hbm // self.burst + count > self.bursts:
            return NpuError.HBM_RANGE, (f"bursts to {hbm // self.burst + count} of "
                                        f"{self.bursts}")
        last = sp + count - 1 if k == 1 or arg("spread", 0) else sp + (first + count - 1) // k
        if last >= self.spw:
            return NpuError.SCRATCHPAD_RANGE, f"scratchpad word {last} of {self.spw}"
        return _OK

    def _gemm(self, arg) -> tuple[NpuError, str]:
        m, k, n, lanes = arg("m", 0), arg("k", 0), arg("n", 0), self.lanes
        if not (m and k and n):
            return NpuError.BAD_SHAPE, f"m={m} k={k} n={n}"
        a_words, b_words = -(-k // lanes), -(-n // lanes)
        c_words = -(-n // (lanes // 2)) if arg("fp32", 0) else b_words
        for name, words in (("a", a_words), ("b", b_words), ("c", c_words)):
            pitch = arg(f"{name}_pitch", 0)
            if pitch < words:
                return NpuError.BAD_SHAPE, (f"{name}_pitch {pitch} is shorter than a row of "
                                            f"{words} words")
        if arg("acc", 0) and not arg("fp32", 0):
            return NpuError.BAD_SHAPE, "acc without fp32"
        if k > self.array_rows and m > self.accumulator_rows:
            return NpuError.BAD_SHAPE, (f"m={m} rows beyond the {self.accumulator_rows}-row "
                                        f"accumulator while k={k} spans several "
                                        f"{self.array_rows}-row tiles")
        for name, rows, words in (("a", m, a_words), ("b", k, b_words), ("c", m, c_words)):
            end = arg(name, 0) + (rows - 1) * arg(f"{name}_pitch", 0) + words
            if end > self.spw:
                return NpuError.SCRATCHPAD_RANGE, f"{name} reaches word {end - 1} of {self.spw}"
        return _OK

    def _vector(self, arg) -> tuple[NpuError, str]:
        vop, flags, imm, lanes = arg("vop", 0), arg("flags", 0), arg("imm", 0), self.lanes
        strided_a, strided_d = bool(flags & 4), bool(flags & 8)
        if strided_a or strided_d:
            group, lane0 = imm & 0xFF, (imm >> 8) & 0xFF
            a_lanes = lanes if vop == _CVT16TO32 else lanes // 2
            d_lanes = lanes if vop == _CVT32TO16 else lanes // 2
            if vop < _FIRST_UNARY:
                return NpuError.BAD_SHAPE, f"strided operand on vop {vop}, not a unary op"
            if group == 0:
                return NpuError.BAD_SHAPE, "strided group of 0 lanes"
            if (strided_a and lane0 + group > a_lanes) or (strided_d and lane0 + group > d_lanes):
                return NpuError.BAD_SHAPE, (f"lanes [{lane0}, {lane0 + group}) beyond a word "
                                            f"of {a_lanes if strided_a else d_lanes}")
        length = arg("length", 0)
        for name in ("a", "b", "d"):
            if arg(name, 0) + length > self.spw:
                return NpuError.SCRATCHPAD_RANGE, (f"{name} + length = "
                                                   f"{arg(name, 0) + length} > {self.spw}")
        return _OK

    def _pim(self, arg) -> tuple[NpuError, str]:
        for name, limit in self.pim_limits.items():
            if arg(name, 0) >= limit:
                return NpuError.BAD_PIM, f"{name}={arg(name, 0)} (at most {limit - 1})"
        if arg("sp", 0) >= self.spw:
            return NpuError.SCRATCHPAD_RANGE, f"sp {arg('sp', 0)} of {self.spw}"
        return _OK
