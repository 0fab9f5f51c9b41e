"""Test wrapper: ``lanes`` parallel copies of each FP component.

Used by the Verilator/cocotb bit-exactness test so each simulation step checks
many operand sets at once. Purely combinational (latency 0, no clock).
"""

from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .fp import FP16Multiplier, FP32Adder, FP32ToFP16

__all__ = ["ArithLanes"]


class ArithLanes(wiring.Component):
    """``lanes`` independent FP16Multiplier / FP32Adder / FP32ToFP16 instances.

    Lane ``i`` of each bus occupies bits ``[w*i, w*(i+1))`` (w = 16 or 32):
      * ``mul_p[32i:32i+32] = FP16Multiplier(mul_a[16i:...], mul_b[16i:...])``
      * ``add_s[32i:32i+32] = FP32Adder(add_a[32i:...], add_b[32i:...])``
      * ``cvt_h[16i:16i+16] = FP32ToFP16(cvt_a[32i:...])``
    """

    def __init__(self, lanes: int = 64):
        self.lanes = lanes
        super().__init__({
            "mul_a": In(16 * lanes),
            "mul_b": In(16 * lanes),
            "mul_p": Out(32 * lanes),
            "add_a": In(32 * lanes),
            "add_b": In(32 * lanes),
            "add_s": Out(32 * lanes),
            "cvt_a": In(32 * lanes),
            "cvt_h": Out(16 * lanes),
        })

    def elaborate(self, platform):
        m = Module()
        for i in range(self.lanes):
            mul = m.submodules[f"mul{i}"] = FP16Multiplier()
            add = m.submodules[f"add{i}"] = FP32Adder()
            cvt = m.submodules[f"cvt{i}"] = FP32ToFP16()
            m.d.comb += [
                mul.a.eq(self.mul_a[16 * i:16 * (i + 1)]),
                mul.b.eq(self.mul_b[16 * i:16 * (i + 1)]),
                self.mul_p[32 * i:32 * (i + 1)].eq(mul.p),
                add.a.eq(self.add_a[32 * i:32 * (i + 1)]),
                add.b.eq(self.add_b[32 * i:32 * (i + 1)]),
                self.add_s[32 * i:32 * (i + 1)].eq(add.s),
                cvt.a.eq(self.cvt_a[32 * i:32 * (i + 1)]),
                self.cvt_h[16 * i:16 * (i + 1)].eq(cvt.h),
            ]
        return m
