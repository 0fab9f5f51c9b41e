"""cocotb tests of ``rtl.npu.NpuTop`` on Verilator: the NPU core with one controller + PIM
channel per memory channel, every command of every channel checked by the DRAM timing
checker (``NpuTB``).

Environment: ``NEUPIMS_CONFIG`` (DeviceConfig JSON), ``NEUPIMS_SEED`` (default 1),
``NEUPIMS_GEMMS`` (random GEMMs after the fixed ones, default 4), ``NEUPIMS_UTIL_ROWS``
(rows of the resident-weights GEMM, default 448), ``NEUPIMS_REPORT`` (JSON for the
launcher)."""
from __future__ import annotations

import dataclasses
import os

import cocotb
import numpy as np

from rtl.config import DeviceConfig
from rtl.isa import Opcode
from rtl.isa.npu import (Instruction, NpuOp, dma_load, dma_store, encode, gemm, halt, nop,
                         pim, vector, wait)
from rtl.npu.sequencer import NpuError
from sim.golden.gemm import gemm as golden_gemm
from sim.golden.pim import gemv
from sim.npu_programs import (HbmImage, gemm_program, matrix_words, pack_words, stored_bursts,
                              unpack_word, words_to_matrix)

from sim.golden import vector as golden_vector
from sim.npu_vector_programs import (layernorm_program, pack_vector, softmax_program,
                                     unpack_vector)

from .npu_tb import NpuTB
from .report import update_report


def _env_int(name, default):
    return int(os.environ.get(name, default))


def _config() -> DeviceConfig:
    return DeviceConfig.from_json(os.environ["NEUPIMS_CONFIG"])


def moderate16(rng, shape):
    return (rng.standard_normal(shape) * 2.0 ** rng.integers(-5, 3, shape)).astype(np.float16).view(np.uint16)


report = update_report


async def _start(dut, **kw):
    tb = NpuTB(dut, _config(), **kw)
    await tb.start()
    return tb


def _delta(after: dict, before: dict) -> dict:
    return {k: after[k] - before[k] for k in after}


@cocotb.test()
async def gemm_from_hbm_bit_exact(dut):
    """GEMMs from HBM to HBM: DMA_LOAD A and B (and C with acc), GEMM, DMA_STORE C, then
    DMA_LOAD the stored C into other words and read it through ``ext_read``; bit-exact
    with ``sim.golden.gemm``. Fixed shapes (exact tile, K and N tails, several tiles,
    FP32, accumulate) then NEUPIMS_GEMMS random ones."""
    tb = await _start(dut)
    config = tb.config
    H, W = config.npu.array_rows, config.npu.array_cols
    rng = np.random.default_rng(_env_int("NEUPIMS_SEED", 1))
    shapes = [(H, H, W, False, False), (5, H + 5, W + 3, False, False),
              (12, 2 * H + 4, 2 * W + 1, True, False), (7, H + 1, 3 * W, True, True)]
    for _ in range(_env_int("NEUPIMS_GEMMS", 4)):
        fp32 = bool(rng.integers(2))
        shapes.append((int(rng.integers(1, 3 * H + 1)), int(rng.integers(1, 5 * H + 1)),
                       int(rng.integers(1, 5 * W + 1)), fp32, fp32 and bool(rng.integers(2))))
    total_cycles = 0
    for index, (m, k, n, fp32, acc) in enumerate(shapes):
        a, b = moderate16(rng, (m, k)), moderate16(rng, (k, n))
        psum = (rng.standard_normal((m, n)) * 4).astype(np.float32).view(np.uint32) if acc else None
        job = gemm_program(config, a, b, psum=psum, fp32=fp32)
        await tb.load_image(job.image)
        await tb.load_program(job.program)
        before = tb.counters()
        cycles = await tb.run()
        total_cycles += cycles
        code, pc = tb.error()
        assert code is NpuError.NONE, f"GEMM {index}: error {code.name} at pc {pc}"
        rb = job.readback
        got = job.result(await tb.read_words(range(rb.sp, rb.sp + rb.words)))
        bad = np.argwhere(got != job.expected)
        assert not len(bad), (f"GEMM {index} ({m}x{k}x{n}, fp32 {fp32}, acc {acc}): "
                              f"{len(bad)} mismatches, first at {tuple(bad[0])}: "
                              f"{int(got[tuple(bad[0])]):#x}, golden "
                              f"{int(job.expected[tuple(bad[0])]):#x}")
        d = _delta(tb.counters(), before)
        burst = config.geometry.burst_bytes
        loaded = job.a.words + job.b.words + (job.c.words if acc else 0) + job.readback.words
        assert d["dma_bytes_read"] == loaded * burst, d
        assert d["dma_bytes_written"] == job.c.words * burst, d
        passes = -(-k // H) * -(-n // W)
        assert d["macs"] == m * passes * H * W, d
        dut._log.info("GEMM %d: %dx%dx%d %s%s: %d clocks, %d passes, bit-exact", index, m, k,
                      n, "FP32" if fp32 else "FP16", " acc" if acc else "", cycles, passes)
    tb.finish()
    report(gemms=len(shapes), gemm_cycles=total_cycles, cycles_per_s=tb.sim_rate())


@cocotb.test()
async def illegal_programs(dut):
    """Illegal programs stop with their error code and pc, ``done`` rises, a DMA dispatched
    before the error completes; a good program then runs."""
    tb = await _start(dut)
    config = tb.config
    g, npu = config.geometry, config.npu
    spw, cap = npu.scratchpad_words, g.capacity_bytes
    good_gemm = dict(a=0, b=8, c=16, m=4, k=4, n=4, a_pitch=1, b_pitch=1, c_pitch=1)
    cases = [
        ([nop(), encode(Instruction(NpuOp.NOP)) | 0xF], NpuError.BAD_OPCODE, 1),
        ([dma_load(0, 0, 4), dma_store(cap - 64, 0, 2)], NpuError.HBM_RANGE, 1),
        ([dma_load(96, 0, 1)], NpuError.HBM_ALIGN, 0),
        ([dma_load(0, spw - 1, 2)], NpuError.SCRATCHPAD_RANGE, 0),
        ([gemm(**{**good_gemm, "k": npu.array_rows + 1, "m": npu.accumulator_rows + 1})],
         NpuError.BAD_SHAPE, 0),
        ([gemm(**{**good_gemm, "c": spw - 1, "n": 40, "b_pitch": 2, "c_pitch": 2})],
         NpuError.SCRATCHPAD_RANGE, 0),
        ([pim("gemv", channel=g.channels, comps=1)], NpuError.BAD_PIM, 0),
        ([nop()] * npu.instruction_words, NpuError.PC_RANGE, npu.instruction_words),
    ]
    before = tb.counters()
    for program, code, pc in cases:
        await tb.load_program(program)
        cycles = await tb.run(max_cycles=5000)
        got, got_pc = tb.error()
        assert (got, got_pc) == (code, pc), f"{program[:3]}: {got.name} at {got_pc}, expected {code.name} at {pc}"
        assert dut.error.value == 1
        dut._log.info("illegal program: %s at pc %d after %d clocks", got.name, got_pc, cycles)
    d = _delta(tb.counters(), before)
    assert d["dma_bytes_read"] == 4 * g.burst_bytes, "the DMA before the error completed"
    assert d["dma_bytes_written"] == 0
    # a good program after the errors
    image = HbmImage(config)
    image.write(0, [pack_words(np.arange(32 * i, 32 * i + 32, dtype=np.uint16)) for i in range(4)])
    await tb.load_image(image)
    await tb.load_program([dma_load(0, 64, 4), halt()])
    await tb.run()
    assert tb.error() == (NpuError.NONE, 0) and dut.error.value == 0
    words = await tb.read_words(range(64, 68))
    for i, word in enumerate(words):
        assert np.array_equal(unpack_word(word, np.uint16), np.arange(32 * i, 32 * i + 32))
    tb.finish()


@cocotb.test()
async def resident_weights_and_dma_bandwidth(dut):
    """(1) DMA bandwidth per channel: load, then store, every stored burst of the HBM
    (bytes over the DMA's busy clocks, from the counters). (2) Array utilization of a GEMM
    with one weight tile and NEUPIMS_UTIL_ROWS rows streamed back to back (operands
    written into the scratchpad by the testbench): MACs over the array's busy clocks and
    over the GEMM's clocks."""
    tb = await _start(dut)
    config = tb.config
    g, npu = config.geometry, config.npu
    H, W = npu.array_rows, npu.array_cols
    rng = np.random.default_rng(_env_int("NEUPIMS_SEED", 1) + 7)
    burst = g.burst_bytes
    count = min(stored_bursts(config), npu.scratchpad_words)
    image = HbmImage(config)
    contents = [int.from_bytes(rng.bytes(burst), "little") for _ in range(count)]
    image.write(0, contents)
    await tb.load_image(image)
    results = {}
    for name, program in (("load", [dma_load(0, 0, count), halt()]),
                          ("store", [dma_store(0, 0, count), halt()])):
        await tb.load_program(program)
        before = tb.counters()
        cycles = await tb.run()
        d = _delta(tb.counters(), before)
        moved = d["dma_bytes_read"] + d["dma_bytes_written"]
        assert moved == count * burst, d
        per_channel = moved / d["dma_busy"] / g.channels       # bytes per clock = GB/s at 1 GHz
        results[name] = {"bursts": count, "busy": d["dma_busy"], "cycles": cycles,
                         "gbps_per_channel": per_channel * config.timing.clock_hz / 1e9,
                         "gbps_total": moved / d["dma_busy"] * config.timing.clock_hz / 1e9}
        dut._log.info("DMA %s: %d bursts on %d channel(s) in %d busy clocks: %.2f GB/s per "
                      "channel", name, count, g.channels, d["dma_busy"],
                      results[name]["gbps_per_channel"])
    words = await tb.read_words(range(count))
    assert words == contents, "the loaded bursts differ from HBM"

    # resident weights: A [m x H] and B [H x W] in the scratchpad, one pass
    m = _env_int("NEUPIMS_UTIL_ROWS", 448)
    a, b = moderate16(rng, (m, H)), moderate16(rng, (H, W))
    a_sp, b_sp = 0, m
    c_sp = m + H
    if c_sp + m > npu.scratchpad_words:
        raise ValueError(f"{m} rows do not fit the scratchpad")
    await _write_words(tb, a_sp, matrix_words(a, 16, 1, burst))
    await _write_words(tb, b_sp, matrix_words(b, 16, 1, burst))
    await tb.load_program([gemm(a_sp, b_sp, c_sp, m, H, W, 1, 1, 1), halt()])
    before = tb.counters()
    cycles = await tb.run()
    d = _delta(tb.counters(), before)
    got = words_to_matrix(await tb.read_words(range(c_sp, c_sp + m)), m, W, 16, 1, burst)
    assert np.array_equal(got, golden_gemm(a, b, H, W)[1]), "resident-weights GEMM differs"
    assert d["macs"] == m * H * W
    util_busy = d["macs"] / (d["array_busy"] * H * W)
    util_gemm = d["macs"] / (d["gemm_busy"] * H * W)
    dut._log.info("resident weights: %d rows, %d MACs, array busy %d, GEMM busy %d clocks: "
                  "utilization %.1f %% of array-busy clocks, %.1f %% of the GEMM's clocks",
                  m, d["macs"], d["array_busy"], d["gemm_busy"], 100 * util_busy, 100 * util_gemm)
    assert util_gemm >= 0.9, f"utilization {util_gemm:.3f}"

    # (3) DMA-bound: a GEMM whose operands come from HBM (DMA_LOAD A and B, GEMM,
    # DMA_STORE C, DMA_LOAD of C for the read-back): MACs over H x W x the whole program
    shape = (H, 4 * H, 4 * W)
    a2, b2 = moderate16(rng, shape[:2]), moderate16(rng, shape[1:])
    job = gemm_program(config, a2, b2)
    await tb.load_image(job.image)
    await tb.load_program(job.program)
    before = tb.counters()
    streamed_cycles = await tb.run()
    rb = job.readback
    got = job.result(await tb.read_words(range(rb.sp, rb.sp + rb.words)))
    assert np.array_equal(got, job.expected), "DMA-bound GEMM differs"
    d2 = _delta(tb.counters(), before)
    util_streamed = d2["macs"] / (streamed_cycles * H * W)
    dut._log.info("DMA-bound GEMM %s: %d clocks, %d MACs: utilization %.1f %%", shape,
                  streamed_cycles, d2["macs"], 100 * util_streamed)
    tb.finish()
    report(dma=results, util_rows=m, macs=d["macs"], array_busy=d["array_busy"],
           gemm_busy=d["gemm_busy"], utilization_array_busy=util_busy,
           utilization_gemm=util_gemm, cycles_per_s=tb.sim_rate(), util_program_cycles=cycles,
           streamed_shape=list(shape), streamed_cycles=streamed_cycles,
           utilization_streamed=util_streamed)


@cocotb.test()
async def violation_fails_the_run(dut):
    """The checkers read the DUT's command log: held to a tRCD 3 clocks longer than the
    controller's, a DMA load fails with a tRCD violation naming the channel; with the
    DUT's own timing the same load passes and every logged command is counted."""
    config = _config()
    strict = config.replace(timing=dataclasses.replace(config.timing,
                                                       tRCDRD=config.timing.tRCDRD + 3))
    count = 4 * config.geometry.channels
    tb = NpuTB(dut, config, check_config=strict)
    await tb.start()
    await tb.load_program([dma_load(0, 0, count), halt()])
    try:
        await tb.run()
        tb.finish()
    except AssertionError as error:
        caught = str(error)
    else:
        raise AssertionError("a tRCD 3 clocks short of the checker's passed")
    assert "tRCD" in caught and "channel " in caught, caught
    tb = await _start(dut)
    await tb.load_program([dma_load(0, 0, count), halt()])
    await tb.run()
    tb.finish()
    reads = sum(counter[Opcode.RD] for counter in tb.commands)
    assert reads == count, f"{reads} RD commands logged for {count} bursts"
    report(violation=caught.splitlines()[0])


async def _write_words(tb, address, words):
    from cocotb.triggers import ReadOnly, RisingEdge
    dut = tb.dut
    full = (1 << (tb.config.geometry.burst_bytes // 2)) - 1
    for i, word in enumerate(words):
        dut.ext_write__addr.value = address + i
        dut.ext_write__data.value = word
        dut.ext_write__lanes.value = full
        await ReadOnly()
        assert dut.ext_write__grant.value, "ext_write lost its grant while the NPU is idle"
        await RisingEdge(dut.clk)
    dut.ext_write__lanes.value = 0


@cocotb.test()
async def vector_and_pim_gemv(dut):
    """A VECTOR instruction (MAX of two 4-element FP32 vectors) runs on the core's
    VectorEngine (``vector_ops`` stays idle; WAIT VECTOR waits for it); PIM GWRITE +
    HEADER + GEMV on the last channel: the GEMV result (one FP16 per bank,
    ``sim.golden.pim.gemv``) lands in its scratchpad word."""
    tb = await _start(dut, vector_latency=30)
    config = tb.config
    g = config.geometry
    channel = g.channels - 1
    rng = np.random.default_rng(_env_int("NEUPIMS_SEED", 1) + 11)
    matrix_row, vector_row = config.stored_rows - 2, config.stored_rows - 1
    matrix = (rng.standard_normal((g.banks, g.row_elements))).astype(np.float16).view(np.uint16)
    vec = (rng.standard_normal(g.row_elements)).astype(np.float16).view(np.uint16)
    image = HbmImage(config)
    for bank in range(g.banks):
        image.write_row(channel, bank, matrix_row, matrix[bank])
    image.write_row(channel, 0, vector_row, vec)
    await tb.load_image(image)
    per_row, lanes = config.bus.comps_per_row, config.pim.lanes
    k = per_row // 2
    va = rng.standard_normal(4).astype(np.float32).view(np.uint32)
    vb = rng.standard_normal(4).astype(np.float32).view(np.uint32)
    await _write_words(tb, 1, pack_vector(va) + pack_vector(vb) + [0])
    program = [vector(3, a=1, b=2, d=3, length=4, imm=0x3C00), wait("vector"),
               pim("gwrite", channel=channel, row=vector_row),
               pim("header", channel=channel, row=matrix_row, gemvs=2, comps=per_row + k),
               pim("gemv", channel=channel, row=matrix_row, column=0, comps=per_row, sp=200),
               pim("gemv", channel=channel, row=matrix_row, column=per_row - k, comps=k, sp=201),
               wait("pim"), halt()]
    await tb.load_program(program)
    before = tb.counters()
    cycles = await tb.run()
    assert tb.error() == (NpuError.NONE, 0)
    d = _delta(tb.counters(), before)
    assert tb.vector_ops == [], "the built-in VectorEngine runs VECTOR instructions"
    assert d["vector_busy"] >= 4 and d["vector_ops"] == 1 and d["pim_transactions"] == 4
    vmax = unpack_vector(await tb.read_words([3]), 4)
    assert np.array_equal(vmax, golden_vector.execute(3, va, vb)), vmax
    words = await tb.read_words([200, 201])
    for word, (column, comps) in zip(words, ((0, per_row), (per_row - k, k))):
        got = unpack_word(word, np.uint16, g.burst_bytes)[:g.banks]
        want = gemv(matrix, vec, lanes, column, comps)
        assert np.array_equal(got, want), f"GEMV {column}+{comps}: {got}, golden {want}"
    counts = tb.commands[channel]
    from rtl.isa import Opcode
    assert counts[Opcode.PIM_GEMV] == 2 and counts[Opcode.GWRITE] == 1
    dut._log.info("vector + PIM: %d clocks, GEMV results bit-exact", cycles)
    tb.finish()


@cocotb.test()
async def vector_programs_bit_exact(dut):
    """Softmax of 128 and 37 attention logits (FP32) and of 50 FP16 logits, and a
    LayerNorm of 96 values, as VECTOR programs on the core's VectorEngine (inputs written
    through ``ext_write``, results read through ``ext_read``): bit-exact with
    ``sim.npu_vector_programs`` (= the ``sim.golden.vector`` compositions)."""
    tb = await _start(dut)
    config = tb.config
    lanes = config.npu.vector_lanes
    rng = np.random.default_rng(_env_int("NEUPIMS_SEED", 1) + 23)
    q = moderate16(rng, (128,)).view(np.float16).astype(np.float32)
    logits = (q * 4).astype(np.float32).view(np.uint32)   # attention-score-like spread
    ln = (rng.standard_normal(96) * 3 + 0.5).astype(np.float32)
    gamma = rng.uniform(0.5, 1.5, 96).astype(np.float32)
    beta = rng.uniform(-0.5, 0.5, 96).astype(np.float32)
    jobs = [("softmax 128", softmax_program(logits, lanes, base=0)),
            ("softmax 37", softmax_program(logits[:37], lanes, base=0)),
            ("softmax fp16 50", softmax_program(moderate16(rng, (50,)), lanes, base=0,
                                                fp16=True)),
            ("layernorm 96", layernorm_program(ln.view(np.uint32), gamma.view(np.uint32),
                                               beta.view(np.uint32), 1e-5, lanes, base=0))]
    summary = {}
    for name, job in jobs:
        assert job.words_used <= config.npu.scratchpad_words
        assert np.array_equal(job.expected, job.reference), name
        for address, word in sorted(job.preload.items()):
            await _write_words(tb, address, [word])
        await tb.load_program(job.program)
        before = tb.counters()
        cycles = await tb.run()
        assert tb.error() == (NpuError.NONE, 0), name
        d = _delta(tb.counters(), before)
        assert d["vector_ops"] == len(job.program) - 1, d
        got = job.result(await tb.read_words(list(job.out_words)))
        bad = np.flatnonzero(got != job.expected)
        assert not len(bad), (f"{name}: {len(bad)} mismatches, first at {bad[0]}: "
                              f"{int(got[bad[0]]):#x}, golden {int(job.expected[bad[0]]):#x}")
        summary[name] = cycles
        dut._log.info("%s: %d VECTOR instructions, %d clocks, bit-exact", name,
                      len(job.program) - 1, cycles)
    assert tb.vector_ops == []
    tb.finish()
    report(vector_programs=summary)
