from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out


class TraceRecorder(wiring.Component):
    """Records ``(cycle, payload)`` for every cycle with ``valid``, for a testbench to read
    after the run (no Python on the clock during the run).

    Ports: ``valid``/``payload``/``cycle`` (In) to record; ``count`` (Out) entries
    recorded, saturating at ``depth``; ``overflow`` (Out) sticky when an entry was lost;
    ``clear`` (In) empties it. Read side: ``read_addr`` (In) -> ``read_cycle``/``read_payload``
    (Out) one clock later.
    """

    def __init__(self, payload_width: int, depth: int, cycle_width: int = 32):
        self.depth = depth
        self._mem = Memory(shape=cycle_width + payload_width, depth=depth, init=[])
        super().__init__({
            "valid": In(1), "payload": In(payload_width), "cycle": In(cycle_width),
            "clear": In(1),
            "count": Out(range(depth + 1)), "overflow": Out(1),
            "read_addr": In(range(depth)), "read_cycle": Out(cycle_width),
            "read_payload": Out(payload_width),
        })
        self._cycle_width = cycle_width

    def elaborate(self, platform):
        m = Module()
        m.submodules.mem = mem = self._mem
        write, read = mem.write_port(), mem.read_port()
        m.d.comb += [
            write.addr.eq(self.count), write.data.eq(self.cycle | (self.payload << self._cycle_width)),
            write.en.eq(self.valid & (self.count < self.depth)),
            read.addr.eq(self.read_addr),
            self.read_cycle.eq(read.data[:self._cycle_width]),
            self.read_payload.eq(read.data[self._cycle_width:]),
        ]
        with m.If(self.clear):
            m.d.sync += [self.count.eq(0), self.overflow.eq(0)]
        with m.Elif(self.valid):
            with m.If(self.count < self.depth):
                m.d.sync += self.count.eq(self.count + 1)
            with m.Else():
                m.d.sync += self.overflow.eq(1)
        return m
