"""The channel's global buffer: one row of the input vector, shared by all PIM units."""
from amaranth.hdl import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out


class GlobalBufferRtl(wiring.Component):
    """Holds one DRAM row (``row_elements`` FP16 values), written a burst at a time by
    GWRITE and read a COMP chunk at a time.

    Ports: ``write_en``/``write_index``/``write_data``: store burst ``write_index``.
    ``read_column`` (In, a COMP chunk index) -> ``read_chunk`` (Out) one clock later.
    Timing-only (``config.datapath`` False): no storage, ``read_chunk`` is zero.
    """

    def __init__(self, config):
        g = config.geometry
        self.chunk_bits = config.pim.lanes * 16
        self.burst_bits = g.burst_bytes * 8
        self.chunks_per_burst = g.burst_bytes // config.pim.chunk_bytes
        self.datapath = config.datapath
        self._mem = (Memory(shape=self.burst_bits, depth=g.bursts_per_row, init=[])
                     if self.datapath else None)
        super().__init__({"write_en": In(1), "write_index": In(range(g.bursts_per_row)),
                          "write_data": In(self.burst_bits),
                          "read_column": In(range(config.bus.comps_per_row)),
                          "read_chunk": Out(self.chunk_bits)})

    def elaborate(self, platform):
        m = Module()
        if not self.datapath:     # timing-only: nothing is stored, ``read_chunk`` stays 0
            return m
        m.submodules.mem = self._mem
        write, read = self._mem.write_port(), self._mem.read_port()
        select = Signal(range(self.chunks_per_burst))
        m.d.comb += [write.en.eq(self.write_en), write.addr.eq(self.write_index),
                     write.data.eq(self.write_data)]
        if self.chunks_per_burst > 1:
            shift = self.chunks_per_burst.bit_length() - 1
            m.d.comb += read.addr.eq(self.read_column >> shift)
            m.d.sync += select.eq(self.read_column[:shift])
            m.d.comb += self.read_chunk.eq(read.data.word_select(select, self.chunk_bits))
        else:
            m.d.comb += [read.addr.eq(self.read_column), self.read_chunk.eq(read.data)]
        return m
