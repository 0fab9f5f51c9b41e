"""All-bank refresh timing: due every tREFI, with the time left and how late it went."""
from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out


class Refresher(wiring.Component):
    """Ports: ``issued`` (In): a REF went out this cycle. ``due`` (Out): tREFI clocks have
    passed since the last REF (or reset): the controller must close every buffer and
    refresh. ``until_due`` (Out): clocks left before ``due`` (0 once due). ``late`` (Out):
    clocks past due, valid with ``issued``. All outputs are combinational from one counter."""

    def __init__(self, config):
        self.interval = config.timing.tREFI
        limit = self.interval + config.timing.refresh_max_late + 1
        super().__init__({"issued": In(1), "due": Out(1), "until_due": Out(range(limit)),
                          "late": Out(range(limit))})
        self._limit = limit

    def elaborate(self, platform):
        m = Module()
        since = Signal(range(self._limit))
        with m.If(self.issued):
            m.d.sync += since.eq(1)
        with m.Elif(since != self._limit - 1):
            m.d.sync += since.eq(since + 1)
        due = since >= self.interval
        m.d.comb += [self.due.eq(due),
                     self.until_due.eq(Mux(due, 0, self.interval - since)),
                     self.late.eq(Mux(due, since - self.interval, 0))]
        return m
