"""Testbench for ``rtl.channel.ChannelTestTop``: clock, reset, program loading, backdoor
storage, log readout, and the scoreboard that every run goes through (timing checker,
RTL error flags, data bus cycle by cycle)."""
from __future__ import annotations

import os
import time

import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, RisingEdge, Timer

from rtl.channel import ChannelError
from rtl.config import DeviceConfig, RowBufferMode
from rtl.isa import decode_command, encode_command
from sim.golden.fp import random16
from sim.golden.pim import gemv
from sim.programs import gemv_program

from .timing_checker import TimingChecker


def config_from_env() -> DeviceConfig:
    return DeviceConfig.from_json(os.environ["NEUPIMS_CONFIG"])


def pack_fp16(values: np.ndarray) -> int:
    """FP16 bit patterns (element 0 in the least significant bits) -> one integer."""
    return int.from_bytes(np.asarray(values, dtype=np.uint16).tobytes(), "little")


def unpack_fp16(value: int, count: int) -> np.ndarray:
    return np.frombuffer(value.to_bytes(count * 2, "little"), dtype=np.uint16).copy()


def rng_from_env():
    return np.random.default_rng(int(os.environ.get("NEUPIMS_SEED", "1")))


def finite_fp16(rng, shape, scale=1.0):
    """Random finite FP16 values of moderate size (so sums stay finite)."""
    return (rng.standard_normal(shape) * scale).astype(np.float16).view(np.uint16)


def bursts_of(config, row: np.ndarray) -> list[int]:
    per = config.geometry.burst_bytes // 2
    return [pack_fp16(row[i:i + per]) for i in range(0, len(row), per)]


def tiles_from_env(config) -> list[tuple[int, int]]:
    """GEMV tiles over a whole row: NEUPIMS_TILE comps each (default: the row at once)."""
    per_row = config.bus.comps_per_row
    k = int(os.environ.get("NEUPIMS_TILE", per_row))
    return [(start, min(k, per_row - start)) for start in range(0, per_row, k)]


class ChannelTB:
    """Owns the DUT's clock and reset, and checks every run it makes."""

    def __init__(self, dut, config: DeviceConfig | None = None):
        self.dut = dut
        self.config = config or config_from_env()
        g = self.config.geometry
        self.burst_elements = g.burst_bytes // 2
        self.checker = TimingChecker(self.config)
        self.cycles_run = 0
        self.wall_run = 0.0
        self.gemv_results = 0
        self.commands_checked = 0

    async def start(self):
        self.clock = Clock(self.dut.clk, 1, "ns")
        self.clock.start()
        dut = self.dut
        for name in ("prog_load_en", "prog_wload_en", "prog_start", "backdoor_en", "log_clear"):
            getattr(dut, name).value = 0
        dut.blocked.value = int(self.config.mode is RowBufferMode.BLOCKED)
        dut.rst.value = 1
        await ClockCycles(dut.clk, 2)
        dut.rst.value = 0
        await RisingEdge(dut.clk)

    # -- storage --
    async def backdoor_rows(self, bank: int, row: int, elements: np.ndarray):
        """Write one row (row_elements FP16 bit patterns) of ``bank`` without commands."""
        g = self.config.geometry
        dut = self.dut
        dut.backdoor_en.value = 1
        dut.backdoor_bank.value = bank
        for burst in range(g.bursts_per_row):
            span = elements[burst * self.burst_elements:(burst + 1) * self.burst_elements]
            dut.backdoor_addr.value = row * g.bursts_per_row + burst
            dut.backdoor_data.value = pack_fp16(span)
            await RisingEdge(dut.clk)
        dut.backdoor_en.value = 0

    # -- programs --
    async def load(self, program):
        dut = self.dut
        if len(program.commands) > self.program_depth:
            raise ValueError(f"program of {len(program.commands)} commands exceeds the player's "
                             f"{self.program_depth} entries")
        dut.prog_load_en.value = 1
        for index, command in enumerate(program.commands):
            dut.prog_load_addr.value = index
            dut.prog_load_at.value = command.cycle
            dut.prog_load_cmd.value = encode_command(self.config, command)
            await RisingEdge(dut.clk)
        dut.prog_load_en.value = 0
        dut.prog_wload_en.value = 1
        for index, burst in enumerate(program.wdata):
            dut.prog_wload_addr.value = index
            dut.prog_wload_data.value = burst
            await RisingEdge(dut.clk)
        dut.prog_wload_en.value = 0
        dut.prog_length.value = len(program.commands)

    @property
    def program_depth(self) -> int:
        return 1 << len(self.dut.prog_load_addr)

    async def run(self, program, drain: int | None = None):
        """Load and play ``program``; return (command log, data log) after checking them.

        Checks: every command the channel saw passes the timing checker; the player was
        never late; the RTL raised no error; no log overflowed; the data bus carried
        exactly the bursts the program predicts, at the predicted cycles (relative to the
        start). Data contents are for the caller's scoreboard.
        """
        dut = self.dut
        await self.load(program)
        dut.log_clear.value = 1
        await RisingEdge(dut.clk)
        dut.log_clear.value = 0
        dut.prog_start.value = 1
        await RisingEdge(dut.clk)
        await Timer(1, "ps")
        start_cycle = int(dut.cycle.value)  # the player's cycle 0
        dut.prog_start.value = 0
        began = time.perf_counter()
        budget = program.last_data + 64
        await Timer(program.end + 1, "ns")
        while int(dut.running.value):
            await Timer(16, "ns")
        drain = program.last_data - program.end + 2 if drain is None else drain
        await Timer(max(drain, 1), "ns")
        self.wall_run += time.perf_counter() - began
        self.cycles_run += int(dut.cycle.value) - start_cycle
        assert int(dut.cycle.value) - start_cycle <= budget + 64, "program overran its schedule"

        commands = await self.read_command_log(start_cycle)
        bursts = await self.read_data_log(start_cycle)
        self.audit(program, commands, bursts)
        return commands, bursts

    async def read_command_log(self, start_cycle: int):
        dut = self.dut
        assert not int(dut.cmd_log_overflow.value), "command log overflowed: commands lost"
        commands = []
        for index in range(int(dut.cmd_log_count.value)):
            dut.cmd_log_addr.value = index
            await RisingEdge(dut.clk)
            await Timer(1, "ps")
            commands.append(decode_command(self.config, int(dut.cmd_log_payload.value),
                                           cycle=int(dut.cmd_log_cycle.value) - start_cycle))
        return commands

    async def read_data_log(self, start_cycle: int):
        dut = self.dut
        assert not int(dut.data_log_overflow.value), "data log overflowed: bursts lost"
        burst_bits = self.config.geometry.burst_bytes * 8
        bursts = []
        for index in range(int(dut.data_log_count.value)):
            dut.data_log_addr.value = index
            await RisingEdge(dut.clk)
            await Timer(1, "ps")
            payload = int(dut.data_log_payload.value)
            bursts.append((int(dut.data_log_cycle.value) - start_cycle, bool(payload >> burst_bits),
                           payload & ((1 << burst_bits) - 1)))
        return bursts

    def audit(self, program, commands, bursts):
        dut = self.dut
        checker = TimingChecker(self.config)
        for command in commands:
            checker.check(command)
        checker.finish(commands[-1].cycle if commands else 0)
        self.checker = checker
        self.commands_checked += len(commands)
        if int(dut.error.value):
            raise AssertionError(
                f"RTL flagged {ChannelError(int(dut.error_code.value)).name} at bank "
                f"{int(dut.error_bank.value)}, cycle {int(dut.error_cycle.value)}")
        assert not int(dut.late.value), "the player could not issue a command at its cycle"
        planned = [(c.cycle, c._replace(cycle=-1)) for c in program.commands]
        seen = [(c.cycle, c._replace(cycle=-1)) for c in commands]
        assert seen == planned, "the channel did not see the planned command sequence"
        got = [(cycle, "gemv" if pim else "rd") for cycle, pim, _ in bursts]
        want = [(e.cycle, e.kind) for e in program.expected]
        assert got == want, f"data bus bursts at {got[:8]}..., predicted {want[:8]}..."

    async def gemv(self, rng, row_sets, tiles, special=False, repeat=1):
        """Fill the row sets with random FP16 (by backdoor), run y = W x over them
        ``repeat`` times, and compare every result with the golden model bit for bit."""
        cfg = self.config
        g = cfg.geometry
        matrix = {}
        for row in dict.fromkeys(row_sets):
            values = (random16(rng, g.banks * g.row_elements).reshape(g.banks, -1) if special
                      else finite_fp16(rng, (g.banks, g.row_elements)))
            matrix[row] = values
            for bank in range(g.banks):
                await self.backdoor_rows(bank, row, values[bank])
        vector = random16(rng, g.row_elements) if special else finite_fp16(rng, g.row_elements)
        program = gemv_program(cfg, bursts_of(cfg, vector), cfg.stored_rows - 1, row_sets, tiles)
        golden = {}
        for _ in range(repeat):
            _, bursts = await self.run(program)
            results = [b for b in bursts if b[1]]
            for expected, (cycle, _, payload) in zip([e for e in program.expected if e.kind == "gemv"], results):
                info = expected.info
                key = (info["row"], info["column"], info["comps"])
                if key not in golden:
                    golden[key] = gemv(matrix[info["row"]], vector, cfg.pim.lanes, info["column"], info["comps"])
                want = golden[key]
                got = unpack_fp16(payload, g.burst_bytes // 2)[:g.banks]
                mismatch = np.nonzero(got != want)[0]
                assert mismatch.size == 0, (
                    f"GEMV row {info['row']} chunks {info['column']}+{info['comps']} at cycle {cycle}: "
                    f"banks {mismatch[:4].tolist()} got {[hex(v) for v in got[mismatch[:4]]]}, "
                    f"golden {[hex(v) for v in want[mismatch[:4]]]}")
                self.gemv_results += 1
        return program
