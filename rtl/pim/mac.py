"""The GEMV unit of one bank: FP16 multipliers, an FP32 adder tree, an FP32 accumulator."""
from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from ..arith import (FP16Multiplier, FP32Adder, FP32ToFP16, PipelinedFP16Multiplier,
                     PipelinedFP32Adder, PipelinedFP32ToFP16)
from ..config.pim import PimUnit


def tree_levels(lanes: int) -> int:
    return (lanes - 1).bit_length()


class PimMacUnit(wiring.Component):
    """``lanes`` FP16 x FP16 products, summed by a pairwise FP32 tree, accumulated in FP32.

    Order of operations (the golden model follows it): level 1 adds products (0,1), (2,3),
    ...; level j adds neighbouring sums of level j-1; then ``acc = acc + tree``.
    Products of FP16 values are exact in FP32, so only the adds round (RNE).

    Ports (all sampled on the same clock as ``comp``/``readres``):
      ``a``, ``b``   In(16 * lanes): row chunk and global-buffer chunk, lane i in bits
                     [16 i, 16 i + 16).
      ``comp``       In(1): accumulate ``dot(a, b)``.
      ``readres``    In(1): emit the accumulator rounded to FP16 and clear it; it sees every
                     ``comp`` issued on an earlier cycle.
      ``result``     Out(16), ``result_valid`` Out(1): ``latency`` clocks after ``readres``.
    Pipeline: multiply (``mul_stages`` clocks), each tree level (``add_stages``),
    accumulate and result (``acc_stages``), FP16 rounding of the result (``round_stages``
    clocks; 2: :class:`~rtl.arith.PipelinedFP32ToFP16`); all 1 by default (one register
    each).

    Pipelined accumulator (``acc_stages`` = N > 1, :class:`~rtl.arith.PipelinedFP32Adder`):
    a COMP reads ``acc`` and writes ``acc + tree`` N clocks later, so COMPs must come at
    least N clocks apart (``rtl.config.pim.check_pim_timing``). READRES goes down N - 1
    more registers before it reads and clears ``acc``, so it still sees every earlier
    COMP; the first COMP after a READRES adds to +0 instead of ``acc`` (a flag), so it may
    follow READRES on the next clock. Each add has the same operands as with N = 1.

    ``datapath`` False (timing-only, ``DeviceConfig.datapath``): no multipliers, adder tree
    or accumulator; ``comp``/``readres`` run down the same pipeline, so ``result_valid``
    comes on the same clock, with ``result`` zero.
    """

    def __init__(self, lanes: int, datapath: bool = True, add_stages: int = 1,
                 acc_stages: int = 1, mul_stages: int = 1, round_stages: int = 1):
        self.lanes = lanes
        self.datapath = datapath
        self.add_stages, self.acc_stages, self.mul_stages = add_stages, acc_stages, mul_stages
        self.round_stages = round_stages
        self.latency = self.latency_for(lanes, add_stages, acc_stages, mul_stages, round_stages)
        super().__init__({"a": In(16 * lanes), "b": In(16 * lanes), "comp": In(1),
                          "readres": In(1), "result": Out(16), "result_valid": Out(1)})

    @classmethod
    def for_config(cls, config) -> "PimMacUnit":
        """The unit of a DeviceConfig's banks (lanes, pipeline stages, datapath)."""
        p = config.pim
        return cls(p.lanes, datapath=config.datapath, add_stages=p.add_stages,
                   acc_stages=p.acc_stages, mul_stages=p.mul_stages,
                   round_stages=p.round_stages)

    @staticmethod
    def latency_for(lanes: int, add_stages: int = 1, acc_stages: int = 1,
                    mul_stages: int = 1, round_stages: int = 1) -> int:
        """Clocks from ``readres`` to ``result_valid``: products, tree levels, acc, result
        (``PimUnit.mac_latency``)."""
        return PimUnit(lanes=lanes, add_stages=add_stages, acc_stages=acc_stages,
                       mul_stages=mul_stages, round_stages=round_stages).mac_latency

    def elaborate(self, platform):
        m = Module()
        comp, readres = self.comp, self.readres
        if not self.datapath:     # timing-only: the strobes' pipeline, no values
            comp, readres = self._delay(m, comp, readres, "mul", self.mul_stages)
            for level in range(tree_levels(self.lanes)):
                comp, readres = self._delay(m, comp, readres, f"level{level + 1}",
                                            self.add_stages)
            comp, readres = self._delay(m, comp, readres, "acc",
                                        self.acc_stages - 1 + self.round_stages - 1)
            m.d.sync += self.result_valid.eq(readres)
            return m
        values = []
        for lane in range(self.lanes):
            mul = m.submodules[f"mul{lane}"] = (
                FP16Multiplier() if self.mul_stages == 1 else
                PipelinedFP16Multiplier(self.mul_stages))
            product = Signal(32, name=f"product{lane}")
            m.d.comb += [mul.a.eq(self.a[16 * lane:16 * lane + 16]),
                         mul.b.eq(self.b[16 * lane:16 * lane + 16])]
            m.d.sync += product.eq(mul.p)
            values.append(product)
        comp, readres = self._delay(m, comp, readres, "mul", self.mul_stages)
        level = 0
        while len(values) > 1:
            level += 1
            sums = []
            for pair in range(len(values) // 2):
                add = m.submodules[f"add{level}_{pair}"] = self._adder(self.add_stages)
                total = Signal(32, name=f"sum{level}_{pair}")
                m.d.comb += [add.a.eq(values[2 * pair]), add.b.eq(values[2 * pair + 1])]
                m.d.sync += total.eq(add.s)
                sums.append(total)
            values = sums
            comp, readres = self._delay(m, comp, readres, f"level{level}", self.add_stages)
        acc = Signal(32)
        m.submodules.acc_add = acc_add = self._adder(self.acc_stages)
        m.submodules.round = to_fp16 = (FP32ToFP16() if self.round_stages == 1 else
                                        PipelinedFP32ToFP16(self.round_stages))
        m.d.comb += to_fp16.a.eq(acc)
        m.d.comb += acc_add.b.eq(values[0])
        if self.acc_stages == 1:
            m.d.comb += acc_add.a.eq(acc)
        else:
            fresh = Signal(init=1)     # no COMP since the last READRES: add to +0
            m.d.comb += acc_add.a.eq(Mux(fresh, 0, acc))
            with m.If(readres):
                m.d.sync += fresh.eq(1)
            with m.Elif(comp):
                m.d.sync += fresh.eq(0)
            comp, readres = self._delay(m, comp, readres, "acc", self.acc_stages - 1)
        readres_acc = readres
        with m.If(readres):
            m.d.sync += acc.eq(0)
        # the rounding's internal registers take the final sum on this clock
        _, readres = self._delay(m, comp, readres, "round", self.round_stages - 1)
        with m.If(readres):
            m.d.sync += self.result.eq(to_fp16.h)
        with m.If(comp & ~readres_acc):
            m.d.sync += acc.eq(acc_add.s)
        m.d.sync += self.result_valid.eq(readres)
        return m

    @staticmethod
    def _adder(stages):
        return FP32Adder() if stages == 1 else PipelinedFP32Adder(stages)

    @staticmethod
    def _delay(m, comp, readres, name, clocks=1):
        for step in range(clocks):
            suffix = name if clocks == 1 else f"{name}_{step}"
            comp_next = Signal(name=f"comp_{suffix}")
            readres_next = Signal(name=f"readres_{suffix}")
            m.d.sync += [comp_next.eq(comp), readres_next.eq(readres)]
            comp, readres = comp_next, readres_next
        return comp, readres
