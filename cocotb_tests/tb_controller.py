"""cocotb tests of the channel controller (ControllerTop). Parameters come from the
environment (NEUPIMS_CONFIG, NEUPIMS_SEED, NEUPIMS_REQUESTS, NEUPIMS_REPORT, ...); each
test writes its counters and coverage to $NEUPIMS_REPORT when set."""
from __future__ import annotations

import json
import os

import cocotb
import numpy as np

from rtl.config import RowBufferMode
from rtl.controller import PimOp
from rtl.isa import Opcode
from sim.golden.pim import gemv

from .channel_tb import finite_fp16
from .controller_tb import ControllerTB, PimRequest, Request

MATRIX_ROW, VECTOR_ROW = 0, 1


def _env_int(name, default):
    return int(os.environ.get(name, default))


def _report(tb, counters, **extra):
    path = os.environ.get("NEUPIMS_REPORT")
    if path:
        data = {"config": tb.config.name, "mode": tb.config.mode.value, "counters": counters,
                "commands": {op.name: n for op, n in tb.commands.items()},
                "completed": tb.completed, "cycles": tb.cycle,
                "sim_cycles_per_s": tb.sim_rate(), **extra}
        with open(path, "w") as f:
            json.dump(data, f, indent=1)


class Workload:
    """Random normal traffic plus GEMVs on a row set, with golden results."""

    def __init__(self, tb: ControllerTB, rng: np.random.Generator):
        self.tb, self.rng = tb, rng
        cfg = tb.config
        self.g = cfg.geometry
        self.pim = cfg.mode is not RowBufferMode.DRAM
        self.matrix = finite_fp16(rng, (self.g.banks, self.g.row_elements))
        self.vectors = {b: finite_fp16(rng, self.g.row_elements) for b in (0, 1)}

    async def load(self):
        for bank in range(self.g.banks):
            await self.tb.backdoor_row(bank, MATRIX_ROW, self.matrix[bank])
        for bank, vector in self.vectors.items():
            await self.tb.backdoor_row(bank, VECTOR_ROW, vector)

    def normal(self, count: int, spread: int, write_share=0.4, locality=0.6,
               away_from_pim=False):
        """``count`` reads/writes entering over about ``spread`` cycles; writes avoid the
        matrix and vector rows (so GEMV inputs stay fixed), reads too if ``away_from_pim``
        (otherwise reads of the matrix row wait while a header reserves it)."""
        g, rng, tb = self.g, self.rng, self.tb
        rows = tb.config.stored_rows if not tb.config.wrap_rows else g.rows
        times = np.sort(rng.integers(0, max(spread, 1), count))
        last = None
        for when in times:
            write = bool(rng.random() < write_share)
            if last is not None and rng.random() < locality:
                rank, bg, bank, row, column = last
                column = (column + 1) % g.bursts_per_row
            else:
                rank, bg, bank = (int(rng.integers(g.ranks)), int(rng.integers(g.bankgroups)),
                                  int(rng.integers(g.banks_per_group)))
                row, column = int(rng.integers(rows)), int(rng.integers(g.bursts_per_row))
            if (write or away_from_pim) and row in (MATRIX_ROW, VECTOR_ROW):
                row = 2 + row % max(rows - 2, 1) if rows > 2 else row
                if row in (MATRIX_ROW, VECTOR_ROW):
                    write = False
            data = int.from_bytes(rng.bytes(g.burst_bytes), "little") if write else 0
            tb.requests.append(Request(write, rank, bg, bank, row, column, data, int(when)))
            last = (rank, bg, bank, row, column)

    def gemvs(self, headers: int, spread: int, most_gemvs: int = 6, start: int = 0):
        """``headers`` row sets, each after a GWRITE of one of the vectors, with random tiles."""
        if not self.pim:
            return
        rng, tb, g = self.rng, self.tb, self.g
        per_row = tb.config.bus.comps_per_row
        lanes = tb.config.pim.lanes
        times = np.sort(rng.integers(start, start + max(spread, 1), headers))
        for when in times:
            bank = int(rng.integers(2))
            rank, bg, b = g.bank_coords(bank)
            vector = self.vectors[bank]
            tb.pim.append(PimRequest(PimOp.GWRITE, rank, bg, b, VECTOR_ROW,
                                     not_before=int(when)))
            tiles = []
            for _ in range(int(rng.integers(1, most_gemvs + 1))):
                k = int(rng.integers(1, per_row + 1))
                column = int(rng.integers(0, per_row - k + 1))
                tiles.append((column, k))
            tb.pim.append(PimRequest(PimOp.HEADER, row=MATRIX_ROW, gemvs=len(tiles),
                                     comps=sum(k for _, k in tiles)))
            for column, k in tiles:
                expected = gemv(self.matrix, vector, lanes, column, k)
                tb.pim.append(PimRequest(PimOp.GEMV, column=column, comps=k, expected=expected))


async def _start(dut, **kw):
    seed = _env_int("NEUPIMS_SEED", 1)
    kw.setdefault("idle", float(os.environ.get("NEUPIMS_IDLE", "0.1")))
    kw.setdefault("backpressure", float(os.environ.get("NEUPIMS_BACKPRESSURE", "0.1")))
    tb = ControllerTB(dut, seed=seed, **kw)
    await tb.start()
    return tb, np.random.default_rng(seed)


@cocotb.test()
async def stress(dut):
    """Mixed reads, writes, GWRITEs and GEMVs (with refresh) at random times."""
    tb, rng = await _start(dut)
    work = Workload(tb, rng)
    await work.load()
    count = _env_int("NEUPIMS_REQUESTS", 3000)
    spread = count * 6
    work.normal(count, spread)
    work.gemvs(max(count // 150, 2), spread, most_gemvs=_env_int("NEUPIMS_MOST_GEMVS", 6))
    # a header too long to fit between two refreshes: PIM must wait for a refresh, and
    # its GEMVs then run across the next one (the row set is closed and opened again)
    bus = tb.config.bus
    lanes, per_row = tb.config.pim.lanes, bus.comps_per_row
    long_gemvs = 1 + tb.config.timing.tREFI // bus.readres_after_first_comp(per_row)
    if work.pim:
        vector = work.vectors[0]
        for p in reversed(tb.pim):          # the vector of the last GWRITE queued
            if p.op is PimOp.GWRITE:
                vector = work.vectors[tb.flat(p.rank, p.bankgroup, p.bank)]
                break
        tb.pim.append(PimRequest(PimOp.HEADER, row=MATRIX_ROW, gemvs=long_gemvs,
                                 comps=long_gemvs * per_row, not_before=spread // 2))
        expected = gemv(work.matrix, vector, lanes, 0, per_row)
        for _ in range(long_gemvs):
            tb.pim.append(PimRequest(PimOp.GEMV, column=0, comps=per_row, expected=expected))
    await tb.run()
    counters = tb.finish()
    coverage = {
        "commands": sorted(op.name for op, n in tb.commands.items() if n),
        "queue_full": counters["read_queue_full"] + counters["write_queue_full"]
        + counters["bank_queue_full"] > 0,
        "refresh_deferred_pim": counters["pim_refresh_holds"] > 0,
        "row_conflicts": counters["row_misses"] > 0 and tb.commands[Opcode.PRE] > 0,
    }
    assert tb.completed["reads"] + tb.completed["writes"] == count
    _report(tb, counters, coverage=coverage)
    dut._log.info(f"stress: {tb.cycle} cycles, {tb.completed}, {tb.sim_rate():,.0f} cycles/s, "
                  f"coverage {coverage}")


@cocotb.test()
async def refresh_defers_pim(dut):
    """A header whose estimate does not fit before the next refresh waits for the REF; the
    row set opens after it; the GEMV results are exact."""
    tb, rng = await _start(dut, idle=0.0, backpressure=0.0)
    work = Workload(tb, rng)
    await work.load()
    if not work.pim:
        return
    t, bus = tb.config.timing, tb.config.bus
    per_row, lanes = bus.comps_per_row, tb.config.pim.lanes
    gemvs = 1 + 2 * t.tREFI // (4 * bus.gemv_busy(per_row))   # about half an interval
    when = t.tREFI - bus.gemv_latency_estimate(0, 0, gemvs * per_row, gemvs) // 2
    tb.pim.append(PimRequest(PimOp.GWRITE, *tb.config.geometry.bank_coords(0), VECTOR_ROW))
    tb.pim.append(PimRequest(PimOp.HEADER, row=MATRIX_ROW, gemvs=gemvs,
                             comps=gemvs * per_row, not_before=when))
    for _ in range(gemvs):
        tb.pim.append(PimRequest(PimOp.GEMV, column=0, comps=per_row,
                                 expected=gemv(work.matrix, work.vectors[0], lanes, 0, per_row)))
    tb.command_log = []
    await tb.run()
    counters = tb.finish()
    assert counters["pim_refresh_holds"] == 1, counters
    ops = [line.split()[1] for line in tb.command_log]
    assert ops.index("REF") < ops.index("G_ACT"), "the row set opened before the refresh"
    _report(tb, counters)


@cocotb.test()
async def replay(dut):
    """Replay a parsed trace ($NEUPIMS_TRACE: JSON rows [write, rank, bg, bank, row,
    column, cycle]) in file order, no request before its cycle."""
    tb, rng = await _start(dut, idle=0.0, backpressure=0.0, watchdog=50_000)
    g = tb.config.geometry
    with open(os.environ["NEUPIMS_TRACE"]) as f:
        rows = json.load(f)
    for write, rank, bg, bank, row, column, cycle in rows:
        data = int.from_bytes(rng.bytes(g.burst_bytes), "little") if write else 0
        tb.requests.append(Request(bool(write), rank, bg, bank, row, column, data, cycle))
    log_path = os.environ.get("NEUPIMS_COMMAND_LOG")
    if log_path:
        tb.command_log = []
    await tb.run(max_cycles=_env_int("NEUPIMS_MAX_CYCLES", 50_000_000))
    counters = tb.finish()
    if log_path:
        with open(log_path, "w") as f:
            f.write("\n".join(tb.command_log) + "\n")
    _report(tb, counters, last_response=tb.last_response_cycle)


@cocotb.test()
async def bench(dut):
    """Benchmark scenarios; which one: $NEUPIMS_SCENARIO (seq_read, random_read,
    long_gemv, mixed). Bandwidth and COMP rate come from the RTL counters."""
    tb, rng = await _start(dut, idle=0.0, backpressure=0.0)
    g, bus = tb.config.geometry, tb.config.bus
    scenario = os.environ.get("NEUPIMS_SCENARIO", "seq_read")
    count = _env_int("NEUPIMS_REQUESTS", 8000)
    work = Workload(tb, rng)
    extra = {"scenario": scenario}
    if scenario in ("long_gemv", "mixed"):
        await work.load()
    if scenario == "seq_read":
        for i in range(count):
            rank, bg, bank = g.bank_coords((i // g.bursts_per_row) % g.banks)
            row = (i // (g.bursts_per_row * g.banks)) % tb.config.stored_rows
            tb.requests.append(Request(False, rank, bg, bank, row, i % g.bursts_per_row))
    elif scenario == "random_read":
        for _ in range(count):
            rank, bg, bank = g.bank_coords(int(rng.integers(g.banks)))
            tb.requests.append(Request(False, rank, bg, bank, int(rng.integers(tb.config.stored_rows)),
                                       int(rng.integers(g.bursts_per_row))))
    else:
        per_row = bus.comps_per_row
        gemvs = _env_int("NEUPIMS_GEMVS", 200)
        tb.pim.append(PimRequest(PimOp.GWRITE, *g.bank_coords(0), VECTOR_ROW))
        tb.pim.append(PimRequest(PimOp.HEADER, row=MATRIX_ROW, gemvs=gemvs, comps=gemvs * per_row))
        expected = gemv(work.matrix, work.vectors[0], tb.config.pim.lanes, 0, per_row)
        for _ in range(gemvs):
            tb.pim.append(PimRequest(PimOp.GEMV, column=0, comps=per_row, expected=expected))
        if scenario == "mixed":
            work.normal(count, spread=gemvs * bus.gemv_busy(per_row), write_share=0.3,
                        locality=0.8, away_from_pim=True)
    await tb.run()
    counters = tb.finish()
    cycles = counters["cycles"]
    bytes_moved = (counters["RD"] + counters["WR"]) * g.burst_bytes
    span = tb.last_response_cycle - (tb.first_accept_cycle or 0)
    extra.update(bytes=bytes_moved, bus_cycles=cycles, normal_span=span,
                 normal_gbps=bytes_moved / span * tb.config.timing.clock_hz / 1e9 if span else 0,
                 peak_gbps=g.burst_bytes / bus.burst * tb.config.timing.clock_hz / 1e9,
                 comp_rate=tb.comp_rates(), gemvs=tb.completed["gemvs"])
    _report(tb, counters, **extra)


def queue_transactions(tb: ControllerTB, program) -> int:
    """Put a ``sim.kv_layout`` program (MemWrite, GWrite, Header, Gemv) into the TB's
    queues, with the ordering the controller does not give between its two queues: a PIM
    transaction enters only after every write before it is acknowledged, and a write only
    after every GEMV before it has returned (so new scores never overwrite a staging row
    that an earlier GWRITE has not copied yet). Returns the number of writes."""
    writes = gemvs = 0
    for t in program:
        f = t.fields()
        if t.op == "WRITE":
            tb.requests.append(Request(True, f["rank"], f["bankgroup"], f["bank"], f["row"],
                                       f["column"], f["data"], order=writes, after_gemvs=gemvs))
            writes += 1
        else:
            tb.pim.append(PimRequest(PimOp[t.op], f.get("rank", 0), f.get("bankgroup", 0),
                                     f.get("bank", 0), f.get("row", 0), f.get("column", 0),
                                     f.get("comps", 0), f.get("gemvs", 0),
                                     after_writes=writes, meaning=t))
            gemvs += t.op == "GEMV"
    return writes


@cocotb.test()
async def attention(dut):
    """One decode step's attention of one request (logits K^T q, then s V over the
    transposed V) as PIM transactions from ``sim.kv_layout``, through the controller:
    bit-exact with the golden PIM computation."""
    from sim import kv_layout as kv
    from sim.models import get_model
    tb, rng = await _start(dut, idle=0.0, backpressure=0.1)
    cfg = tb.config
    shape = get_model(os.environ.get("NEUPIMS_MODEL", "tiny-gpt"))
    tokens = _env_int("NEUPIMS_TOKENS", 20)
    layout = kv.KVLayout(cfg, shape)
    channel = kv.ChannelKV(layout, rows=cfg.stored_rows, layers=1)
    pages = channel.add(0, tokens).layers[0]
    keys = finite_fp16(rng, (tokens, layout.kv_heads, layout.d_head), 0.5)
    values = finite_fp16(rng, (tokens, layout.kv_heads, layout.d_head), 0.5)
    query = finite_fp16(rng, (layout.heads, layout.d_head), 0.5)
    scores = finite_fp16(rng, (layout.heads, tokens), 0.1)
    program = (kv.token_writes(layout, pages, keys, values, 0)
               + kv.logit_program(layout, pages, tokens, query)
               + kv.attend_program(layout, pages, tokens, scores))
    queue_transactions(tb, program)
    await tb.run()
    counters = tb.finish()
    results = [(request.meaning, got) for request, got in tb.gemv_results]
    logits = kv.collect_logits(layout, results, tokens)
    want_logits = kv.golden_logits(layout, keys, query)
    bad = np.argwhere(logits != want_logits)
    assert not len(bad), f"logits differ at (head, token) {bad.tolist()[:8]}"

    output = kv.collect_attention(layout, results, tokens)
    want_output = kv.golden_attention(layout, values, scores)[1]
    bad = np.argwhere(output != want_output)
    assert not len(bad), f"attention outputs differ at (head, dim) {bad.tolist()[:8]}"
    _report(tb, counters, gemvs=len(results), tokens=tokens)
