"""The GEMV unit of one bank: FP16 multipliers, an FP32 adder tree, an FP32 accumulator."""
from amaranth.hdl import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from ..arith import FP16Multiplier, FP32Adder, FP32ToFP16


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
      ``result``     Out(16), ``result_valid`` Out(1): ``LATENCY`` clocks after ``readres``.
    Pipeline: multiply (1 register), one register per tree level, accumulate, result.

    ``datapath`` False (timing-only, ``DeviceConfig.datapath``): no multipliers, adder tree
    or accumulator; ``comp``/``readres`` run down the same pipeline, so ``result_valid``
    comes on the same clock, with ``result`` zero.
    """

    def __init__(self, lanes: int, datapath: bool = True):
        self.lanes = lanes
        self.datapath = datapath
        self.latency = self.latency_for(lanes)
        super().__init__({"a": In(16 * lanes), "b": In(16 * lanes), "comp": In(1),
                          "readres": In(1), "result": Out(16), "result_valid": Out(1)})

    @staticmethod
    def latency_for(lanes: int) -> int:
        """Clocks from ``readres`` to ``result_valid``: products, tree levels, acc, result."""
        return tree_levels(lanes) + 2

    def elaborate(self, platform):
        m = Module()
        comp, readres = self.comp, self.readres
        if not self.datapath:     # timing-only: the strobes' pipeline, no values
            for name in ["mul"] + [f"level{level + 1}" for level in range(tree_levels(self.lanes))]:
                comp, readres = self._delay(m, comp, readres, name)
            m.d.sync += self.result_valid.eq(readres)
            return m
        values = []
        for lane in range(self.lanes):
            mul = m.submodules[f"mul{lane}"] = FP16Multiplier()
            product = Signal(32, name=f"product{lane}")
            m.d.comb += [mul.a.eq(self.a[16 * lane:16 * lane + 16]),
                         mul.b.eq(self.b[16 * lane:16 * lane + 16])]
            m.d.sync += product.eq(mul.p)
            values.append(product)
        comp, readres = self._delay(m, comp, readres, "mul")
        level = 0
        while len(values) > 1:
            level += 1
            sums = []
            for pair in range(len(values) // 2):
                add = m.submodules[f"add{level}_{pair}"] = FP32Adder()
                total = Signal(32, name=f"sum{level}_{pair}")
                m.d.comb += [add.a.eq(values[2 * pair]), add.b.eq(values[2 * pair + 1])]
                m.d.sync += total.eq(add.s)
                sums.append(total)
            values = sums
            comp, readres = self._delay(m, comp, readres, f"level{level}")
        acc = Signal(32)
        m.submodules.acc_add = acc_add = FP32Adder()
        m.submodules.round = to_fp16 = FP32ToFP16()
        m.d.comb += [acc_add.a.eq(acc), acc_add.b.eq(values[0]), to_fp16.a.eq(acc)]
        with m.If(readres):
            m.d.sync += [acc.eq(0), self.result.eq(to_fp16.h)]
        with m.Elif(comp):
            m.d.sync += acc.eq(acc_add.s)
        m.d.sync += self.result_valid.eq(readres)
        return m

    @staticmethod
    def _delay(m, comp, readres, name):
        comp_next, readres_next = Signal(name=f"comp_{name}"), Signal(name=f"readres_{name}")
        m.d.sync += [comp_next.eq(comp), readres_next.eq(readres)]
        return comp_next, readres_next
