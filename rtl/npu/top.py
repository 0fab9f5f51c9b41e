"""``NpuTop``: the NPU core on the memory: one ``ControllerTop`` (controller + PIM channel)
per channel, their request and response streams wired to the core."""
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from ..channel.datapath import ChannelError
from ..controller import ControllerTop
from ..controller.controller import ControllerError
from ..controller.interface import counters_layout as controller_counters_layout
from ..isa import command_layout
from .core import NpuCore

__all__ = ["NpuTop"]


def _silence(elaboratable):
    """Mark a prototype that is never elaborated (Amaranth's UnusedElaboratable warning)."""
    if elaboratable is None:
        return
    elaboratable._MustUse__silence = True
    for child in vars(elaboratable).values():
        if hasattr(child, "_MustUse__silence"):
            _silence(child)


class NpuTop(wiring.Component):
    """NpuCore + ``config.geometry.channels`` x ControllerTop.

    Ports of the core (see :class:`NpuCore`): ``program_*``, ``start``, ``running``,
    ``done``, ``error``, ``error_code``, ``error_pc``, ``pc``, ``counters``, ``vector_ops``,
    ``vector_done``, ``ext_read``, ``ext_write``.
    Per channel c (arrays of ``channels``, Verilog names ``<port>__<c>``): the command bus
    ``cmd``, ``cmd_valid`` and ``cycle`` for the timing monitors; the controller's
    ``ctrl_counters``, ``ctrl_error``/``ctrl_error_code``, the datapath's
    ``channel_error``/``channel_error_code``/``channel_error_bank``/``channel_error_cycle``;
    the datapath's backdoor storage port ``backdoor_en``/``backdoor_bank``/
    ``backdoor_addr``/``backdoor_data`` (word ``row * bursts_per_row + column`` of a bank's
    stored window).
    """

    def __init__(self, config, shared_modules: bool = True):
        self.config = config
        C = config.geometry.channels
        self.core = NpuCore(config, shared_modules=shared_modules)
        self.channels = [ControllerTop(config, shared_bank_module=shared_modules)
                         for _ in range(C)]
        for top in self.channels[1:]:   # their bank prototypes: the first one's is emitted
            _silence(top.datapath.bank_prototype)
        core = self.core.signature.members
        ch = self.channels[0].signature.members
        members = {name: core[name] for name in (
            "program_en", "program_addr", "program_data", "start", "running", "done", "error",
            "error_code", "error_pc", "pc", "counters", "vector_ops", "vector_done", "ext_read",
            "ext_write")}
        members.update({
            "cmd": Out(command_layout(config)).array(C), "cmd_valid": Out(1).array(C),
            "cycle": Out(32).array(C),
            "ctrl_counters": Out(controller_counters_layout()).array(C),
            "ctrl_error": Out(1).array(C), "ctrl_error_code": Out(ControllerError).array(C),
            "channel_error": Out(1).array(C), "channel_error_code": Out(ChannelError).array(C),
            "channel_error_bank": Out(ch["channel_error_bank"].shape).array(C),
            "channel_error_cycle": Out(32).array(C),
            "backdoor_en": In(1).array(C), "backdoor_bank": In(ch["backdoor_bank"].shape).array(C),
            "backdoor_addr": In(ch["backdoor_addr"].shape).array(C),
            "backdoor_data": In(ch["backdoor_data"].shape).array(C),
        })
        super().__init__(members)

    def verilog_modules(self):
        """The shared bank module once (every channel instantiates it) and the array's."""
        return self.channels[0].verilog_modules() + self.core.verilog_modules()

    def elaborate(self, platform):
        m = Module()
        core = m.submodules.core = self.core
        m.d.comb += [core.program_en.eq(self.program_en), core.program_addr.eq(self.program_addr),
                     core.program_data.eq(self.program_data), core.start.eq(self.start),
                     core.vector_done.eq(self.vector_done),
                     self.running.eq(core.running), self.done.eq(core.done),
                     self.error.eq(core.error), self.error_code.eq(core.error_code),
                     self.error_pc.eq(core.error_pc), self.pc.eq(core.pc),
                     self.counters.eq(core.counters)]
        wiring.connect(m, core.vector_ops, wiring.flipped(self.vector_ops))
        wiring.connect(m, wiring.flipped(self.ext_read), core.ext_read)
        wiring.connect(m, wiring.flipped(self.ext_write), core.ext_write)
        for c, top in enumerate(self.channels):
            m.submodules[f"channel{c}"] = top
            wiring.connect(m, core.requests[c], top.requests)
            wiring.connect(m, top.read_responses, core.read_responses[c])
            wiring.connect(m, top.write_responses, core.write_responses[c])
            wiring.connect(m, core.pim_requests[c], top.pim_requests)
            wiring.connect(m, top.pim_responses, core.pim_responses[c])
            m.d.comb += [
                self.cmd[c].eq(top.cmd), self.cmd_valid[c].eq(top.cmd_valid),
                self.cycle[c].eq(top.cycle), self.ctrl_counters[c].eq(top.counters),
                self.ctrl_error[c].eq(top.error), self.ctrl_error_code[c].eq(top.error_code),
                self.channel_error[c].eq(top.channel_error),
                self.channel_error_code[c].eq(top.channel_error_code),
                self.channel_error_bank[c].eq(top.channel_error_bank),
                self.channel_error_cycle[c].eq(top.channel_error_cycle),
                top.backdoor_en.eq(self.backdoor_en[c]), top.backdoor_bank.eq(self.backdoor_bank[c]),
                top.backdoor_addr.eq(self.backdoor_addr[c]),
                top.backdoor_data.eq(self.backdoor_data[c]),
            ]
        return m
