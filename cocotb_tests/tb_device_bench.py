"""The device benchmark's run (``sim.device_bench``): every core's weight-streaming program
on ``NpuTop``, every command of every channel timing-checked; clocks, wall time and the
RTL counters into ``$NEUPIMS_REPORT``."""
from __future__ import annotations

import os
import time

import cocotb

from rtl.config import DeviceConfig
from rtl.npu.sequencer import NpuError
from sim.device_bench import program_totals, weight_streaming_program

from .npu_tb import NpuTB
from .report import update_report


@cocotb.test()
async def weight_streaming(dut):
    config = DeviceConfig.from_json(os.environ["NEUPIMS_CONFIG"])
    tiles, rows = int(os.environ["NEUPIMS_TILES"]), int(os.environ["NEUPIMS_ROWS"])
    tb = NpuTB(dut, config)
    await tb.start()
    programs = [weight_streaming_program(config, core, tiles, rows)
                for core in range(config.npu.arrays)]
    for core, program in enumerate(programs):
        await tb.load_program(program, core=core)
    began = time.perf_counter()
    last = [began]

    def sample(clocks, done):
        now = time.perf_counter()
        if now - last[0] > 10 or done:
            last[0] = now
            dut._log.info("%d clocks simulated, %.0f cycles/s", clocks, clocks / (now - began))

    cycles = await tb.run_sampled(sample, period=1024, max_cycles=50_000_000)
    wall = time.perf_counter() - began
    assert tb.error() == (NpuError.NONE, 0), tb.error()
    tb.finish()
    counters = tb.counters()
    for name in ("macs", "dma_bytes_read", "dma_bytes_written"):    # all work done, no more
        asked = sum(program_totals(config, program)[name] for program in programs)
        assert counters[name] == asked, (name, counters[name], asked)
    commands = sum(sum(c.values()) for c in tb.commands)
    update_report(cycles=cycles, sim_wall_s=round(wall, 2), cycles_per_s=cycles / wall,
                  counters=counters, commands=commands)
