"""``neupims bench npu``: array utilization, DMA bandwidth per channel and Verilator speed
of the NPU (NpuTop: NpuCore + one controller per channel) on the RTL.

Runs ``cocotb_tests.tb_npu.resident_weights_and_dma_bandwidth``: DMA loads and stores of
every stored burst (bytes over the DMA's busy clocks, from the RTL counters), then a GEMM
with one weight tile resident and ``rows`` activation rows streamed back to back (MACs
over H x W x the GEMM's clocks, from the counters), then a DMA-bound GEMM (H x 4H x 4W,
operands loaded from HBM, result stored and read back; MACs over the whole program). Every command of every channel goes
through the timing checker; the GEMM result is compared bit for bit."""
from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from pathlib import Path

from rtl.config import DeviceConfig


def npu_channels(config: DeviceConfig, channels: int) -> DeviceConfig:
    return config.replace(geometry=dataclasses.replace(config.geometry, channels=channels))


def bench_npu(config: DeviceConfig, rows: int = 448, show=print) -> dict:
    from sim.harness import build, npu_top_verilog, run
    began = time.perf_counter()
    show(f"elaborating NpuTop: {config.summary()}, {config.npu.array_rows} x "
         f"{config.npu.array_cols} array ...")
    verilog = npu_top_verilog(config)
    show(f"Verilator build ({len(verilog.splitlines()):,} lines; cached by the Verilog text) ...")
    build_dir = build(verilog, "npu_top")
    show("simulating: DMA load/store of every stored burst, then a resident-weights GEMM ...")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "report.json"
        run(build_dir, "npu_top", "cocotb_tests.tb_npu",
            testcase="resident_weights_and_dma_bandwidth",
            env={"NEUPIMS_CONFIG": config.to_json(), "NEUPIMS_REPORT": str(path),
                 "NEUPIMS_UTIL_ROWS": str(rows)}, tag=f"bench-npu-{config.geometry.channels}")
        raw = json.loads(path.read_text())
    dma = raw["dma"]
    return {
        "config": config.summary(), "array": [config.npu.array_rows, config.npu.array_cols],
        "channels": config.geometry.channels, "gemm_rows": raw["util_rows"],
        "array_util": raw["utilization_gemm"],
        "array_util_of_busy": raw["utilization_array_busy"],
        "dma_gbps_per_channel": dma["load"]["gbps_per_channel"],
        "dma_store_gbps_per_channel": dma["store"]["gbps_per_channel"],
        "streamed_gemm": raw["streamed_shape"], "streamed_util": raw["utilization_streamed"],
        "sim_cycles_per_s": raw["cycles_per_s"],
        "wall_s": time.perf_counter() - began,
    }


def format_npu(report: dict) -> str:
    h, w = report["array"]
    return "\n".join([
        f"NPU benchmark ({report['config']}; {h} x {w} array, {report['channels']} channel(s))",
        f"  array utilization   {100 * report['array_util']:.1f} % of H x W MACs per clock over "
        f"the GEMM ({report['gemm_rows']} rows, weights resident; "
        f"{100 * report['array_util_of_busy']:.1f} % of the array's busy clocks)",
        f"  DMA-bound GEMM      {100 * report['streamed_util']:.1f} % for M x K x N = "
        f"{' x '.join(map(str, report['streamed_gemm']))} with A and B loaded from HBM, C stored "
        "and read back (MACs over H x W x the whole program's clocks)",
        f"  DMA bandwidth       load {report['dma_gbps_per_channel']:.2f} GB/s per channel, "
        f"store {report['dma_store_gbps_per_channel']:.2f} GB/s per channel (peak 32)",
        f"  Verilator speed     {report['sim_cycles_per_s']:,.0f} cycles/s "
        f"({report['wall_s']:.0f} s wall in all)"])
