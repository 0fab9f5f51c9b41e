"""Benchmark runs on the channel: long GEMV programs, every result checked, speed reported.

Writes a JSON report to ``$NEUPIMS_REPORT``. Every run still goes through the whole
scoreboard (timing checker, RTL error flags, cycle-exact bus, bit-exact results).
"""
from __future__ import annotations

import json
import os

import cocotb

from .channel_tb import ChannelTB, rng_from_env, tiles_from_env


def _row_sets(config, depth: int) -> list[int]:
    """As many row sets as the player's program memory holds, cycling the stored rows."""
    g = config.geometry
    per_row_set = g.bankgroups * g.ranks + len(tiles_from_env(config)) + g.banks + 1
    budget = (depth - g.bursts_per_row - 4) // per_row_set
    return [index % (config.stored_rows - 1) for index in range(max(1, budget))]


@cocotb.test()
async def channel_gemv(dut):
    tb = ChannelTB(dut)
    await tb.start()
    cfg = tb.config
    repeat = int(os.environ.get("NEUPIMS_REPEAT", "3"))
    row_sets = _row_sets(cfg, tb.program_depth)
    tiles = tiles_from_env(cfg)
    program = await tb.gemv(rng_from_env(), row_sets, tiles, repeat=repeat)
    lanes = cfg.pim.lanes
    report = {
        "config": cfg.summary(),
        "preset": cfg.name,
        "mode": cfg.mode.value,
        "row_sets_per_run": len(row_sets),
        "tiles": tiles,
        "runs": repeat,
        "cycles": tb.cycles_run,
        "wall_s": tb.wall_run,
        "sim_cycles_per_s": tb.cycles_run / tb.wall_run if tb.wall_run else 0.0,
        "commands_checked": tb.commands_checked,
        "timing_violations": 0,
        "gemv_results": tb.gemv_results,
        "outputs_bit_exact": tb.gemv_results * cfg.geometry.banks,
        "macs": tb.gemv_results * cfg.geometry.banks * sum(k for _, k in tiles) * lanes // len(tiles),
        "cycles_per_program": program.last_data,
        "refreshes_per_program": sum(1 for c in program.commands if c.op.name == "REF"),
        "bit_exact": True,
    }
    path = os.environ.get("NEUPIMS_REPORT")
    if path:
        with open(path, "w") as handle:
            json.dump(report, handle, indent=2)
    dut._log.info("bench: %s", json.dumps(report))
