"""A channel with a command player and trace recorders: the unit cocotb runs drive."""
from amaranth.hdl import Cat, Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from ..common import TraceRecorder
from ..common.row_buffers import blocked_input
from .datapath import ChannelDatapath, ChannelError
from .player import CommandPlayer


class ChannelTestTop(wiring.Component):
    """ChannelDatapath + CommandPlayer + two TraceRecorders (commands, data bus).

    The testbench loads a program, pulses ``start``, waits until ``running`` falls, then
    reads the command log (every command the channel saw, with its cycle) and the data log
    (every burst on the data bus: ``rdata_pim`` in the top bit, the burst below).
    """

    def __init__(self, config, program_depth=1024, log_depth=1024, data_depth=256,
                 shared_bank_module=True):
        self.config = config
        self.datapath = ChannelDatapath(config, shared_bank_module=shared_bank_module)
        self.player = CommandPlayer(config, depth=program_depth)
        cmd_bits = self.player.layout.size
        burst_bits = self.datapath.burst_bits
        self.cmd_log = TraceRecorder(cmd_bits, log_depth)
        self.data_log = TraceRecorder(burst_bits + 1, data_depth)
        player_ports = {name: member for name, member in self.player.signature.members.items()
                        if name.startswith(("load", "wload")) or name in ("length", "start")}
        super().__init__({
            **{f"prog_{name}": member for name, member in player_ports.items()},
            "running": Out(1), "late": Out(1), "cycle": Out(32), "pim_busy": Out(1),
            "blocked": blocked_input(config),
            "error": Out(1), "error_code": Out(ChannelError), "error_bank": Out(range(config.geometry.banks)),
            "error_cycle": Out(32),
            "backdoor_en": In(1), "backdoor_bank": In(range(config.geometry.banks)),
            "backdoor_addr": In(range(self.datapath.bank_depth)),
            "backdoor_data": In(burst_bits),
            "cmd_log_count": Out(range(log_depth + 1)), "cmd_log_overflow": Out(1),
            "cmd_log_addr": In(range(log_depth)), "cmd_log_cycle": Out(32),
            "cmd_log_payload": Out(cmd_bits),
            "data_log_count": Out(range(data_depth + 1)), "data_log_overflow": Out(1),
            "data_log_addr": In(range(data_depth)), "data_log_cycle": Out(32),
            "data_log_payload": Out(burst_bits + 1),
            "log_clear": In(1),
        })

    def verilog_modules(self):
        return self.datapath.verilog_modules()

    def elaborate(self, platform):
        m = Module()
        m.submodules.datapath = dp = self.datapath
        m.submodules.player = player = self.player
        m.submodules.cmd_log = cmd_log = self.cmd_log
        m.submodules.data_log = data_log = self.data_log
        for name in self.signature.members:
            if name.startswith("prog_"):
                m.d.comb += getattr(player, name[5:]).eq(getattr(self, name))
        m.d.comb += [
            dp.cmd.eq(player.cmd), dp.cmd_valid.eq(player.cmd_valid), dp.wdata.eq(player.wdata),
            dp.blocked.eq(self.blocked),
            self.running.eq(player.running), self.late.eq(player.late),
            self.cycle.eq(dp.cycle), self.pim_busy.eq(dp.pim_busy),
            self.error.eq(dp.error), self.error_code.eq(dp.error_code),
            self.error_bank.eq(dp.error_bank), self.error_cycle.eq(dp.error_cycle),
            dp.backdoor_en.eq(self.backdoor_en), dp.backdoor_bank.eq(self.backdoor_bank),
            dp.backdoor_addr.eq(self.backdoor_addr), dp.backdoor_data.eq(self.backdoor_data),
        ]
        for log, valid, payload, prefix in (
                (cmd_log, player.cmd_valid, player.cmd.as_value(), "cmd_log"),
                (data_log, dp.rdata_valid, Cat(dp.rdata, dp.rdata_pim), "data_log")):
            m.d.comb += [
                log.valid.eq(valid), log.payload.eq(payload), log.cycle.eq(dp.cycle),
                log.clear.eq(self.log_clear), log.read_addr.eq(getattr(self, f"{prefix}_addr")),
                getattr(self, f"{prefix}_count").eq(log.count),
                getattr(self, f"{prefix}_overflow").eq(log.overflow),
                getattr(self, f"{prefix}_cycle").eq(log.read_cycle),
                getattr(self, f"{prefix}_payload").eq(log.read_payload),
            ]
        return m
