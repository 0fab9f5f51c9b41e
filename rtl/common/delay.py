from amaranth.hdl import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out


class DelayLine(wiring.Component):
    """A fixed pipeline: ``o_data``/``o_valid`` equal ``i_data``/``i_valid`` of ``latency``
    clocks ago (latency 0 is a wire)."""

    def __init__(self, width: int, latency: int):
        if latency < 0:
            raise ValueError(f"DelayLine latency must be >= 0, got {latency}")
        self.width, self.latency = width, latency
        super().__init__({"i_data": In(width), "i_valid": In(1),
                          "o_data": Out(width), "o_valid": Out(1)})

    def elaborate(self, platform):
        m = Module()
        data, valid = self.i_data, self.i_valid
        for stage in range(self.latency):
            next_data = Signal(self.width, name=f"data_{stage}")
            next_valid = Signal(name=f"valid_{stage}")
            m.d.sync += [next_data.eq(data), next_valid.eq(valid)]
            data, valid = next_data, next_valid
        m.d.comb += [self.o_data.eq(data), self.o_valid.eq(valid)]
        return m
