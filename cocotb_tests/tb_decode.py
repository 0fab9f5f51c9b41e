"""cocotb runner of a decode run (``sim.decode.run.DecodeRun``) on ``NpuTop`` (Verilator).

Reset, the HBM image loaded once through every channel's backdoor, then each step in
order on the same device (HBM and scratchpad persist): load its program, start, run to
``done`` with every command of every channel checked by its DRAM timing checker
(``NpuTB``), then read the step's ``checks`` words through ``ext_read`` and compare them
bit for bit. An NPU error (code, pc, instruction), a controller or channel error, a
timing violation or a step past its clock limit fails the test; mismatching words do
not: they are counted and reported (``bit_exact`` false). On a timing-only build
(``config.datapath`` False: every value is zero) the check words are still read (the
same clocks as the full RTL, so later steps and refreshes line up) but not compared:
``bit_exact`` and ``mismatches`` are ``None`` (JSON null, "n/a" in the reports).

Measured from RTL signals only:
- per step, the differences of the NPU's ``counters`` and of every channel's controller
  ``ctrl_counters`` over the step (``refresh_late_max``: its value, a maximum);
- stage ends: a mark at instruction i (a WAIT or SYNC) ends on the clock the core's ``pc`` port
  becomes i + 1 (the WAIT released; observed with a value-change trigger on ``pc``, the
  clock read from ``counters.cycles``); a mark at the HALT ends when ``done`` rises,
  i.e. at the step's last clock (``cycles``);
- the timeline: every ``period`` clocks (64, doubled while a step has more than
  ``NEUPIMS_DECODE_MAX_SAMPLES`` windows) the counters are read; each window gives the
  busy fraction (the mean over the cores) of the systolic array (``array_busy``), DMA,
  GEMM, vector unit and the PIM of each channel (controller ``pim_busy_cycles``).
- several cores: each core's program is loaded, they start together, the step ends when
  all are done; stage ends are core 0's marks (its stage barriers are SYNCs, so every
  core is there); every core's checks are read and compared.

Environment: ``NEUPIMS_DECODE_RUN`` (pickled DecodeRun), ``NEUPIMS_DECODE_RESULTS``
(JSON written after every step and at the end), ``NEUPIMS_DECODE_PROGRESS`` (optional
file that receives the progress lines too), ``NEUPIMS_DECODE_MAX_CYCLES`` (per step,
default 20,000,000), ``NEUPIMS_DECODE_PERIOD`` (default 64),
``NEUPIMS_DECODE_MAX_SAMPLES`` (default 2000), ``NEUPIMS_DECODE_PROGRESS_EVERY`` (clocks
between progress lines, default 20,000), ``NEUPIMS_DECODE_IMAGE_CLOCKS`` ("0": a
timing-only run starts its first step without the image load's clocks, which only set
the refresh phase; the full-scale points, whose image takes hundreds of thousands of
clocks)."""
from __future__ import annotations

import json
import os
import time

import cocotb

from rtl.controller.interface import COUNTERS as CTRL_COUNTERS
from rtl.isa.npu import NpuOp
from rtl.npu.core import COUNTERS as NPU_COUNTERS
from rtl.npu.core import COUNTER_WIDTH
from rtl.npu.sequencer import NpuError
from sim.decode.run import load_run

from .npu_tb import NpuTB

NPU_MASK = (1 << COUNTER_WIDTH) - 1
CTRL_MASK = (1 << 32) - 1
#: Controller counters that are not counts (reported as their value at the step's end).
CTRL_MAXIMA = ("refresh_late_max",)
#: Timeline series from the NPU counters.
SERIES = {"array": "array_busy", "dma": "dma_busy", "gemm": "gemm_busy",
          "vector": "vector_busy", "pim_port": "pim_busy"}
SHOWN_MISMATCHES = 8


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


class Progress:
    """Progress lines: on stdout (the simulation log) and in ``NEUPIMS_DECODE_PROGRESS``
    (``run_on_rtl`` echoes that file while the simulation runs)."""

    def __init__(self):
        path = os.environ.get("NEUPIMS_DECODE_PROGRESS")
        self.file = open(path, "a", buffering=1) if path else None

    def __call__(self, line: str):
        print(f"[decode] {line}", flush=True)
        if self.file:
            self.file.write(line + "\n")


def _npu_delta(after: dict, before: dict) -> dict:
    return {k: (after[k] - before[k]) & NPU_MASK for k in NPU_COUNTERS}


def _ctrl_delta(after: dict, before: dict) -> dict:
    return {k: after[k] if k in CTRL_MAXIMA else (after[k] - before[k]) & CTRL_MASK
            for k in CTRL_COUNTERS}


class StepRecorder:
    """Stage marks and timeline samples of one step."""

    def __init__(self, tb: NpuTB, step, period: int, max_samples: int, show, every: int):
        self.tb, self.step = tb, step
        self.program = step.instructions()
        self.period, self.max_samples = period, max_samples
        self.cores = tb.cores
        self.show, self.every = show, every
        self.channels = tb.channels
        self.npu0 = tb.counters()
        self.ctrl0 = [tb.controller_counters(c) for c in range(self.channels)]
        self.base = self.npu0["cycles"]
        self.points = [self._point(0, self.npu0, self.ctrl0)]
        self.ends: list[int | None] = [None] * len(step.marks)
        self.next_mark = 0
        self.began = time.perf_counter()
        self.next_progress = every
        self.final = None

    def _point(self, clocks, npu, ctrl):
        return (clocks, {k: npu[v] for k, v in SERIES.items()},
                [c["pim_busy_cycles"] for c in ctrl])

    # -- callbacks (read-only phase) --
    def pc_changed(self, pc: int):
        marks = self.step.marks
        while self.next_mark < len(marks):
            _, index = marks[self.next_mark]
            if self.program[index].op is NpuOp.HALT or index >= pc:
                break
            self.ends[self.next_mark] = (self.tb.npu_cycles() - self.base) & NPU_MASK
            self.next_mark += 1

    def sample(self, clocks: int, done: bool):
        npu = self.tb.counters()
        ctrl = [self.tb.controller_counters(c) for c in range(self.channels)]
        self.points.append(self._point(clocks, npu, ctrl))
        if done:
            self.final = (npu, ctrl)
        if clocks >= self.next_progress and not done:
            wall = time.perf_counter() - self.began
            self.show(f"  {self.step.label or 'step'}: {clocks:,} cycles, "
                      f"{clocks / wall if wall else 0:,.0f} cycles/s")
            self.next_progress = (clocks // self.every + 1) * self.every
        if len(self.points) > self.max_samples + 1 and not done:
            self.period *= 2     # keep the windows that end on a multiple of the new period
            self.points = [p for p in self.points if p[0] % self.period == 0]
            return self.period
        return None

    # -- after done --
    def stages(self, cycles: int) -> list[dict]:
        out, previous = [], 0
        for i, (name, index) in enumerate(self.step.marks):
            end = cycles if self.program[index].op is NpuOp.HALT else self.ends[i]
            if end is None:
                raise AssertionError(f"{self.step.label}: the completion of instruction "
                                     f"{index} (mark {name!r}) was not observed")
            out.append({"name": name, "index": index, "end": end, "cycles": end - previous})
            previous = end
        return out

    def timeline(self) -> dict:
        points = self.points
        line = {"period": self.period, "start": [], "end": [],
                **{k: [] for k in SERIES}, "pim": [[] for _ in range(self.channels)]}
        for (c0, n0, p0), (c1, n1, p1) in zip(points, points[1:]):
            span = c1 - c0
            if span <= 0:
                continue
            line["start"].append(c0)
            line["end"].append(c1)
            for k in SERIES:       # several cores: the mean over the cores
                line[k].append(round(((n1[k] - n0[k]) & NPU_MASK) / (span * self.cores), 4))
            for c in range(self.channels):
                line["pim"][c].append(round(((p1[c] - p0[c]) & CTRL_MASK) / span, 4))
        return line


def _instruction_at(program, pc: int) -> str:
    if 0 <= pc < len(program):
        return f"pc {pc}: {program[pc]}"
    return f"pc {pc} (past the program of {len(program)} instructions)"


async def _run_step(tb: NpuTB, step, index: int, show, max_cycles: int, period: int,
                    max_samples: int, every: int) -> dict:
    label = step.label or f"step {index}"
    cores = step.core_programs()
    words = sum(len(program) for program, _ in cores)
    loading = time.perf_counter()
    if words >= every:      # long enough to be worth a line (the paper's grid: minutes)
        show(f"{label}: loading {words:,} instructions into {len(cores)} core(s), one per clock")
    for core, (program, _) in enumerate(cores):
        await tb.load_program(program, core)
    if words >= every:
        took = time.perf_counter() - loading
        show(f"{label}: {words:,} instructions loaded in {took:.0f} s "
             f"({words / max(took, 1e-9):,.0f} cycles/s)")
    commands0 = [sum(c.values()) for c in tb.commands]
    rec = StepRecorder(tb, step, period, max_samples, show, every)
    began = time.perf_counter()
    try:
        cycles = await tb.run_sampled(rec.sample, period=period, max_cycles=max_cycles,
                                      pc_changed=rec.pc_changed)
    except AssertionError as error:
        pc = int(tb.dut.pc.value)
        raise AssertionError(f"{label}: {error}; at {_instruction_at(rec.program, pc)}") from error
    wall = time.perf_counter() - began
    code, pc = tb.error()
    if code is not NpuError.NONE:
        core = tb.error_core()
        where = f" on core {core}" if len(cores) > 1 else ""
        raise AssertionError(f"{label}: NPU error {code.name}{where} at "
                             f"{_instruction_at(cores[core][0], pc)}")
    npu, ctrl = rec.final
    counters = _npu_delta(npu, rec.npu0)
    assert counters["cycles"] == cycles, (counters["cycles"], cycles)
    controllers = [_ctrl_delta(ctrl[c], rec.ctrl0[c]) for c in range(tb.channels)]
    commands = [sum(c.values()) - c0 for c, c0 in zip(tb.commands, commands0)]
    stages = rec.stages(cycles)
    # the checks of every core, bit for bit (read in both elaborations: the same clocks;
    # compared only when the RTL has its datapath)
    compared = tb.config.datapath
    bad, checked = [], 0
    for core, (_, checks) in enumerate(cores):
        addresses = sorted(checks)
        words = await tb.read_words(addresses, core) if addresses else []
        checked += len(addresses)
        bad += [(core, a, int(checks[a]), w) for a, w in zip(addresses, words)
                if compared and w != int(checks[a])]
    return {
        "label": label, "index": index, "tokens": step.tokens,
        "instructions": len(rec.program), "cycles": cycles,
        "counters": counters, "controllers": controllers,
        "commands_checked": sum(commands), "commands_by_channel": commands,
        "command_digests": [tb.command_digest(c) for c in range(tb.channels)],
        "timing_violations": 0,
        "stages": stages, "timeline": rec.timeline(),
        "checks": checked, "mismatches": len(bad) if compared else None,
        "bit_exact": not bad if compared else None,
        "first_mismatches": [{"core": core, "address": a, "expected": f"{e:#x}",
                              "actual": f"{w:#x}", "bits_differing": bin(int(e) ^ w).count("1")}
                             for core, a, e, w in bad[:SHOWN_MISMATCHES]],
        "wall_s": round(wall, 3), "cycles_per_s": round(cycles / wall, 1) if wall else 0.0,
    }


def _summary(run, steps, wall, complete, load, error=None) -> dict:
    cycles = sum(s["cycles"] for s in steps)
    sim_wall = sum(s["wall_s"] for s in steps)
    compared = run.config.datapath      # timing-only: no data checks (None)
    out = {
        "mode": run.mode, "config": run.config.to_dict(), "config_summary": run.config.summary(),
        "description": run.description, "clock_hz": run.config.timing.clock_hz,
        "datapath": run.config.datapath,
        "complete": complete, "steps_total": len(run.steps), "steps": steps,
        "cycles": cycles, "tokens": sum(s["tokens"] for s in steps),
        "bit_exact": (complete and all(s["bit_exact"] for s in steps)) if compared else None,
        "mismatches": sum(s["mismatches"] for s in steps) if compared else None,
        "commands_checked": sum(s["commands_checked"] for s in steps),
        "timing_violations": 0, "load_image": load,
        "wall_s": round(wall, 3),
        "sim_cycles_per_s": round(cycles / sim_wall, 1) if sim_wall else 0.0,
    }
    if error is not None:
        out["error"] = error
    return out


def _exact(bit_exact, mismatches) -> str:
    if bit_exact is None:
        return "n/a (timing-only)"
    return "yes" if bit_exact else f"NO ({mismatches} mismatches)"


def _write(path, data):
    if not path:
        return
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, default=str)
    os.replace(tmp, path)


@cocotb.test()
async def decode_run(dut):
    run = load_run(os.environ["NEUPIMS_DECODE_RUN"])
    out = os.environ.get("NEUPIMS_DECODE_RESULTS")
    max_cycles = _env_int("NEUPIMS_DECODE_MAX_CYCLES", 20_000_000)
    period = _env_int("NEUPIMS_DECODE_PERIOD", 64)
    max_samples = _env_int("NEUPIMS_DECODE_MAX_SAMPLES", 2000)
    every = _env_int("NEUPIMS_DECODE_PROGRESS_EVERY", 20_000)
    run.validate()
    show = Progress()
    began = time.perf_counter()
    tb = NpuTB(dut, run.config,
               registered_ports=os.environ.get("NEUPIMS_REGISTERED_PORTS", "1") == "1")
    await tb.start()
    # timing-only, nothing stored: the load's clocks only set the refresh phase
    skip = not run.config.datapath and os.environ.get("NEUPIMS_DECODE_IMAGE_CLOCKS") == "0"
    bursts = 0 if skip else len(run.image.words)
    show(f"{run.mode}: {run.config.summary()}; {len(run.steps)} step(s); "
         + ("no image load (timing-only)" if skip else f"loading {bursts:,} HBM bursts"))
    t0 = time.perf_counter()
    if not skip:
        await tb.load_image(run.image)
    load = {"bursts": bursts, "wall_s": round(time.perf_counter() - t0, 3)}
    steps: list[dict] = []
    try:
        for i, step in enumerate(run.steps):
            result = await _run_step(tb, step, i, show, max_cycles, period, max_samples, every)
            steps.append(result)
            show(f"step {i + 1}/{len(run.steps)} ({result['label']}): {result['cycles']:,} "
                 f"cycles, {result['commands_checked']:,} commands checked, bit-exact "
                 f"{_exact(result['bit_exact'], result['mismatches'])}"
                 f", {result['cycles_per_s']:,.0f} cycles/s")
            _write(out, _summary(run, steps, time.perf_counter() - began, False, load))
        tb.finish()
    except AssertionError as error:
        _write(out, _summary(run, steps, time.perf_counter() - began, False, load,
                             error=str(error)))
        raise
    summary = _summary(run, steps, time.perf_counter() - began, True, load)
    _write(out, summary)
    show(f"{run.mode}: {summary['cycles']:,} cycles in {len(steps)} step(s), bit-exact "
         f"{_exact(summary['bit_exact'], summary['mismatches'])}, "
         f"{summary['sim_cycles_per_s']:,.0f} "
         f"cycles/s ({summary['wall_s']:.1f} s wall)")
