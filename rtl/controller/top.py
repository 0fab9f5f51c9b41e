"""A channel with its controller: what testbenches, trace replay and benchmarks drive."""
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from ..channel import ChannelDatapath
from ..channel.datapath import ChannelError
from ..common.row_buffers import blocked_input
from ..isa import command_layout
from .controller import ChannelController, ControllerError


class ControllerTop(wiring.Component):
    """``ChannelController`` driving a ``ChannelDatapath``.

    Ports: the controller's request and response streams (``requests``,
    ``read_responses``, ``write_responses``, ``pim_requests``, ``pim_responses``) and
    ``counters``; ``refresh_rate`` (the controller's refresh interval divider);
    ``blocked`` (the row-buffer mode: one buffer, or two; controller and banks); the
    command bus as issued (``cmd``, ``cmd_valid``) with the channel's
    ``cycle`` for monitors; ``pim_active``, ``refresh_due``; both error reports
    (``error``/``error_code`` of the controller, ``channel_error*`` of the datapath);
    the datapath's ``backdoor_*`` storage port.
    """

    def __init__(self, config, shared_bank_module: bool = True):
        self.config = config
        self.controller = ChannelController(config)
        self.datapath = ChannelDatapath(config, shared_bank_module=shared_bank_module)
        c = self.controller.signature.members
        g = config.geometry
        super().__init__({
            "requests": c["requests"], "read_responses": c["read_responses"],
            "write_responses": c["write_responses"], "pim_requests": c["pim_requests"],
            "pim_responses": c["pim_responses"], "counters": c["counters"],
            "pim_active": Out(1), "refresh_due": Out(1), "cmd_source": c["cmd_source"],
            "refresh_rate": c["refresh_rate"], "blocked": blocked_input(config),
            "cmd": Out(command_layout(config)), "cmd_valid": Out(1), "cycle": Out(32),
            "error": Out(1), "error_code": Out(ControllerError),
            "channel_error": Out(1), "channel_error_code": Out(ChannelError),
            "channel_error_bank": Out(range(g.banks)), "channel_error_cycle": Out(32),
            "backdoor_en": In(1), "backdoor_bank": In(range(g.banks)),
            "backdoor_addr": In(range(self.datapath.bank_depth)),
            "backdoor_data": In(g.burst_bytes * 8),
        })

    def verilog_modules(self):
        return self.datapath.verilog_modules()

    def elaborate(self, platform):
        m = Module()
        ctrl = m.submodules.controller = self.controller
        dp = m.submodules.datapath = self.datapath
        for name in ("requests", "pim_requests"):
            wiring.connect(m, wiring.flipped(getattr(self, name)), getattr(ctrl, name))
        for name in ("read_responses", "write_responses", "pim_responses"):
            wiring.connect(m, getattr(ctrl, name), wiring.flipped(getattr(self, name)))
        m.d.comb += [
            dp.cmd.eq(ctrl.cmd), dp.cmd_valid.eq(ctrl.cmd_valid), dp.wdata.eq(ctrl.wdata),
            ctrl.banks.eq(dp.banks), ctrl.rdata.eq(dp.rdata), ctrl.rdata_valid.eq(dp.rdata_valid),
            ctrl.rdata_pim.eq(dp.rdata_pim), ctrl.refresh_rate.eq(self.refresh_rate),
            ctrl.blocked.eq(self.blocked), dp.blocked.eq(self.blocked),
            self.counters.eq(ctrl.counters), self.pim_active.eq(ctrl.pim_active),
            self.refresh_due.eq(ctrl.refresh_due), self.cmd_source.eq(ctrl.cmd_source),
            self.cmd.eq(ctrl.cmd), self.cmd_valid.eq(ctrl.cmd_valid), self.cycle.eq(dp.cycle),
            self.error.eq(ctrl.error), self.error_code.eq(ctrl.error_code),
            self.channel_error.eq(dp.error), self.channel_error_code.eq(dp.error_code),
            self.channel_error_bank.eq(dp.error_bank), self.channel_error_cycle.eq(dp.error_cycle),
            dp.backdoor_en.eq(self.backdoor_en), dp.backdoor_bank.eq(self.backdoor_bank),
            dp.backdoor_addr.eq(self.backdoor_addr), dp.backdoor_data.eq(self.backdoor_data),
        ]
        return m
