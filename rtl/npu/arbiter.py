"""``StreamArbiter``: several ``lib.stream`` producers onto one stream, round-robin."""
from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from .dma import round_robin

__all__ = ["StreamArbiter"]


class StreamArbiter(wiring.Component):
    """``n`` input streams of ``layout`` onto ``output``, round-robin.

    ``output.valid`` is high while any input is valid (it never looks at ``output.ready``);
    the winner is the first valid input at or after the one after the last transfer's.
    A winner whose transfer waits on ``output.ready`` keeps the grant (``lib.stream``: an
    offered payload stays until taken). ``grant`` (Out): index of the input offered on
    ``output`` (meaningful while ``output.valid``). ``lock`` (In): while high, the input
    granted last keeps the grant and the others wait (a multi-transfer sequence of one
    producer stays whole). No latency: a wire from the winner.
    """

    def __init__(self, layout, n: int):
        if n < 1:
            raise ValueError(f"StreamArbiter needs at least one input, got {n}")
        self.n = n
        super().__init__({"inputs": In(stream.Signature(layout)).array(n),
                          "output": Out(stream.Signature(layout)),
                          "grant": Out(range(max(n, 2))), "lock": In(1)})

    def elaborate(self, platform):
        m = Module()
        n = self.n
        pointer = Signal(range(max(n, 2)))
        held = Signal()                 # an offer waits on output.ready: keep its input
        held_grant = Signal(range(max(n, 2)))
        valids = Signal(n)
        for i in range(n):
            m.d.comb += valids[i].eq(self.inputs[i].valid)
        winner, any_valid = round_robin(m, valids, pointer, "arb")
        grant = Signal(range(max(n, 2)))
        m.d.comb += grant.eq(winner)
        with m.If(held | self.lock):
            m.d.comb += grant.eq(held_grant)
        m.d.comb += [self.grant.eq(grant),
                     self.output.valid.eq(Mux(self.lock, (valids >> held_grant)[0], any_valid))]
        with m.Switch(grant):
            for i in range(n):
                with m.Case(i):
                    m.d.comb += [self.output.payload.eq(self.inputs[i].payload),
                                 self.inputs[i].ready.eq(self.output.ready)]
        taken = self.output.valid & self.output.ready
        m.d.sync += [held.eq(self.output.valid & ~self.output.ready), held_grant.eq(grant)]
        with m.If(taken):
            m.d.sync += pointer.eq(Mux(grant == n - 1, 0, grant + 1))
        return m
