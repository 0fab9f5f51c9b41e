"""All-bank refresh timing: due every refresh interval, with the time left and how late it went."""
from amaranth.hdl import Array, Module, Mux, Signal
from amaranth.lib import enum, wiring
from amaranth.lib.wiring import In, Out

from ..config.dram import REFRESH_RATES


class RefreshRate(enum.Enum, shape=2):
    """The ``refresh_rate`` input: the refresh interval is ``tREFI // multiplier``."""
    X1 = 0
    X2 = 1
    X4 = 2

    @classmethod
    def of(cls, multiplier: int) -> "RefreshRate":
        return cls(REFRESH_RATES.index(multiplier))


class Refresher(wiring.Component):
    """Ports: ``rate`` (In, :class:`RefreshRate`): the interval is ``tREFI // multiplier``;
    sampled at the first clock after reset and at every REF, so the interval running when
    it changes is finished at the old rate (X4 is also taken for the unused code 3).
    ``issued`` (In): a REF went out this cycle. ``due`` (Out): the interval has passed since
    the last REF (or reset): the controller must close every buffer and refresh.
    ``until_due`` (Out): clocks left before ``due`` (0 once due). ``late`` (Out): clocks
    past due, valid with ``issued``. All outputs are combinational from one counter and the
    sampled rate."""

    def __init__(self, config):
        self.intervals = [config.timing.tREFI // k for k in REFRESH_RATES]
        limit = config.timing.tREFI + config.timing.refresh_max_late + 1
        super().__init__({"rate": In(RefreshRate), "issued": In(1), "due": Out(1),
                          "until_due": Out(range(limit)), "late": Out(range(limit))})
        self._limit = limit

    def elaborate(self, platform):
        m = Module()
        since = Signal(range(self._limit))
        with m.If(self.issued):
            m.d.sync += since.eq(1)
        with m.Elif(since != self._limit - 1):
            m.d.sync += since.eq(since + 1)
        armed = Signal()
        held = Signal(RefreshRate)
        with m.If(self.issued | ~armed):
            m.d.sync += [held.eq(self.rate), armed.eq(1)]
        rate = Mux(armed, held.as_value(), self.rate.as_value())
        interval = Signal(range(self._limit))
        m.d.comb += interval.eq(Array(self.intervals + self.intervals[-1:])[rate])
        due = since >= interval
        m.d.comb += [self.due.eq(due),
                     self.until_due.eq(Mux(due, 0, interval - since)),
                     self.late.eq(Mux(due, since - interval, 0))]
        return m
