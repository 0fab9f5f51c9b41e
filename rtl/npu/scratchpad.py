"""The NPU's on-chip storage: the scratchpad (words of ``NpuConfig.word_bytes``: one
64-byte burst by default, or several) and the GEMM engine's FP32 accumulator."""
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

__all__ = ["Scratchpad", "Accumulator", "read_port_signature", "write_port_signature",
           "word_bits", "word_lanes", "word_bursts", "burst_lanes"]


def word_bits(config) -> int:
    """Bits of a scratchpad word (``NpuConfig.word_bytes``)."""
    return config.npu.word_bytes * 8


def word_lanes(config) -> int:
    """FP16 lanes of a scratchpad word (16-bit write-enable granules)."""
    return config.npu.word_bytes // 2


def word_bursts(config) -> int:
    """DRAM bursts per scratchpad word (a power of two; 1 by default): burst slice ``s``
    of a word is its FP16 lanes [s B, (s + 1) B) for B = :func:`burst_lanes`."""
    return config.npu.word_bytes // config.geometry.burst_bytes


def burst_lanes(config) -> int:
    """FP16 lanes of one DRAM burst (a burst slice of a scratchpad word)."""
    return config.geometry.burst_bytes // 2


def read_port_signature(config) -> wiring.Signature:
    """A client's read port: ``addr``/``en`` out; ``grant`` in (the read is done this clock);
    ``data`` in: the word, one clock after a granted read (held until the next one)."""
    return wiring.Signature({"addr": Out(range(config.npu.scratchpad_words)), "en": Out(1),
                             "grant": In(1), "data": In(word_bits(config))})


def write_port_signature(config) -> wiring.Signature:
    """A client's write port: ``addr``, ``lanes`` (one enable per 16-bit lane; a write
    happens when any is set), ``data`` out; ``grant`` in (written at this clock edge)."""
    return wiring.Signature({"addr": Out(range(config.npu.scratchpad_words)),
                             "lanes": Out(word_lanes(config)), "data": Out(word_bits(config)),
                             "grant": In(1)})


class Scratchpad(wiring.Component):
    """``config.npu.scratchpad_words`` words of ``word_bytes`` (element 0 of a word in its
    low 16 bits), with one physical read or write port per *group* of clients and fixed
    priority inside a group (the first client named wins; the others see ``grant`` low
    and retry).

    ``read_groups`` / ``write_groups``: lists of lists of client names; client ``x`` gets
    the member ``read_x`` (``read_port_signature``, flipped) or ``write_x``.
    Reads: data one clock after the granted request (synchronous, not transparent: a read
    and a write of the same word in one clock return the old word). Writes: at the clock
    edge, lanes with their enable set. Two write ports writing one word in the same clock
    is a program error (the later port in ``write_groups`` wins).

    Timing-only (``config.datapath`` False): no memory; every grant is the same, reads
    return zero and writes are dropped.
    """

    def __init__(self, config, read_groups, write_groups):
        self.config = config
        self.read_groups = [list(g) for g in read_groups]
        self.write_groups = [list(g) for g in write_groups]
        members = {}
        for group in self.read_groups:
            for name in group:
                members[f"read_{name}"] = In(read_port_signature(config))
        for group in self.write_groups:
            for name in group:
                members[f"write_{name}"] = In(write_port_signature(config))
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        cfg = self.config
        mem = None
        if cfg.datapath:     # timing-only: the ports' arbitration below, no storage
            mem = m.submodules.memory = Memory(shape=word_bits(cfg),
                                               depth=cfg.npu.scratchpad_words, init=[])
        for group in self.read_groups:
            port = mem.read_port(transparent_for=()) if mem is not None else None
            taken = None
            for name in group:
                client = getattr(self, f"read_{name}")
                grant = client.en if taken is None else client.en & ~taken
                m.d.comb += client.grant.eq(grant)
                if port is not None:
                    m.d.comb += client.data.eq(port.data)
                    with m.If(grant):
                        m.d.comb += port.addr.eq(client.addr)
                taken = client.en if taken is None else taken | client.en
            if port is not None:
                m.d.comb += port.en.eq(taken)
        for group in self.write_groups:
            port = mem.write_port(granularity=16) if mem is not None else None
            taken = None
            for name in group:
                client = getattr(self, f"write_{name}")
                request = client.lanes.any()
                grant = request if taken is None else request & ~taken
                m.d.comb += client.grant.eq(grant)
                if port is not None:
                    with m.If(grant):
                        m.d.comb += [port.addr.eq(client.addr), port.en.eq(client.lanes),
                                     port.data.eq(client.data)]
                taken = request if taken is None else taken | request
        return m


class Accumulator(wiring.Component):
    """The GEMM engine's FP32 partial sums: ``config.npu.accumulator_rows`` rows of
    ``array_cols`` FP32 (column j in bits [32 j, 32 j + 32)). One read port (``read_addr``,
    ``read_en`` -> ``read_data`` one clock later, not transparent) and one write port
    (``write_addr``, ``write_en``, ``write_data``, at the clock edge). Timing-only
    (``config.datapath`` False): no memory, ``read_data`` is zero."""

    def __init__(self, config):
        self.config = config
        rows = config.npu.accumulator_rows
        width = 32 * config.npu.array_cols
        super().__init__({"read_addr": In(range(rows)), "read_en": In(1), "read_data": Out(width),
                          "write_addr": In(range(rows)), "write_en": In(1),
                          "write_data": In(width)})

    def elaborate(self, platform):
        m = Module()
        cfg = self.config
        if not cfg.datapath:     # timing-only: nothing is stored, ``read_data`` stays 0
            return m
        mem = m.submodules.memory = Memory(shape=32 * cfg.npu.array_cols,
                                           depth=cfg.npu.accumulator_rows, init=[])
        rd = mem.read_port(transparent_for=())
        wr = mem.write_port()
        m.d.comb += [rd.addr.eq(self.read_addr), rd.en.eq(self.read_en),
                     self.read_data.eq(rd.data), wr.addr.eq(self.write_addr),
                     wr.en.eq(self.write_en), wr.data.eq(self.write_data)]
        return m
