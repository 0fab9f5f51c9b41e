"""Run a :class:`sim.decode.run.DecodeRun` on the RTL: ``NpuTop`` for the run's
configuration, built with Verilator (cached by ``sim.harness`` under
``build/verilator/npu_top-<hash>``), driven by the cocotb test
``cocotb_tests.tb_decode`` (see there for what is measured and how).

Works from a plain ``python -c``::

    from sim.decode.rtl_run import run_on_rtl
    result = run_on_rtl(run, Path("out/neupims.json"))

The results (returned, and the JSON file; cycles are NPU clocks, ``counters.cycles``)::

    mode, config (DeviceConfig.to_dict()), config_summary, description, clock_hz,
    datapath (False: a timing-only build, see below),
    complete (every step ran), steps_total, cycles, tokens (sums over the steps),
    bit_exact (complete and every check equal), mismatches, commands_checked,
    timing_violations (0: a violation fails the run), load_image {bursts, wall_s},
    wall_s, sim_cycles_per_s (step cycles / step wall time), build_s, total_wall_s,
    error (only when the run failed: the message; the steps before it are kept),
    steps: [{
        label, index, tokens, instructions, cycles,
        counters: {NPU counter: difference over the step} (rtl.npu.core.COUNTERS),
        controllers: [{controller counter: difference} per channel]
                     (rtl.controller.interface.COUNTERS; refresh_late_max: its value),
        commands_checked, commands_by_channel: [...], timing_violations,
        command_digests: [per channel, a digest of every (cycle, command) from reset to
                          the step's end: equal digests, the same command stream],
        stages: [{name, index (instruction), end (clock since the step's start),
                  cycles (end - the previous mark's end, the first from 0)}],
        timeline: {period (clocks per window), start: [...], end: [...] (window bounds),
                   array, dma, gemm, vector, pim_port: [busy fraction per window],
                   pim: [[controller pim_busy_cycles fraction per window] per channel]},
        checks (words compared, every core's), mismatches, bit_exact,
        first_mismatches: [{core, address,
                          expected, actual (hex strings), bits_differing}] (at most 8),
        wall_s, cycles_per_s}]

Timing-only runs: with ``run.config.datapath`` False, ``NpuTop`` is elaborated without
its datapath (``rtl.config.DeviceConfig.datapath``; a smaller, faster build). Cycles,
stage ends, timelines and every counter are those of the full RTL; the data are zeros,
so the check words are read but not compared: ``bit_exact`` and ``mismatches`` are
``None`` (null) in the run and in every step, ``first_mismatches`` is empty.
"""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

from rtl.config import RowBufferMode

from .run import DecodeRun

__all__ = ["run_on_rtl", "TOP_NAME"]

TOP_NAME = "npu_top"
TEST_MODULE = "cocotb_tests.tb_decode"
_VERILOG: dict[str, str] = {}      # configuration JSON -> Verilog (elaboration: ~20 s)


def _verilog(config, registered_ports: bool = True) -> str:
    # refresh rate and the PIM row-buffer mode are run-time inputs, not elaborated
    mode = RowBufferMode.DUAL if config.mode is RowBufferMode.BLOCKED else config.mode
    key = config.replace(refresh_rate=1, mode=mode).to_json() + str(registered_ports)
    if key not in _VERILOG:
        from sim.harness import npu_top_verilog
        _VERILOG[key] = npu_top_verilog(config, TOP_NAME, registered_ports)
    return _VERILOG[key]


def _tail(path: Path, show, stop: threading.Event):
    """Echo the lines appended to ``path`` until ``stop`` is set (then the rest)."""
    position = 0
    while True:
        finished = stop.wait(0.5)
        if path.exists():
            with open(path) as f:
                f.seek(position)
                text = f.read()
                cut = text.rfind("\n") + 1
                for line in text[:cut].splitlines():
                    show(line)
                position += len(text[:cut].encode())
        if finished:
            return


def run_on_rtl(run: DecodeRun, out_json, build_root=None, max_cycles_per_step: int = 20_000_000,
               period: int = 64, max_samples: int = 2000, progress_every: int = 20_000,
               show=print, registered_ports: bool = True, image_clocks: bool = True) -> dict:
    """Build (cached) ``NpuTop(run.config)``, run every step of ``run`` on it under cocotb
    and return the results (also written to ``out_json``: see ``cocotb_tests.tb_decode``).

    ``build_root``: folder of the Verilator builds and runs (default ``sim.harness``'s
    ``build/``). ``max_cycles_per_step``: a step running longer fails. ``period``: the
    timeline's first sampling period in clocks; ``max_samples``: windows per step at
    most (the period doubles past it). ``show``: receives the progress lines (one per
    step and one every ``progress_every`` simulated clocks of a step).

    Raises AssertionError when the run fails (NPU, controller or channel error, timing
    violation, a step too long); the partial results are in ``out_json`` then (key
    ``error``). ``registered_ports``: as in ``sim.harness.npu_top_verilog`` (False only to
    show that it changes nothing). Mismatching check words do not raise: ``bit_exact`` is
    false (``None`` on a timing-only configuration: nothing is compared).
    ``image_clocks`` False: a timing-only run starts its first step at once instead of
    after the clocks of the HBM image's load (its banks store nothing; the cycles then
    differ from the full RTL's by the refresh phase at the start); required for a run
    compiled without values (``compile_decode(..., values=False)``)."""
    from sim.harness import build, run as run_cocotb

    run.validate()
    if image_clocks and getattr(run, "golden", ()) is None:
        raise ValueError("a run compiled without values has an empty HBM image: run it "
                         "with image_clocks=False")
    out_json = Path(out_json).resolve()
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.unlink(missing_ok=True)
    stem = out_json.with_suffix("")
    run_file = run.save(stem.with_name(stem.name + ".run.pkl"))
    progress = stem.with_name(stem.name + ".progress.log")
    progress.unlink(missing_ok=True)

    began = time.perf_counter()
    show(f"decode {run.mode}: elaborating NpuTop ({run.config.summary()}) ...")
    verilog = _verilog(run.config, registered_ports)
    show(f"decode {run.mode}: Verilator build of {len(verilog.splitlines()):,} lines "
         f"(cached after the first time) ...")
    t0 = time.perf_counter()
    build_dir = build(verilog, TOP_NAME, root=Path(build_root) if build_root else None)
    build_s = time.perf_counter() - t0

    env = {"NEUPIMS_DECODE_RUN": str(run_file), "NEUPIMS_DECODE_RESULTS": str(out_json),
           "NEUPIMS_DECODE_PROGRESS": str(progress),
           "NEUPIMS_DECODE_MAX_CYCLES": str(max_cycles_per_step),
           "NEUPIMS_DECODE_PERIOD": str(period), "NEUPIMS_DECODE_MAX_SAMPLES": str(max_samples),
           "NEUPIMS_DECODE_PROGRESS_EVERY": str(progress_every),
           "NEUPIMS_REGISTERED_PORTS": str(int(registered_ports)),
           "NEUPIMS_DECODE_IMAGE_CLOCKS": str(int(image_clocks))}
    stop = threading.Event()
    tail = threading.Thread(target=_tail, args=(progress, show, stop), daemon=True)
    tail.start()
    tag = f"{out_json.parent.name}-{stem.name}-{os.getpid()}"
    try:
        run_cocotb(build_dir, TOP_NAME, TEST_MODULE, env=env, tag=tag)
    finally:
        stop.set()
        tail.join()
    result = json.loads(out_json.read_text())
    result["build_s"] = round(build_s, 1)
    result["total_wall_s"] = round(time.perf_counter() - began, 1)
    out_json.write_text(json.dumps(result, indent=1))
    return result
