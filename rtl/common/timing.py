from amaranth.hdl import Module, Signal, Mux
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out


class TimingCounter(wiring.Component):
    """Counts down the cycles until an operation is allowed again.

    Parameters: ``max_cycles``, the largest spacing ever loaded.
    Ports: ``load`` (In), ``cycles`` (In): on a cycle with ``load`` asserted, the operation
    becomes allowed ``cycles`` clocks later (cycles >= 1); a shorter load never shortens a
    pending wait. ``ready`` (Out) is combinational from the count register.
    """

    def __init__(self, max_cycles: int):
        self._width = max(1, max_cycles.bit_length())
        super().__init__({"load": In(1), "cycles": In(self._width), "ready": Out(1)})

    def elaborate(self, platform):
        m = Module()
        count = Signal(self._width)
        left = Mux(count == 0, 0, count - 1)
        with m.If(self.load & (self.cycles - 1 > left)):
            m.d.sync += count.eq(self.cycles - 1)
        with m.Else():
            m.d.sync += count.eq(left)
        m.d.comb += self.ready.eq(count == 0)
        return m
