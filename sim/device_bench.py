"""``neupims bench device``: Verilator speed of the whole device (``NpuTop``: every NPU core
on every channel's controller and PIM channel), by default the paper's (``neupims``
preset: 8 cores of 128 x 128, 32 channels of 32 banks) without its datapath
(``DeviceConfig.datapath`` False, the fast timing path of the full-scale figures).

The load (``weight_streaming_program``): every core computes ``C = A . W_t`` over
``tiles`` weight tiles, the way a decode layer's GEMMs run on the paper's NPU (the batch's
activations resident, the weights streamed from HBM): ``A`` is M x K FP16 (M = the
accumulator's rows, K = 2 array heights), each tile K x W FP16 (W = the array width),
loaded by DMA into one of two buffers while the GEMM of the other runs, C accumulated in
FP32 and stored at the end. The cores' tiles lie in distinct 1/cores slices of the stored
rows (re-read every few tiles). No PIM work: the PIM channels see the DMA traffic only.

Measured (RTL counters and the cocotb clock): clocks, wall time, cycles/s, MACs, array
and DMA busy clocks, bytes moved, commands per kind (every command of every channel
through the DRAM timing checker, as in every run)."""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from rtl.config import DeviceConfig
from rtl.isa.npu import NpuOp, dma_load, dma_store, gemm, halt, wait
from sim.npu_programs import row_words, stored_bursts


class BenchError(ValueError):
    """A benchmark configuration that cannot be laid out (names the parameter)."""


def weight_streaming_program(config: DeviceConfig, core: int, tiles: int,
                             rows: int | None = None) -> list:
    """The program of ``core`` (see the module docstring); ``rows``: M (default: the
    accumulator's rows, the most one GEMM takes)."""
    npu, g = config.npu, config.geometry
    H, W = npu.array_rows, npu.array_cols
    M = npu.accumulator_rows if rows is None else rows
    if not 0 < M <= npu.accumulator_rows:
        raise BenchError(f"rows: {M} activation rows; a GEMM takes 1 to "
                         f"{npu.accumulator_rows} (NpuConfig.accumulator_rows)")
    K, wb = 2 * H, npu.word_bytes
    kw = wb // g.burst_bytes
    a_pitch, w_pitch, c_pitch = row_words(K, 16, wb), row_words(W, 16, wb), row_words(W, 32, wb)
    a_words, w_words, c_words = M * a_pitch, K * w_pitch, M * c_pitch
    sp_a, sp_w = 0, [a_words, a_words + w_words]
    sp_c = a_words + 2 * w_words
    if sp_c + c_words > npu.scratchpad_words:
        raise BenchError(f"NpuConfig.scratchpad_words: the benchmark needs "
                         f"{sp_c + c_words} words, the core has {npu.scratchpad_words}")
    if 6 + 3 * tiles > npu.instruction_words:
        raise BenchError(f"tiles: {tiles} tiles need {6 + 3 * tiles} instructions, the core "
                         f"holds {npu.instruction_words}")
    slice_bytes = stored_bursts(config) * g.burst_bytes // npu.arrays
    base = core * slice_bytes
    a_hbm, c_hbm = base, base + a_words * wb
    first_w = c_hbm + c_words * wb
    reuse = (base + slice_bytes - first_w) // (w_words * wb)
    if reuse < 2:
        raise BenchError(f"DeviceConfig.stored_rows: a core's slice of the stored rows "
                         f"({slice_bytes} bytes) holds fewer than two weight tiles")

    def w_hbm(t):
        return first_w + (t % reuse) * w_words * wb

    program = [dma_load(a_hbm, sp_a, a_words * kw), dma_load(w_hbm(0), sp_w[0], w_words * kw),
               wait("dma")]
    for t in range(tiles):
        if t + 1 < tiles:
            program.append(dma_load(w_hbm(t + 1), sp_w[(t + 1) % 2], w_words * kw))
        program += [gemm(sp_a, sp_w[t % 2], sp_c, M, K, W, a_pitch, w_pitch, c_pitch,
                         fp32=True, acc=t > 0),
                    wait("gemm", "dma")]
    program += [dma_store(c_hbm, sp_c, c_words * kw), wait("dma"), halt()]
    return program


def program_totals(config: DeviceConfig, program) -> dict:
    """What ``program`` asks for: MACs of its GEMMs (M x K x N each) and bytes its DMAs
    load and store."""
    burst = config.geometry.burst_bytes
    total = {"macs": 0, "dma_bytes_read": 0, "dma_bytes_written": 0}
    for ins in program:
        if ins.op is NpuOp.GEMM:
            total["macs"] += ins["m"] * ins["k"] * ins["n"]
        elif ins.op is NpuOp.DMA_LOAD:
            total["dma_bytes_read"] += ins["count"] * burst
        elif ins.op is NpuOp.DMA_STORE:
            total["dma_bytes_written"] += ins["count"] * burst
    return total


def bench_device(config: DeviceConfig, tiles: int = 24, rows: int | None = None, show=print,
                 name: str = "npu_top") -> dict:
    """Elaborate, build (cached, as module ``name``) and run the load; the report (see
    ``format_device``)."""
    from sim.harness import build, npu_top_verilog, run
    rows = config.npu.accumulator_rows if rows is None else rows
    for core in range(config.npu.arrays):
        weight_streaming_program(config, core, tiles, rows)    # layout errors before the build
    began = time.perf_counter()
    show(f"elaborating NpuTop: {config.summary()}, {config.npu.arrays} cores of "
         f"{config.npu.array_rows} x {config.npu.array_cols} ...")
    verilog = npu_top_verilog(config, name)
    elaborate_s = time.perf_counter() - began
    show(f"  {len(verilog.splitlines()):,} lines of Verilog in {elaborate_s:.0f} s; Verilator "
         f"build (cached by the Verilog text; the paper's device takes many minutes) ...")
    t0 = time.perf_counter()
    build_dir = build(verilog, name)
    build_s = time.perf_counter() - t0
    show(f"  built in {build_s:.0f} s; simulating {tiles} weight tiles per core ...")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "report.json"
        run(build_dir, name, "cocotb_tests.tb_device_bench",
            env={"NEUPIMS_CONFIG": config.to_json(), "NEUPIMS_REPORT": str(path),
                 "NEUPIMS_TILES": str(tiles), "NEUPIMS_ROWS": str(rows)},
            tag=f"bench-device-{config.name}-{Path(folder).name}")
        raw = json.loads(path.read_text())
    npu = config.npu
    macs_per_clock = npu.arrays * npu.array_rows * npu.array_cols
    return {"config": config.summary(), "cores": npu.arrays,
            "response_buffer": npu.response_buffer, "dma_responses": npu.dma_responses,
            "array": [npu.array_rows, npu.array_cols], "channels": config.geometry.channels,
            "tiles": tiles, "rows": rows, "verilog_lines": len(verilog.splitlines()),
            "elaborate_s": round(elaborate_s, 1), "build_s": round(build_s, 1),
            **raw, "array_util": raw["counters"]["macs"] / (macs_per_clock * raw["cycles"]),
            "wall_s": round(time.perf_counter() - began, 1)}


def format_device(report: dict) -> str:
    h, w = report["array"]
    c = report["counters"]
    return "\n".join([
        f"Device benchmark ({report['config']}; {report['cores']} cores of {h} x {w}, "
        f"{report['channels']} channels, response buffer {report.get('response_buffer', 0)}, "
        f"{report.get('dma_responses', 1)} DMA responses per clock)",
        f"  load                {report['tiles']} weight tiles ({2 * h} x {w} FP16) per core "
        f"streamed by DMA under GEMMs of {report['rows']} rows (no PIM work)",
        f"  DMA rate            {c['dma_bytes_read'] / report['cycles']:,.1f} bytes read per "
        f"clock, {c['dma_bytes_read'] / report['cycles'] / report['cores']:,.1f} per core",
        f"  simulated           {report['cycles']:,} clocks in {report['sim_wall_s']:.1f} s: "
        f"{report['cycles_per_s']:,.0f} cycles/s",
        f"  array utilization   {100 * report['array_util']:.1f} % ({c['macs']:,} MACs)",
        f"  DMA                 {c['dma_bytes_read']:,} bytes read, "
        f"{c['dma_bytes_written']:,} written; {report['commands']:,} DRAM commands checked",
        f"  build               {report['verilog_lines']:,} lines, elaborated in "
        f"{report['elaborate_s']:.0f} s, Verilator {report['build_s']:.0f} s (0 when cached)"])
