"""Testbench for ``rtl.npu.NpuTop`` (the NPU core on one controller + PIM channel per memory
channel): clock and reset, HBM contents through every channel's backdoor, program
loading, runs to ``done`` with every command of every channel fed to its own DRAM
timing checker, a stand-in vector unit on ``vector_ops``, scratchpad reads through
``ext_read``, and the counters (NPU and controllers, the latter compared with the
commands logged). Commands reach the checkers through the DUT's command log
(``sim.harness.with_command_log``), read at every sample point and at the end: Python is not
woken every clock."""
from __future__ import annotations

import collections
import hashlib
import time
from pathlib import Path

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, First, ReadOnly, RisingEdge, Timer, ValueChange

from sim.harness import COMMAND_LOG

from rtl.channel import ChannelError
from rtl.config import RowBufferMode
from rtl.controller import ControllerError, RefreshRate
from rtl.controller.interface import COUNTERS as CTRL_COUNTERS
from rtl.controller.interface import counters_layout as ctrl_counters_layout
from rtl.isa import Opcode, command_decoder
from rtl.isa.npu import Instruction, encode
from rtl.npu.core import COUNTER_WIDTH, counters_layout
from rtl.npu.sequencer import NpuError, vector_op_layout
from rtl.npu.vector_engine import engine_supported

from .controller_tb import field_table, unpack, unpack_table
from .timing_checker import TimingChecker, format_command


#: The clock period of the simulation (1 GHz: cycles are nanoseconds).
CLOCK_NS = 1

_LOG = None


def _command_log():
    """The simulation's command log, opened once per process (every NpuTB of a run reads
    it from where it starts)."""
    global _LOG
    if _LOG is None:
        path = Path.cwd() / COMMAND_LOG
        if not path.exists():
            raise AssertionError(
                f"no command log {path}: build NpuTop with sim.harness.npu_top_verilog (its "
                f"commands are timing-checked from that file)")
        _LOG = open(path, "rb")
    return _LOG


class NpuTB:
    """Owns one NpuTop: every run goes through :meth:`run`, which checks each command."""

    def __init__(self, dut, config, vector_latency: int = 8, check_config=None,
                 registered_ports: bool = True):
        """``check_config``: the configuration the timing checkers hold the commands to
        (default ``config``, the DUT's; a stricter one shows that a violation fails).
        ``registered_ports``: the build registers its reset (``sim.harness.npu_top_verilog``,
        the default there too)."""
        self.dut = dut
        self.registered_ports = registered_ports
        self.config = config
        self.channels = config.geometry.channels
        self.checkers = [TimingChecker(check_config or config) for _ in range(self.channels)]
        self._decode = command_decoder(config)
        self._npu_fields = field_table(counters_layout())
        self._ctrl_fields = field_table(ctrl_counters_layout())
        self.commands = [collections.Counter() for _ in range(self.channels)]
        self.recent = [collections.deque(maxlen=12) for _ in range(self.channels)]
        # a digest of each channel's command stream (cycle and command) since reset
        self.stream_hash = [hashlib.sha256() for _ in range(self.channels)]
        self.cores = config.npu.arrays   # NpuTop: one core per array
        self.vector_latency = vector_latency
        self.vector_ops: list[dict] = []
        # VECTOR instructions leave the core on ``vector_ops`` (answered here, every clock)
        self.external_vector = not engine_supported(config)
        self.cycles = 0           # clocks simulated by :meth:`run`
        self.wall = 0.0           # seconds spent in :meth:`run`
        self._ports = [{name: getattr(dut, f"{name}__{c}") for name in (
            "cmd", "cmd_valid", "cycle", "ctrl_error", "ctrl_error_code", "channel_error",
            "channel_error_code", "channel_error_bank", "channel_error_cycle",
            "backdoor_en", "backdoor_bank", "backdoor_addr", "backdoor_data", "ctrl_counters")}
            for c in range(self.channels)]

    async def start(self):
        dut = self.dut
        Clock(dut.clk, CLOCK_NS, "ns", impl="gpi").start()   # toggled in C, not in Python
        for name in ("program_en", "start", "vector_done", "vector_ops__ready", "ext_read__en",
                     "ext_write__lanes"):
            getattr(dut, name).value = 0
        for p in self._ports:
            p["backdoor_en"].value = 0
        if self.cores > 1:
            dut.program_core.value = 0
            dut.ext_core.value = 0
        dut.refresh_rate.value = RefreshRate.of(self.config.refresh_rate).value
        dut.blocked.value = int(self.config.mode is RowBufferMode.BLOCKED)
        # a build that registers rst (sim.harness.with_registered_ports) has it held one
        # clock less: either way the design sees two reset clocks, and its first clock
        # out of reset is the third
        late = int(self.registered_ports)
        dut.rst.value = 1
        await ClockCycles(dut.clk, 2 - late)
        dut.rst.value = 0
        await ClockCycles(dut.clk, 1 + late)
        self.failure = None
        self._open_command_log()

    def _open_command_log(self):
        """Follow the DUT's command log (``sim.harness.with_command_log``) from its present
        end: every command issued from now on is checked, none is skipped."""
        self._log = _command_log()
        self._log_at = self._log.seek(0, 2)
        self._log_rest = b""

    def drain_commands(self):
        """Check the commands the DUT has logged since the last call (each channel's in
        cycle order, with its own timing checker) and poll the channels' sticky error
        flags; a violation or an error raises AssertionError."""
        self._raise_failure()
        self._log.seek(self._log_at)
        data = self._log_rest + self._log.read()
        self._log_at = self._log.tell()
        cut = data.rfind(b"\n") + 1
        self._log_rest = data[cut:]
        try:
            for line in data[:cut].splitlines():
                c, cycle, value = line.split()
                self._command(int(c), int(value, 16), int(cycle, 16))
            self.check_errors()
        except AssertionError as error:
            self.failure = error
            raise

    def _raise_failure(self):
        if self.failure is not None:
            raise self.failure

    # -- loading --
    async def load_image(self, image):
        """Every burst of an ``HbmImage`` into its bank, channels in parallel, a burst per
        channel and clock. Timing-only (``config.datapath`` False: the banks store
        nothing) the same clocks pass without the writes."""
        per_channel = image.backdoor()
        longest = max((len(v) for v in per_channel.values()), default=0)
        if not self.config.datapath:
            if longest:
                await ClockCycles(self.dut.clk, longest)
            return
        for i in range(longest):
            for c, items in per_channel.items():
                p = self._ports[c]
                if i < len(items):
                    bank, where, word = items[i]
                    p["backdoor_en"].value = 1
                    p["backdoor_bank"].value = bank
                    p["backdoor_addr"].value = where
                    p["backdoor_data"].value = word
                else:
                    p["backdoor_en"].value = 0
            await RisingEdge(self.dut.clk)
        for p in self._ports:
            p["backdoor_en"].value = 0

    async def load_program(self, program, core: int = 0):
        """``program`` into the instruction memory of ``core`` (0 .. arrays - 1)."""
        dut = self.dut
        if len(program) > self.config.npu.instruction_words:
            raise ValueError(f"{len(program)} instructions do not fit the instruction memory")
        self._select("program_core", core)
        for i, ins in enumerate(program):
            dut.program_en.value = 1
            dut.program_addr.value = i
            dut.program_data.value = encode(ins) if isinstance(ins, Instruction) else int(ins)
            await RisingEdge(dut.clk)
        dut.program_en.value = 0

    # -- running --
    async def run(self, max_cycles: int = 200_000) -> int:
        """Start the loaded program and clock until ``done``; returns the clocks it took.
        Every command is checked; RTL error flags of the channels fail the run."""
        dut = self.dut
        began = time.perf_counter()
        dut.start.value = 1
        await RisingEdge(dut.clk)
        dut.start.value = 0
        dut.vector_ops__ready.value = 1
        due: collections.deque[int] = collections.deque()
        cycles = 0
        layout = vector_op_layout()
        while True:
            await RisingEdge(dut.clk)
            cycles += 1
            strobe = bool(due) and due[0] <= cycles
            if strobe:
                due.popleft()
            dut.vector_done.value = int(strobe)
            await ReadOnly()
            if dut.vector_ops__valid.value:
                self.vector_ops.append(unpack(layout, int(dut.vector_ops__payload.value)))
                due.append(cycles + self.vector_latency)
            if dut.done.value:
                break
            if cycles % 256 == 0:
                self.drain_commands()
            if cycles > max_cycles:
                raise AssertionError(f"the program ran past {max_cycles} clocks")
        await RisingEdge(dut.clk)
        dut.vector_done.value = 0
        self.drain_commands()
        self.cycles += cycles
        self.wall += time.perf_counter() - began
        return cycles

    async def run_sampled(self, sample, period: int = 64, max_cycles: int = 200_000,
                          pc_changed=None) -> int:
        """Start the loaded program and clock until ``done``, as :meth:`run` does (every
        command checked, channel errors fail the run), without waking Python every clock
        when the core has its built-in vector engine (``external_vector`` False):

        ``sample(clocks, done)`` is called in the read-only phase every ``period`` clocks
        of the run and once when ``done`` has risen (``clocks`` = the NPU's
        ``counters.cycles`` since the start: clocks while running); it may return a new
        period (from then on). ``pc_changed(pc)`` is called in the read-only phase of
        every clock the core's ``pc`` port changes (instruction ``pc - 1`` has just
        completed its dispatch; see ``NpuCore``). Returns the clocks of the run."""
        dut = self.dut
        began = time.perf_counter()
        base = self.npu_cycles()
        mask = (1 << COUNTER_WIDTH) - 1
        dut.start.value = 1
        await RisingEdge(dut.clk)
        dut.start.value = 0
        dut.vector_ops__ready.value = 1
        watcher = cocotb.start_soon(self._watch_pc(pc_changed)) if pc_changed else None
        due: collections.deque[int] = collections.deque()
        layout = vector_op_layout()
        next_at = period
        clocks = 0
        try:
            while True:
                if self.external_vector:     # every clock: the stand-in vector unit
                    await RisingEdge(dut.clk)
                    clocks += 1
                    strobe = bool(due) and due[0] <= clocks
                    if strobe:
                        due.popleft()
                    dut.vector_done.value = int(strobe)
                    await ReadOnly()
                    if dut.vector_ops__valid.value:
                        self.vector_ops.append(unpack(layout, int(dut.vector_ops__payload.value)))
                        due.append(clocks + self.vector_latency)
                    done = bool(dut.done.value)
                    if clocks < next_at and not done:
                        continue
                else:
                    # a Timer wakes Python once (ClockCycles would wake it every clock)
                    await First(RisingEdge(dut.done), Timer((next_at - clocks) * CLOCK_NS, "ns"))
                    await ReadOnly()
                    done = bool(dut.done.value)
                clocks = (self.npu_cycles() - base) & mask
                new = sample(clocks, done)
                if new:
                    period = int(new)
                next_at = (clocks // period + 1) * period
                if done:
                    break
                self.drain_commands()
                if clocks > max_cycles:
                    raise AssertionError(f"the program ran past {max_cycles} clocks "
                                         f"(pc {int(dut.pc.value)})")
        finally:
            if watcher is not None:
                watcher.cancel()
        await RisingEdge(dut.clk)
        dut.vector_done.value = 0
        self.drain_commands()
        self.cycles += clocks
        self.wall += time.perf_counter() - began
        return clocks

    async def _watch_pc(self, callback):
        while True:
            await ValueChange(self.dut.pc)
            await ReadOnly()
            callback(int(self.dut.pc.value))

    def npu_cycles(self) -> int:
        """The core's ``counters.cycles`` alone (cheaper than :meth:`counters`)."""
        return int(self.dut.counters.value) & ((1 << COUNTER_WIDTH) - 1)

    def _command(self, c: int, value: int, cycle: int):
        cmd = self._decode(value, cycle)
        self.recent[c].append(cmd)
        try:
            self.checkers[c].check(cmd)
        except AssertionError as error:
            history = "\n  ".join(format_command(x) for x in self.recent[c])
            raise AssertionError(f"channel {c}: {error}\nlast commands:\n  {history}") from error
        self.commands[c][cmd.op] += 1
        self.stream_hash[c].update(f"{cycle}:{value:x};".encode())

    def command_digest(self, c: int) -> str:
        """SHA-256 (hex, 16 digits) of channel ``c``'s commands so far: every (cycle,
        command word) from reset on, in order. Equal digests: the same command stream."""
        return self.stream_hash[c].hexdigest()[:16]

    def check_errors(self):
        for c, p in enumerate(self._ports):
            if p["ctrl_error"].value:
                raise AssertionError(f"channel {c}: controller error "
                                     f"{ControllerError(int(p['ctrl_error_code'].value)).name}")
            if p["channel_error"].value:
                raise AssertionError(
                    f"channel {c}: channel error "
                    f"{ChannelError(int(p['channel_error_code'].value)).name} at bank "
                    f"{int(p['channel_error_bank'].value)}, cycle "
                    f"{int(p['channel_error_cycle'].value)}")

    # -- after a run --
    def error(self) -> tuple[NpuError, int]:
        return NpuError(int(self.dut.error_code.value)), int(self.dut.error_pc.value)

    def _select(self, port: str, core: int):
        if not 0 <= core < self.cores:
            raise ValueError(f"core {core}: the NPU has {self.cores} core(s)")
        if self.cores > 1:
            getattr(self.dut, port).value = core

    async def read_words(self, addresses, core: int = 0) -> list[int]:
        """Scratchpad words of ``core`` through ``ext_read`` (one per clock while the port
        is granted)."""
        dut = self.dut
        self._select("ext_core", core)
        words = []
        for address in addresses:
            while True:
                dut.ext_read__addr.value = address
                dut.ext_read__en.value = 1
                await ReadOnly()
                granted = bool(dut.ext_read__grant.value)
                await RisingEdge(dut.clk)
                if granted:
                    break
            dut.ext_read__en.value = 0
            await ReadOnly()
            words.append(int(dut.ext_read__data.value))
            await RisingEdge(dut.clk)
        return words

    def counters(self) -> dict:
        """The NPU's counters (with several cores: ``cycles`` while any runs, the rest
        summed over the cores)."""
        return unpack_table(self._npu_fields, int(self.dut.counters.value))

    def core_counters(self, core: int) -> dict:
        if self.cores == 1:
            return self.counters()
        return unpack_table(self._npu_fields, int(getattr(self.dut, f"core_counters__{core}").value))

    def error_core(self) -> int:
        return int(self.dut.error_core.value) if self.cores > 1 else 0

    def controller_counters(self, c: int) -> dict:
        return unpack_table(self._ctrl_fields, int(self._ports[c]["ctrl_counters"].value))

    def finish(self):
        """End of the test: every command logged so far checked, refresh deadlines, and
        the controllers' command counters equal to the logged counts (both cover the
        clocks up to the last rising edge: the RTL counts a command the clock after it is
        on the bus, the recorder logs it at that edge)."""
        self.drain_commands()
        for c in range(self.channels):
            self.checkers[c].finish(int(self._ports[c]["cycle"].value))
            counters = self.controller_counters(c)
            for name in CTRL_COUNTERS:
                if name in Opcode.__members__:
                    seen = self.commands[c][Opcode[name]]
                    assert counters[name] == seen, (
                        f"channel {c}: RTL counter {name} = {counters[name]}, the command "
                        f"log has {seen}")

    def sim_rate(self) -> float:
        return self.cycles / self.wall if self.wall else 0.0
