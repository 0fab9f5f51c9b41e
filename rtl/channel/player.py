"""Plays a stored command program onto a channel's command bus, autonomously."""
from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ..isa import Opcode, command_layout


class CommandPlayer(wiring.Component):
    """A small command memory and sequencer.

    Program entry ``i`` is (``at``, command): issued exactly ``at`` clocks after ``start``;
    ``at`` must increase strictly from entry to entry, else ``late`` is raised. WR commands
    take their data, in order, from the write-data memory.

    Ports: ``load_*`` / ``wload_*`` (In) fill the memories before ``start``; ``length`` (In)
    is the number of entries; ``start`` (In) pulses to run; ``running`` (Out);
    ``cmd``/``cmd_valid``/``wdata`` (Out) drive the channel; ``late`` (Out, sticky).
    """

    def __init__(self, config, depth: int = 1024, wdata_depth: int = 64):
        self.layout = command_layout(config)
        self.depth, self.wdata_depth = depth, wdata_depth
        burst_bits = config.geometry.burst_bytes * 8
        self.entry = data.StructLayout({"at": 32, "cmd": self.layout})
        self._program = Memory(shape=self.entry, depth=depth, init=[])
        self._wdata = Memory(shape=burst_bits, depth=wdata_depth, init=[])
        super().__init__({
            "load_en": In(1), "load_addr": In(range(depth)), "load_at": In(32),
            "load_cmd": In(self.layout.size),
            "wload_en": In(1), "wload_addr": In(range(wdata_depth)), "wload_data": In(burst_bits),
            "length": In(range(depth + 1)), "start": In(1), "running": Out(1), "late": Out(1),
            "cmd": Out(self.layout), "cmd_valid": Out(1), "wdata": Out(burst_bits),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.program = self._program
        m.submodules.wdata_mem = self._wdata
        load, fetch = self._program.write_port(), self._program.read_port()
        wload, wfetch = self._wdata.write_port(), self._wdata.read_port()
        m.d.comb += [load.en.eq(self.load_en), load.addr.eq(self.load_addr),
                     load.data.at.eq(self.load_at), load.data.cmd.eq(self.load_cmd),
                     wload.en.eq(self.wload_en), wload.addr.eq(self.wload_addr),
                     wload.data.eq(self.wload_data)]

        now = Signal(32)
        pointer = Signal(range(self.depth + 1))
        wpointer = Signal(range(self.wdata_depth))
        entry = fetch.data
        pending = self.running & (pointer < self.length)
        issue = pending & (entry.at == now)
        is_write = issue & (entry.cmd.op == Opcode.WR)
        m.d.comb += [
            fetch.addr.eq(Mux(issue, pointer + 1, pointer)),
            wfetch.addr.eq(Mux(is_write, wpointer + 1, wpointer)),
            self.cmd.eq(entry.cmd), self.cmd_valid.eq(issue), self.wdata.eq(wfetch.data),
        ]
        with m.If(self.start):
            m.d.sync += [self.running.eq(1), now.eq(0), pointer.eq(0), wpointer.eq(0),
                         self.late.eq(0)]
            m.d.comb += [fetch.addr.eq(0), wfetch.addr.eq(0)]
        with m.Elif(self.running):
            m.d.sync += now.eq(now + 1)
            with m.If(issue):
                m.d.sync += pointer.eq(pointer + 1)
            with m.If(is_write):
                m.d.sync += wpointer.eq(wpointer + 1)
            with m.If(pending & (entry.at < now)):
                m.d.sync += self.late.eq(1)
            with m.If(~pending):
                m.d.sync += self.running.eq(0)
        return m
