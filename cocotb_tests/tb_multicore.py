"""cocotb tests of an ``NpuTop`` with several NPU cores (``NpuConfig.arrays`` > 1) sharing
the channels: each core's GEMMs bit-exact while the others run theirs, the concurrent
run shorter than the runs one after the other, counters per core and summed, PIM GEMV
results routed to the core that asked, an error in one core named with its core, and
SYNC ordering one core's store before another's load.
Every command of every channel goes through the DRAM timing checker (``NpuTB``)."""
from __future__ import annotations

import os

import cocotb
import numpy as np

from rtl.config import DeviceConfig
from rtl.isa.npu import halt, pim, wait
from rtl.npu.sequencer import NpuError
from sim.golden.pim import gemv
from sim.npu_programs import HbmAllocator, HbmImage, gemm_program, unpack_word

from .npu_tb import NpuTB
from .report import update_report
from .tb_npu import moderate16


def _config() -> DeviceConfig:
    return DeviceConfig.from_json(os.environ["NEUPIMS_CONFIG"])


def _gemm_jobs(config, rng):
    """One GEMM per core (different shapes, K and N tails), apart in HBM and each at the
    start of its core's scratchpad."""
    H, W = config.npu.array_rows, config.npu.array_cols
    shapes = [(3 * H + 1, 2 * H + 3, 2 * W + 1, False), (2 * H, H + 2, 3 * W - 1, True),
              (H + 3, 3 * H, W + 2, False), (5, H - 1, 2 * W, True)]
    alloc = HbmAllocator(config)
    jobs = []
    for core in range(config.npu.arrays):
        m, k, n, fp32 = shapes[core % len(shapes)]
        jobs.append(gemm_program(config, moderate16(rng, (m, k)), moderate16(rng, (k, n)),
                                 fp32=fp32, allocator=alloc))
    return jobs


async def _run(tb, jobs, active):
    """Load the programs (``halt`` for cores not in ``active``), run, check every active
    job bit-exact; return (clocks, per-core counter deltas)."""
    for core, job in enumerate(jobs):
        await tb.load_program(job.program if core in active else [halt()], core=core)
    before = [tb.core_counters(core) for core in range(tb.cores)]
    total_before = tb.counters()
    cycles = await tb.run()
    assert tb.error() == (NpuError.NONE, 0), tb.error()
    deltas = [{k: v - before[core][k] for k, v in tb.core_counters(core).items()}
              for core in range(tb.cores)]
    total = {k: v - total_before[k] for k, v in tb.counters().items()}
    for name in total:
        if name != "cycles":
            assert total[name] == sum(d[name] for d in deltas), (name, total, deltas)
    assert total["cycles"] == max(d["cycles"] for d in deltas), (total, deltas)
    H, W = tb.config.npu.array_rows, tb.config.npu.array_cols
    for core in active:
        job = jobs[core]
        rb = job.readback
        got = job.result(await tb.read_words(range(rb.sp, rb.sp + rb.words), core=core))
        bad = np.argwhere(got != job.expected)
        assert not len(bad), (f"core {core}: {len(bad)} mismatches, first at "
                              f"{tuple(bad[0])}: {int(got[tuple(bad[0])]):#x}, golden "
                              f"{int(job.expected[tuple(bad[0])]):#x}")
        m, k = job.a.rows, job.a.cols
        n = job.b.cols
        assert deltas[core]["macs"] == m * -(-k // H) * -(-n // W) * H * W, deltas[core]
    for core in set(range(tb.cores)) - set(active):
        assert deltas[core]["macs"] == 0 and deltas[core]["dma_bytes_read"] == 0
    return cycles, deltas


@cocotb.test()
async def cores_share_the_channels(dut):
    """Each core's GEMM alone, then all at once: bit-exact every time; the concurrent run
    takes fewer clocks than the runs one after the other."""
    tb = NpuTB(dut, _config())
    await tb.start()
    rng = np.random.default_rng(int(os.environ.get("NEUPIMS_SEED", 3)))
    jobs = _gemm_jobs(tb.config, rng)
    for job in jobs:
        await tb.load_image(job.image)
    alone = []
    for core in range(tb.cores):
        cycles, _ = await _run(tb, jobs, {core})
        alone.append(cycles)
        dut._log.info("core %d alone: %d clocks", core, cycles)
    together, deltas = await _run(tb, jobs, set(range(tb.cores)))
    dut._log.info("all %d cores at once: %d clocks (alone: %s, sum %d)", tb.cores, together,
                  alone, sum(alone))
    assert max(alone) <= together < sum(alone), (together, alone)
    tb.finish()
    update_report(alone=alone, together=together,
                  array_busy=[d["array_busy"] for d in deltas])


@cocotb.test()
async def pim_results_reach_their_core(dut):
    """Every core sends GWRITE + HEADER + GEMV to the same channel for its own matrix row
    (different rows and vectors); each GEMV result lands in the scratchpad of the core
    that issued it, bit-exact with ``sim.golden.pim.gemv``."""
    tb = NpuTB(dut, _config())
    await tb.start()
    config = tb.config
    g = config.geometry
    channel = g.channels - 1
    rng = np.random.default_rng(5)
    image = HbmImage(config)
    per_row = config.bus.comps_per_row
    rows, programs = [], []
    for core in range(tb.cores):
        matrix_row, vector_row = 2 * core, 2 * core + 1
        matrix = rng.standard_normal((g.banks, g.row_elements)).astype(np.float16).view(np.uint16)
        vec = rng.standard_normal(g.row_elements).astype(np.float16).view(np.uint16)
        for bank in range(g.banks):
            image.write_row(channel, bank, matrix_row, matrix[bank])
        image.write_row(channel, 0, vector_row, vec)
        rows.append((matrix, vec))
        programs.append([pim("gwrite", channel=channel, row=vector_row),
                         pim("header", channel=channel, row=matrix_row, gemvs=1, comps=per_row),
                         pim("gemv", channel=channel, row=matrix_row, column=0, comps=per_row,
                             sp=100 + core),
                         wait("pim"), halt()])
    await tb.load_image(image)
    for core, program in enumerate(programs):
        await tb.load_program(program, core=core)
    await tb.run()
    assert tb.error() == (NpuError.NONE, 0)
    for core, (matrix, vec) in enumerate(rows):
        word = (await tb.read_words([100 + core], core=core))[0]
        got = unpack_word(word, np.uint16, config.npu.word_bytes)[:g.banks]
        want = gemv(matrix, vec, config.pim.lanes, 0, per_row)
        assert np.array_equal(got, want), f"core {core}: {got}, golden {want}"
        assert tb.core_counters(core)["pim_transactions"] == 3
    tb.finish()


@cocotb.test()
async def error_names_its_core(dut):
    """The last core runs an illegal DMA while the others halt: ``error`` rises with that
    core's code and pc in ``error_code``/``error_pc`` and its number in ``error_core``;
    ``done`` still rises."""
    from rtl.isa.npu import dma_load, nop
    tb = NpuTB(dut, _config())
    await tb.start()
    last = tb.cores - 1
    for core in range(tb.cores):
        program = [nop(), dma_load(96, 0, 1)] if core == last else [halt()]
        await tb.load_program(program, core=core)
    await tb.run(max_cycles=5000)
    assert tb.error() == (NpuError.HBM_ALIGN, 1) and tb.error_core() == last
    assert dut.error.value == 1 and int(dut.core_done.value) == (1 << tb.cores) - 1
    tb.finish()


@cocotb.test()
async def sync_orders_the_cores(dut):
    """Core 0 computes a GEMM and stores C to HBM; core 1 loads C from HBM. With a SYNC
    (core 0 after its store, ``sync dma``; core 1 before its load) core 1 gets core 0's
    C bit-exact and counts the clocks it waited (``sync_wait``); without it, core 1
    loads before core 0 has stored (the zeros put there), so the check can fail."""
    from rtl.isa.npu import dma_load, sync
    tb = NpuTB(dut, _config())
    await tb.start()
    config = tb.config
    rng = np.random.default_rng(11)
    H, W = config.npu.array_rows, config.npu.array_cols
    job = gemm_program(config, moderate16(rng, (3 * H, 2 * H)), moderate16(rng, (2 * H, 2 * W)),
                       readback=False, halt_at_end=False)
    c, kw = job.c, config.npu.word_bytes // config.geometry.burst_bytes
    blank = HbmImage(config)
    blank.write_words(c.hbm, [0] * (c.words * kw))
    await tb.load_image(job.image)
    got = {}
    for barrier in ([], [sync("dma")]):
        await tb.load_image(blank)
        await tb.load_program(job.program + barrier + [halt()], core=0)
        await tb.load_program(barrier + [dma_load(c.hbm, 0, c.words * kw), wait("dma"), halt()],
                              core=1)
        before = [tb.core_counters(core) for core in range(2)]
        await tb.run()
        assert tb.error() == (NpuError.NONE, 0), tb.error()
        waited = [tb.core_counters(core)["sync_wait"] - before[core]["sync_wait"]
                  for core in range(2)]
        words = await tb.read_words(range(c.words), core=1)
        got[bool(barrier)] = (job.result(words), waited)
    result, waited = got[True]
    assert np.array_equal(result, job.expected), "core 1 did not get core 0's C"
    assert waited[0] == 0 and waited[1] > 0, waited
    stale, waited = got[False]
    assert not np.array_equal(stale, job.expected) and waited == [0, 0]
    dut._log.info("core 1 waited %d clocks at the SYNC", got[True][1][1])
    tb.finish()
