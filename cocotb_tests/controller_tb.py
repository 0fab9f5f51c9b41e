"""Testbench for ``rtl.controller.ControllerTop``: drivers for the request and PIM
streams (with idle cycles), response monitors (with back-pressure), a command monitor
that feeds every command to the DRAM timing checker, and a scoreboard.

Scoreboard rules: every request completes exactly once; a read returns the data of the
last write to its address accepted before it (program order); a GEMV returns the golden
model's results bit for bit; in BLOCKED mode no RD/WR reaches a bank whose PIM buffer is
open; the RTL raises no error; a watchdog fails a run that stops making progress."""
from __future__ import annotations

import collections
import os
import random
import time
from dataclasses import dataclass

import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge

from rtl.channel import ChannelError
from rtl.config import DeviceConfig, RowBufferMode
from rtl.controller import (COUNTERS, CommandSource, ControllerError, PimOp, RefreshRate,
                            pim_request_layout, read_response_layout, request_layout)
from rtl.controller.interface import counters_layout
from rtl.isa import Opcode, decode_command

from .channel_tb import config_from_env, pack_fp16, unpack_fp16
from .timing_checker import TimingChecker, format_command


def pack(layout, **fields) -> int:
    value = 0
    for name, field in layout:
        raw = fields.get(name, 0)
        raw = raw.value if hasattr(raw, "value") else int(raw)
        value |= (raw & ((1 << field.width) - 1)) << field.offset
    return value


def unpack(layout, value: int) -> dict:
    return unpack_table(field_table(layout), value)


def field_table(layout) -> tuple:
    """(name, offset, mask) per field of ``layout``, for :func:`unpack_table` (monitors that
    unpack a value many times)."""
    return tuple((name, field.offset, (1 << field.width) - 1) for name, field in layout)


def unpack_table(table, value: int) -> dict:
    return {name: (value >> offset) & mask for name, offset, mask in table}


@dataclass
class Request:
    write: bool
    rank: int
    bankgroup: int
    bank: int
    row: int
    column: int
    data: int = 0
    not_before: int = 0
    order: int = -1       # writes: position in program order (for ``PimRequest.after_writes``)
    after_gemvs: int = 0  # enter once this many GEMV results have returned


@dataclass
class PimRequest:
    op: PimOp
    rank: int = 0
    bankgroup: int = 0
    bank: int = 0
    row: int = 0
    column: int = 0
    comps: int = 0
    gemvs: int = 0
    expected: np.ndarray | None = None    # GEMV: golden FP16 results, one per bank
    not_before: int = 0
    after_writes: int = 0                 # enter once writes 0 .. after_writes-1 (``order``)
                                          # are all acknowledged
    meaning: object = None                # what the caller attaches (kept with the result)


class ControllerTB:
    """Owns clock, reset, drivers, monitors and the scoreboard of one ControllerTop."""

    def __init__(self, dut, config: DeviceConfig | None = None, seed: int = 1,
                 idle: float = 0.0, backpressure: float = 0.0, watchdog: int = 20_000,
                 check_data: bool = True):
        self.dut = dut
        self.config = config or config_from_env()
        g = self.config.geometry
        self.random = random.Random(seed)
        self.idle, self.backpressure, self.watchdog = idle, backpressure, watchdog
        self.check_data = check_data
        self.checker = TimingChecker(self.config)
        self.requests: collections.deque[Request] = collections.deque()
        self.pim: collections.deque[PimRequest] = collections.deque()
        self.req_layout = request_layout(self.config)
        self.pim_layout = pim_request_layout(self.config)
        self.resp_layout = read_response_layout(self.config)
        self.tags = self.config.controller.tags
        self.free_tags = collections.deque(range(self.tags))
        self.waiting: dict[int, tuple[Request, int]] = {}   # tag -> (request, expected data)
        self.gemvs_waiting: collections.deque[PimRequest] = collections.deque()
        self.gemv_results: list[tuple[PimRequest, np.ndarray]] = []
        self.writes_in_order = 0            # writes 0 .. n-1 (by ``order``) all acknowledged
        self._writes_done: set[int] = set()
        self.memory: dict[tuple[int, int, int], int] = {}   # (bank, stored row, column)
        self.command_log: list[str] | None = None
        self.commands = collections.Counter()
        self.sources = collections.Counter()
        self.recent: collections.deque = collections.deque(maxlen=16)
        self.pim_open = [False] * g.banks
        self.cycle = 0
        self.completed = {"reads": 0, "writes": 0, "gemvs": 0}
        self.last_response_cycle = 0
        self.wall = 0.0
        self.progress = os.environ.get("NEUPIMS_PROGRESS")
        self.pim_events: list[tuple[int, Opcode, int]] = []   # PIM_GEMV, REF, G_ACT
        self.first_accept_cycle = None

    # -- set-up --
    async def start(self):
        dut = self.dut
        Clock(dut.clk, 1, "ns").start()
        for name in ("requests__valid", "pim_requests__valid", "read_responses__ready",
                     "write_responses__ready", "pim_responses__ready", "backdoor_en"):
            getattr(dut, name).value = 0
        dut.refresh_rate.value = RefreshRate.of(self.config.refresh_rate).value
        dut.blocked.value = int(self.config.mode is RowBufferMode.BLOCKED)
        dut.rst.value = 1
        await ClockCycles(dut.clk, 2)
        dut.rst.value = 0
        await RisingEdge(dut.clk)

    def storage_key(self, bank: int, row: int, column: int):
        return bank, row % self.config.stored_rows, column

    async def backdoor_row(self, bank: int, row: int, elements: np.ndarray):
        """Write one row of ``bank`` (FP16 bit patterns) without commands; the model knows it."""
        g = self.config.geometry
        per = g.burst_bytes // 2
        dut = self.dut
        dut.backdoor_en.value = 1
        dut.backdoor_bank.value = bank
        for column in range(g.bursts_per_row):
            value = pack_fp16(elements[column * per:(column + 1) * per])
            dut.backdoor_addr.value = (row % self.config.stored_rows) * g.bursts_per_row + column
            dut.backdoor_data.value = value
            self.memory[self.storage_key(bank, row, column)] = value
            await RisingEdge(dut.clk)
        dut.backdoor_en.value = 0

    def flat(self, rank, bankgroup, bank) -> int:
        return self.config.geometry.bank_index(rank, bankgroup, bank)

    # -- the run --
    async def run(self, max_cycles: int = 10_000_000, drain: int = 0):
        """Drive until every queued request has completed (then ``drain`` idle cycles)."""
        dut, rnd = self.dut, self.random
        started = time.perf_counter()
        self.cycle = int(dut.cycle.value)
        quiet, end = 0, None
        pim_pending = None
        while True:
            await RisingEdge(dut.clk)
            self.cycle += 1
            now = self.cycle
            # drive this cycle's inputs
            offer = None
            if self.requests and self.free_tags and now >= self.requests[0].not_before \
                    and self.completed["gemvs"] >= self.requests[0].after_gemvs \
                    and not (self.idle and rnd.random() < self.idle):
                offer = self.requests[0]
                tag = self.free_tags[0]
                dut.requests__payload.value = pack(
                    self.req_layout, write=offer.write, rank=offer.rank,
                    bankgroup=offer.bankgroup, bank=offer.bank, row=offer.row,
                    column=offer.column, tag=tag, data=offer.data)
            dut.requests__valid.value = offer is not None
            pim_offer = None
            if self.pim and now >= self.pim[0].not_before \
                    and self.writes_in_order >= self.pim[0].after_writes:
                pim_offer = self.pim[0]
                if pim_offer is not pim_pending:
                    p = pim_offer
                    dut.pim_requests__payload.value = pack(
                        self.pim_layout, op=p.op, rank=p.rank, bankgroup=p.bankgroup,
                        bank=p.bank, row=p.row, column=p.column, comps=p.comps, gemvs=p.gemvs)
                    pim_pending = p
            dut.pim_requests__valid.value = pim_offer is not None
            ready = [not (self.backpressure and rnd.random() < self.backpressure)
                     for _ in range(3)]
            dut.read_responses__ready.value = ready[0]
            dut.write_responses__ready.value = ready[1]
            dut.pim_responses__ready.value = ready[2]

            await ReadOnly()
            progress = False
            if offer is not None and dut.requests__ready.value:
                if self.first_accept_cycle is None:
                    self.first_accept_cycle = now
                self._accept(offer, self.free_tags.popleft())
                self.requests.popleft()
                progress = True
            if pim_offer is not None and dut.pim_requests__ready.value:
                if pim_offer.op is PimOp.GEMV:
                    self.gemvs_waiting.append(pim_offer)
                self.recent.append((f"{now} PIM request {pim_offer.op.name} row {pim_offer.row} "
                                    f"bank {pim_offer.bank} k {pim_offer.comps}", "accepted"))
                self.pim.popleft()
                progress = True
            if ready[0] and dut.read_responses__valid.value:
                self._read_response(int(dut.read_responses__payload.value))
                progress = True
            if ready[1] and dut.write_responses__valid.value:
                self._write_response(int(dut.write_responses__payload.value))
                progress = True
            if ready[2] and dut.pim_responses__valid.value:
                self._pim_response(int(dut.pim_responses__payload.value))
                progress = True
            if dut.cmd_valid.value:
                self._command(int(dut.cmd.value), int(dut.cycle.value),
                              int(dut.cmd_source.value))
                progress = True
            if now % 64 == 0 or not (self.requests or self.pim or self.waiting
                                     or self.gemvs_waiting):
                self._check_errors()
            quiet = 0 if progress else quiet + 1
            busy = self.requests or self.pim or self.waiting or self.gemvs_waiting
            if busy and quiet > self.watchdog:
                raise AssertionError(
                    f"watchdog: no progress for {quiet} cycles at cycle {now}; "
                    f"{len(self.requests)} requests not accepted, {len(self.waiting)} "
                    f"outstanding, {len(self.pim)} PIM requests queued, "
                    f"{len(self.gemvs_waiting)} GEMV results missing")
            if self.progress and now % 20_000 == 0:
                with open(self.progress, "w") as f:
                    f.write(f"{now} {sum(self.completed.values())}\n")
            if now > max_cycles:
                raise AssertionError(f"run exceeded {max_cycles} cycles")
            if not busy:
                if end is None:
                    end = now + drain
                if now >= end:
                    break
        self.wall += time.perf_counter() - started
        await RisingEdge(dut.clk)
        for name in ("requests__valid", "pim_requests__valid"):
            getattr(dut, name).value = 0

    # -- scoreboard --
    def _accept(self, request: Request, tag: int):
        key = self.storage_key(self.flat(request.rank, request.bankgroup, request.bank),
                               request.row, request.column)
        if request.write:
            self.memory[key] = request.data
            self.waiting[tag] = (request, None)
        else:
            self.waiting[tag] = (request, self.memory.get(key, 0))

    def _take(self, tag: int, write: bool):
        if tag not in self.waiting:
            raise AssertionError(f"cycle {self.cycle}: response for tag {tag}, which has no "
                                 "outstanding request (duplicate or spurious response)")
        request, expected = self.waiting.pop(tag)
        if request.write != write:
            raise AssertionError(f"cycle {self.cycle}: {'write' if write else 'read'} response "
                                 f"for tag {tag}, whose request is a "
                                 f"{'write' if request.write else 'read'}")
        self.free_tags.append(tag)
        self.last_response_cycle = self.cycle
        return request, expected

    def _read_response(self, value: int):
        fields = unpack(self.resp_layout, value)
        request, expected = self._take(fields["tag"], write=False)
        self.completed["reads"] += 1
        if self.check_data and fields["data"] != expected:
            raise AssertionError(f"cycle {self.cycle}: read {request} returned "
                                 f"{fields['data']:#x}, expected the last write {expected:#x}")

    def _write_response(self, value: int):
        request, _ = self._take(value & (self.tags - 1), write=True)
        self.completed["writes"] += 1
        if request.order >= 0:
            self._writes_done.add(request.order)
            while self.writes_in_order in self._writes_done:
                self._writes_done.discard(self.writes_in_order)
                self.writes_in_order += 1

    def _pim_response(self, value: int):
        fields = unpack(self.resp_layout, value)
        if not self.gemvs_waiting:
            raise AssertionError(f"cycle {self.cycle}: GEMV result with no GEMV outstanding")
        request = self.gemvs_waiting.popleft()
        self.completed["gemvs"] += 1
        self.last_response_cycle = self.cycle
        banks = self.config.geometry.banks
        got = unpack_fp16(fields["data"], self.config.geometry.burst_bytes // 2)[:banks]
        self.gemv_results.append((request, got))
        if request.expected is not None and not np.array_equal(got, request.expected):
            raise AssertionError(f"cycle {self.cycle}: GEMV {request.column}+{request.comps} "
                                 f"returned {got.tolist()}, golden {request.expected.tolist()}")

    def _command(self, value: int, cycle: int, source: int):
        cmd = decode_command(self.config, value, cycle)
        self.sources[CommandSource(source).name] += 1
        self.recent.append((cmd, CommandSource(source).name))
        try:
            self.checker.check(cmd)
        except AssertionError as error:
            history = "\n  ".join(f"{c if isinstance(c, str) else format_command(c)}  ({who})"
                                  for c, who in self.recent)
            raise AssertionError(f"{error}\nlast commands:\n  {history}") from error
        self.commands[cmd.op] += 1
        if cmd.op in (Opcode.PIM_GEMV, Opcode.REF, Opcode.G_ACT):
            self.pim_events.append((cmd.cycle, cmd.op, cmd.comps))
        if self.command_log is not None:
            self.command_log.append(format_command(cmd))
        g = self.config.geometry
        if cmd.op is Opcode.G_ACT:
            base = (cmd.rank * g.bankgroups + cmd.bankgroup) * g.banks_per_group
            for b in range(base, base + g.banks_per_group):
                self.pim_open[b] = True
        elif cmd.op is Opcode.PIM_PRECHARGE:
            self.pim_open[self.flat(cmd.rank, cmd.bankgroup, cmd.bank)] = False
        elif cmd.op in (Opcode.RD, Opcode.WR) and self.config.mode is RowBufferMode.BLOCKED:
            if self.pim_open[self.flat(cmd.rank, cmd.bankgroup, cmd.bank)]:
                raise AssertionError(f"BLOCKED mode: {cmd} reached a bank whose PIM buffer "
                                     "is open (locked by a GEMV)")

    def _check_errors(self):
        dut = self.dut
        if dut.error.value:
            raise AssertionError(f"controller error {ControllerError(int(dut.error_code.value))}")
        if dut.channel_error.value:
            raise AssertionError(
                f"channel error {ChannelError(int(dut.channel_error_code.value)).name} at bank "
                f"{int(dut.channel_error_bank.value)}, cycle {int(dut.channel_error_cycle.value)}")

    # -- after the run --
    def counters(self) -> dict:
        return unpack(counters_layout(), int(self.dut.counters.value))

    def finish(self) -> dict:
        """End-of-run audit: the refresh deadline, counters against the monitor, and that
        nothing is left outstanding. Returns the RTL counters."""
        self._check_errors()
        self.checker.finish(int(self.dut.cycle.value))
        counters = self.counters()
        for name in COUNTERS:
            if name in Opcode.__members__:
                assert counters[name] == self.commands[Opcode[name]], (
                    f"RTL counter {name} = {counters[name]}, monitor saw "
                    f"{self.commands[Opcode[name]]}")
        assert counters["row_hits"] + counters["row_misses"] == counters["RD"] + counters["WR"]
        assert not self.waiting and not self.gemvs_waiting and not self.requests
        return counters

    def comp_rates(self) -> dict:
        """COMP slots used per COMP slot available (one per ``comp_interval``): ``overall``
        from the first PIM_GEMV to the end of the last; ``steady`` only across gaps between
        consecutive PIM_GEMVs with no REF or G_ACT between them (the row set stays open)."""
        bus = self.config.bus
        gemvs = [(c, k) for c, op, k in self.pim_events if op is Opcode.PIM_GEMV]
        if not gemvs:
            return {"overall": 0.0, "steady": 0.0}
        comps = sum(k for _, k in gemvs)
        span = gemvs[-1][0] + bus.gemv_busy(gemvs[-1][1]) - gemvs[0][0]
        steady_comps, steady_span = 0, 0
        events = self.pim_events
        for (c0, op0, k0), (c1, op1, _) in zip(events, events[1:]):
            if op0 is Opcode.PIM_GEMV and op1 is Opcode.PIM_GEMV:
                steady_comps += k0
                steady_span += c1 - c0
        ci = bus.comp_interval
        return {"overall": comps * ci / span,
                "steady": steady_comps * ci / steady_span if steady_span else 0.0}

    def sim_rate(self) -> float:
        return self.cycle / self.wall if self.wall else 0.0
