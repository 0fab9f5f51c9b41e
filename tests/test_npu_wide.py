"""NpuCore with scratchpad words of several DRAM bursts (``NpuConfig.word_bytes``), on
Amaranth's simulator with the behavioural channels of ``tests/test_npu_core.py``: DMA
round trips whose bursts land in burst slices of words (odd starts, counts that are not
a multiple of the bursts per word, the rest of a word kept), the range check in words,
GEMMs of random shapes bit-exact with ``sim.golden.gemm`` on an array as wide as a
word's FP32 lanes, VECTOR programs with as many lanes as a word's FP32 on the built-in
engine, a PIM GEMV result in burst slice 0 of its word, the timing-only core in the same
clocks; the ``neupims`` preset's core (128 x 128 array, 128-lane vector engine, 512-byte
words) elaborates; a bad ``word_bytes`` names the field."""
import dataclasses

import numpy as np
import pytest
from amaranth.hdl import Fragment
from amaranth.sim import Simulator

from rtl.config import ConfigError, NpuConfig, preset
from rtl.isa.npu import dma_load, dma_store, halt, pim, wait
from rtl.npu.core import NpuCore, NpuError
from rtl.npu.gemm_engine import check_array_shape
from rtl.npu.scratchpad import burst_lanes, word_bursts, word_lanes
from rtl.npu.vector_engine import engine_supported
from sim.decoder_program import execute_npu
from sim.npu_programs import (HbmImage, join_bursts, pack_words, split_words, unpack_word,
                              words_to_matrix)
from sim.npu_vector_programs import (layernorm_program, residual_add_program, softmax_program)

from test_npu_core import CoreBench, _gemm_run, load_and_start

pytestmark = [pytest.mark.xdist_group("npu"),
              pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")]


def wide_config(word_bytes=128, channels=2, **npu):
    """The ``small`` memory (8 banks, 512-byte rows) on ``channels`` channels, 16 stored
    rows (the behavioural memory stores everything; the allocator checks the rows)."""
    base = preset("small")
    fields = dict(arrays=1, array_rows=8, array_cols=word_bytes // 4, vector_lanes=8,
                  scratchpad_words=256, accumulator_rows=16, instruction_words=32,
                  dma_in_flight=8, word_bytes=word_bytes)
    fields.update(npu)
    return preset("small", geometry=dataclasses.replace(base.geometry, channels=channels),
                  stored_rows=16, npu=NpuConfig(**fields))


def _bursts(rng, count):
    return [pack_words(rng.integers(0, 1 << 16, 32, dtype=np.uint16)) for _ in range(count)]


@pytest.mark.parametrize("word_bytes, dma_responses", [(128, 1), (256, 1), (128, 2), (256, 2)])
def test_dma_and_pim_burst_slices(word_bytes, dma_responses):
    """k = 2 and 4 bursts per word, two channels answering out of order. DMA: loads and
    stores of ``count`` bursts (not a multiple of k) from odd words and odd bursts: burst
    i in slice i % k of word sp + i // k; slices of a word outside the transfer keep
    their value; a store sends the same slices back; the Python executor
    (``execute_npu``) agrees word for word. The sequencer's range check is on
    [sp, sp + ceil(count / k)) words. A PIM GEMV's 64-byte result goes to burst slice 0
    of its word, the other slices keep what the DMA loaded. The timing-only core runs the
    same programs in the same clocks with the same counters. ``dma_responses`` 2: both
    channels' responses written in one clock, to slices of one word or of two."""
    config = wide_config(word_bytes, array_cols=4, array_rows=4, dma_responses=dma_responses)
    k, burst = word_bursts(config), config.geometry.burst_bytes
    spw = config.npu.scratchpad_words
    rng = np.random.default_rng(word_bytes)
    image = HbmImage(config)
    background = _bursts(rng, 8 * k)                # words 0..7 filled first
    data = _bursts(rng, 2 * k + 3)
    image.write(0, background)
    src = 0x2000 + 5 * burst                        # an odd burst address
    image.write(src, data)
    loaded = _bursts(rng, 2 * k)
    image.write(0x3000, loaded)
    dst, dst2 = 0x4000, 0x6000 + 3 * burst
    count = len(data)                               # 2 k + 3 bursts: a partial last word
    program = [dma_load(0, 0, 8 * k), wait("dma"),
               dma_load(src, 3, count), wait("dma"),          # odd word, partial last word
               dma_store(dst, 3, count),                      # the same slices back
               dma_store(dst2, 1, k + 1), wait("dma"), halt()]
    in_range = [dma_load(0, spw - 2, 2 * k), wait("dma"), halt()]
    past_end = [dma_load(0, spw - 2, 2 * k + 1), halt()]
    gemvs = [dma_load(0x3000, 100, 2 * k), wait("dma"),
             pim("gemv", channel=1, row=1, column=0, comps=2, sp=100),
             pim("gemv", channel=0, row=0, column=1, comps=1, sp=101), wait("pim"), halt()]
    runs = [(program, image, list(range(8))), (in_range, None, []), (past_end, None, []),
            (gemvs, None, [100, 101])]
    bench = CoreBench(config, seed=4, accept=0.7)
    results = bench.run(runs)
    # the timing-only core: the same clocks, error codes and counters
    timing = CoreBench(config.replace(datapath=False), seed=4, accept=0.7).run(runs)
    for full, twin in zip(results, timing):
        assert (full[0], full[1], full[2], full[4]) == (twin[0], twin[1], twin[2], twin[4])
    (code, pc, counters, words, _), ok, bad, pim_run = results
    assert code is NpuError.NONE, (code, pc)
    # the Python model of the same program
    sp, hbm = {}, dict(image.words)
    for ins in program[:-1]:
        execute_npu(config, sp, hbm, ins)
    assert words == [sp.get(a, 0) for a in range(8)]
    expect = split_words([sp.get(a, 0) for a in range(8)], word_bytes, burst)
    want = background[:]
    want[3 * k:3 * k + count] = data
    assert expect == want, "execute_npu: burst i in slice i % k of word sp + i // k"
    assert [bench.memory.get(dst + i * burst) for i in range(count)] == data
    assert ([bench.memory.get(dst2 + i * burst) for i in range(k + 1)]
            == want[k:2 * k + 1])
    assert counters["dma_bytes_read"] == (8 * k + count) * burst
    assert counters["dma_bytes_written"] == (count + k + 1) * burst
    assert all(ch.requests > 0 for ch in bench.channels)
    # range checks in words
    assert ok[0] is NpuError.NONE
    assert bad[0] is NpuError.SCRATCHPAD_RANGE and bad[1] == 0
    # GEMV results in slice 0
    assert pim_run[0] is NpuError.NONE
    for w, (word, result) in enumerate(zip(pim_run[3], ((0x1234 + (1 << 12)) & 0xFFFF,
                                                         0x1234))):
        lanes = unpack_word(word, np.uint16, word_bytes)
        assert np.all(lanes[:32] == result)
        assert split_words([word], word_bytes)[1:] == loaded[w * k + 1:(w + 1) * k]


def test_two_response_lanes_write_two_bursts_a_clock():
    """``dma_responses`` 2 on two channels: a load of 24 words (48 bursts, the two
    channels alternating) ends with the same words in fewer clocks than with one lane,
    16 tags per channel, each lane writing its own burst slices (the two of a word in one clock), and the
    bytes counter counts both lanes; the timing-only core keeps the clocks. More lanes
    than channels names the field."""
    rng = np.random.default_rng(3)
    data = _bursts(rng, 48)
    runs = {}
    for lanes in (1, 2):
        config = wide_config(128, array_cols=4, array_rows=4, dma_responses=lanes,
                             dma_in_flight=16)
        image = HbmImage(config)
        image.write(0x2000, data)
        program = [dma_load(0x2000, 0, 48), wait("dma"), halt()]
        plan = [(program, image, list(range(24)))]
        runs[lanes] = CoreBench(config, seed=1, accept=1.0).run(plan)[0]
        timing = CoreBench(config.replace(datapath=False), seed=1, accept=1.0).run(plan)[0]
        assert timing[4] == runs[lanes][4]
    for lanes, (code, _, counters, words, _) in runs.items():
        assert code is NpuError.NONE
        assert split_words(words, 128, 64) == data, f"{lanes} lanes"
        assert counters["dma_bytes_read"] == 48 * 64
    print(f"48 bursts: {runs[1][4]} clocks with one lane, {runs[2][4]} with two")
    assert runs[2][4] < runs[1][4], (runs[1][4], runs[2][4])
    with pytest.raises(ConfigError, match="NpuConfig.dma_responses"):
        wide_config(128, array_cols=4, array_rows=4, dma_responses=3)


@pytest.mark.parametrize("word_bytes", [256])
def test_dma_from_a_burst_slice(word_bytes):
    """``slice``: a transfer that starts in the middle of a word; ``spread``: one burst per
    word (into / from the same slice of consecutive words). Loads into slices 3.. of
    word 2 (over into word 3) and into slice 1 of word 6 alone; stores from slice 2 of
    word 2 and from slice 3 of word 6 (one burst each: a K burst of a head in the middle
    of a wide word); the slices around them keep their value; execute_npu agrees. A
    slice >= k is BAD_SHAPE; the range check counts the slice; the timing-only core
    keeps the clocks."""
    config = wide_config(word_bytes, array_cols=4, array_rows=4)
    k, burst = word_bursts(config), config.geometry.burst_bytes
    spw = config.npu.scratchpad_words
    rng = np.random.default_rng(7)
    image = HbmImage(config)
    background = _bursts(rng, 8 * k)
    data = _bursts(rng, k + 2)
    image.write(0, background)
    image.write(0x2000, data)
    image.write(0x3000, data[:1])
    program = [dma_load(0, 0, 8 * k), wait("dma"),
               dma_load(0x2000, 2, k + 2, slice=3),         # slices 3 .. k-1 of 2, 3, 0..
               dma_load(0x3000, 6, 1, slice=1), wait("dma"),
               dma_store(0x4000, 2, 1, slice=2),
               dma_store(0x4000 + 7 * burst, 6, 2, slice=k - 1), wait("dma"),
               dma_load(0x2000, 4, 3, slice=2, spread=True), wait("dma"),   # a burst a word
               dma_store(0x5000, 0, 3, slice=1, spread=True), wait("dma"), halt()]
    bad_slice = [dma_load(0, 0, 1, slice=k), halt()]
    past_end = [dma_load(0, spw - 1, k, slice=1), halt()]
    in_range = [dma_load(0, spw - 1, k - 1, slice=1), wait("dma"),
                dma_load(0, spw - 2, 2, slice=k - 1, spread=True), wait("dma"), halt()]
    spread_past_end = [dma_load(0, spw - 2, 3, spread=True), halt()]
    runs = [(program, image, list(range(8))), (bad_slice, None, []), (past_end, None, []),
            (in_range, None, []), (spread_past_end, None, [])]
    bench = CoreBench(config, seed=2, accept=0.7)
    results = bench.run(runs)
    timing = CoreBench(config.replace(datapath=False), seed=2, accept=0.7).run(runs)
    for full, twin in zip(results, timing):
        assert (full[0], full[1], full[2], full[4]) == (twin[0], twin[1], twin[2], twin[4])
    (code, pc, counters, words, _), bad, past, ok, spread_past = results
    assert code is NpuError.NONE, (code, pc)
    want = background[:]
    want[2 * k + 3:2 * k + 3 + k + 2] = data
    want[6 * k + 1] = data[0]
    for i in range(3):
        want[(4 + i) * k + 2] = data[i]
    assert split_words(words, word_bytes, burst) == want
    sp, hbm = {}, dict(image.words)
    for ins in program[:-1]:
        execute_npu(config, sp, hbm, ins)
    assert [sp.get(a, 0) for a in range(8)] == words
    for memory in (hbm, bench.memory):
        assert memory.get(0x4000) == want[2 * k + 2]
        assert [memory.get(0x4000 + (7 + i) * burst) for i in range(2)] == want[7 * k - 1:7 * k + 1]
        assert [memory.get(0x5000 + i * burst) for i in range(3)] == want[1:3 * k:k]
    assert bad[0] is NpuError.BAD_SHAPE and past[0] is NpuError.SCRATCHPAD_RANGE
    assert ok[0] is NpuError.NONE and spread_past[0] is NpuError.SCRATCHPAD_RANGE


def _gemm_wide(H, W, shapes, seed, **npu):
    config = wide_config(128, array_rows=H, array_cols=W, **npu)
    bench, results = _gemm_run(config, shapes, seed=seed)
    rows = sum(m * -(-k // H) * -(-n // W) for m, k, n, *_ in shapes)
    assert results[-1][2]["macs"] == rows * H * W


def test_gemm_bit_exact_wide_words():
    """128-byte words, a 4 x 32 array (32 FP32 columns = a whole word, 2 FP16 groups; 4
    FP16 rows = one of 16 lane groups): random shapes with K and N tails, FP16 / FP32
    output and accumulation; two channels answering out of order; bit-exact with
    ``sim.golden.gemm``. (K over one word: the slow test below.)"""
    rng = np.random.default_rng(12)
    shapes = [(5, 13, 37, False, False),
              (int(rng.integers(1, 6)), int(rng.integers(5, 24)), int(rng.integers(33, 70)),
               True, True)]
    _gemm_wide(4, 32, shapes, seed=21)


def test_gemm_two_weight_buffers_wide_words():
    """Two weight buffers on 128-byte words, a 4 x 16 array (4 FP16 and 2 FP32 column
    groups per word): N tiles in pairs and one alone, K chains, FP16 / FP32 output and
    accumulation; bit-exact with ``sim.golden.gemm``."""
    _gemm_wide(4, 16, [(5, 13, 37, False, False), (3, 10, 40, True, True)], seed=23,
               weight_buffers=2)


@pytest.mark.slow
def test_gemm_bit_exact_wide_words_8x32():
    """The same on an 8 x 32 array with more shapes, K over one word (70 > 64 FP16)
    (2-4 minutes)."""
    rng = np.random.default_rng(13)
    shapes = [(5, 13, 37, False, False), (3, 70, 20, True, False),
              (int(rng.integers(1, 9)), int(rng.integers(1, 80)), int(rng.integers(1, 80)),
               True, True)]
    _gemm_wide(8, 32, shapes, seed=22)


def _run_vector_jobs(config, jobs):
    """NpuCore with its VectorEngine: each job's words preloaded through ``ext_write``
    (every lane of the wide word), its program run, its result read through
    ``ext_read``; returns (error code, result) per job."""
    dut = NpuCore(config, vector_engine=True)
    full = (1 << word_lanes(config)) - 1
    results = []

    async def bench(ctx):
        for job in jobs:
            for addr, word in sorted(job.preload.items()):
                ctx.set(dut.ext_write.addr, addr)
                ctx.set(dut.ext_write.data, word)
                ctx.set(dut.ext_write.lanes, full)
                await ctx.tick()
            ctx.set(dut.ext_write.lanes, 0)
            await load_and_start(ctx, dut, job.program)
            cycles = 0
            while not ctx.get(dut.done):
                await ctx.tick()
                cycles += 1
                assert cycles < 20000
            words = []
            for addr in job.out_words:
                ctx.set(dut.ext_read.addr, addr)
                ctx.set(dut.ext_read.en, 1)
                await ctx.tick()
                words.append(ctx.get(dut.ext_read.data))
            ctx.set(dut.ext_read.en, 0)
            results.append((NpuError(ctx.get(dut.error_code)), job.result(words)))

    sim = Simulator(dut)
    sim.add_clock(1e-9)
    sim.add_testbench(bench)
    sim.run()
    return results


@pytest.mark.parametrize("slow", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_vector_programs_wide_lanes(slow):
    """32 FP32 lanes (a whole 128-byte word: impossible with 64-byte words) on the
    built-in VectorEngine: softmax of 45 logits and an FP16 residual add of 50 (slow:
    also an FP16 softmax of 70 and a LayerNorm of 40), bit-exact with the golden
    interpreter on 128-byte words and with the ``sim.golden.vector`` compositions."""
    config = wide_config(128, channels=1, array_rows=4, array_cols=4, vector_lanes=32)
    assert engine_supported(config)
    rng = np.random.default_rng(3)
    wb = config.npu.word_bytes
    x = (rng.standard_normal(45) * 3).astype(np.float32).view(np.uint32)
    x16 = (rng.standard_normal(70) * 2).astype(np.float16).view(np.uint16)
    ln = (rng.standard_normal(40) * 3 + 1).astype(np.float32)
    g = rng.uniform(0.5, 1.5, 40).astype(np.float32)
    b = rng.uniform(-0.5, 0.5, 40).astype(np.float32)
    r1 = rng.standard_normal(50).astype(np.float16).view(np.uint16)
    r2 = rng.standard_normal(50).astype(np.float16).view(np.uint16)
    jobs = [softmax_program(x, 32, base=3, word_bytes=wb),
            residual_add_program(r1, r2, 32, base=60, fp16=True, word_bytes=wb)]
    if slow:
        jobs += [softmax_program(x16, 32, base=20, fp16=True, word_bytes=wb),
                 layernorm_program(ln.view(np.uint32), g.view(np.uint32), b.view(np.uint32),
                                   1e-5, 32, base=40, word_bytes=wb)]
    results = _run_vector_jobs(config, jobs)
    for job, (code, got) in zip(jobs, results):
        assert code is NpuError.NONE
        assert np.array_equal(job.expected, job.reference)
        assert np.array_equal(got, job.expected), job.program[0]


def test_strided_lanes_past_32_in_wide_words():
    """128-byte words (64 FP16, 32 FP32 per word): strided operands whose first lane is
    32 or more (the second half of a word: a head of 32 FP16 beside another, as the
    decode compiler lays two heads of 32 in one word), gathered, scattered and both,
    bit-exact with the golden interpreter on every word; a group that passes the word's
    end stops the core with BAD_SHAPE, also where the 8-bit fields' sum passes 255."""
    from rtl.isa.npu import vector
    from rtl.npu.vector import VectorOp
    from rtl.npu.vector_engine import FLAG_STRIDED_A as SA, FLAG_STRIDED_D as SD, strided_imm
    from sim.npu_vector_programs import execute_instruction
    from test_vector_strided import run_core
    config = wide_config(128, channels=1, array_rows=4, array_cols=4, vector_lanes=8)
    rng = np.random.default_rng(9)
    memory = {a: int.from_bytes(rng.bytes(128), "little") for a in range(64)}
    for a in range(8):          # sensible FP32 values for the EXP's operand
        memory[40 + a] = pack_words(rng.uniform(-5, 5, 32).astype(np.float32).view(np.uint32))
    cvt16, cvt32, exp = (VectorOp.CVT16TO32.value, VectorOp.CVT32TO16.value,
                         VectorOp.EXP.value)
    program = [vector(cvt16, a=0, d=10, length=32, flags=SA, imm=strided_imm(32, 32)),
               vector(cvt32, a=12, d=20, length=64, flags=SD, imm=strided_imm(32, 32)),
               vector(cvt16, a=2, d=24, length=40, flags=SA | SD, imm=strided_imm(8, 24)),
               vector(exp, a=40, d=50, length=20, flags=SA | SD, imm=strided_imm(10, 22)),
               vector(cvt32, a=30, d=56, length=5, flags=SD, imm=strided_imm(1, 50)),
               halt()]
    want = dict(memory)
    for ins in program[:-1]:
        execute_instruction(want, ins, 8, 128)
    illegal = [strided_imm(32, 40), strided_imm(60, 200), strided_imm(100, 0)]
    results = run_core(config, [(memory, program)] + [
        ({}, [vector(cvt16, a=0, d=10, length=8, flags=SA, imm=imm), halt()])
        for imm in illegal])
    code, _, words = results[0]
    assert code is NpuError.NONE
    bad = [a for a in range(64) if words[a] != want[a]]
    assert not bad, f"{len(bad)} words differ, first {bad[0]}"
    for imm, (code, pc, _) in zip(illegal, results[1:]):
        assert (code, pc) == (NpuError.BAD_SHAPE, 0), hex(imm)
        with pytest.raises(ValueError):
            execute_instruction({}, vector(cvt16, a=0, d=10, length=8, flags=SA, imm=imm), 8,
                                128)


def test_neupims_core_elaborates():
    """The ``neupims`` preset (512-byte words): the core's checks pass for its 128 x 128
    array and 128-lane vector engine, and the timing-only core elaborates (every
    ``elaborate``; its Verilog is exported and linted in ``tests/test_export.py``, slow)."""
    config = preset("neupims")
    assert config.npu.word_bytes == 512 and word_lanes(config) == 256
    assert word_bursts(config) == 8 and burst_lanes(config) == 32
    check_array_shape(config)
    assert engine_supported(config)
    core = NpuCore(config.replace(datapath=False))
    assert core.has_vector_engine
    Fragment.get(core, None)


def test_bad_word_bytes_name_the_field():
    with pytest.raises(ConfigError, match="NpuConfig.word_bytes"):
        NpuConfig(word_bytes=96)
    with pytest.raises(ConfigError, match="NpuConfig.word_bytes"):
        NpuConfig(word_bytes=0)
    with pytest.raises(ConfigError, match="NpuConfig.word_bytes"):
        preset("small", npu=NpuConfig(arrays=1, array_rows=8, array_cols=8, vector_lanes=8,
                                      word_bytes=32))      # less than one 64-byte burst
    with pytest.raises(ConfigError, match="NpuConfig.array_cols"):
        check_array_shape(wide_config(128, array_cols=64))
    with pytest.raises(ConfigError, match="NpuConfig.array_rows"):
        check_array_shape(preset("neupims", npu=NpuConfig(array_rows=512, word_bytes=512)))
    # the decode compiler lays out wide words when every row is whole words (tiny-gpt's
    # d_model 64 is half a 256-byte word); the decoder block's layout is for one-burst words
    from sim.decode.compiler import compile_decode
    from sim.decode.workload import DecodeError, DecodeWorkload
    from sim.decoder_program import decoder_program
    decode = preset("decode")
    wide = decode.replace(npu=dataclasses.replace(decode.npu, word_bytes=256))
    with pytest.raises(DecodeError, match="NpuConfig.word_bytes"):
        compile_decode(DecodeWorkload("tiny-gpt", (4,), steps=1), "neupims", config=wide)
    with pytest.raises(ConfigError, match="NpuConfig.word_bytes"):
        decoder_program(wide_config(128), check_stored_rows=False)


def test_wide_scratchpad_keeps_its_timing_without_datapath():
    from test_timing_only import compare
    compare("scratchpad", wide_config(256, array_rows=4, array_cols=4), cycles=100)


def test_word_helpers():
    rng = np.random.default_rng(0)
    words = [int.from_bytes(rng.bytes(256), "little") for _ in range(3)]
    bursts = split_words(words, 256)
    assert len(bursts) == 12 and join_bursts(bursts, 256) == words
    one = words[0] & ((1 << 512) - 1)
    assert split_words([one], 64) == [one] == join_bursts([one], 64)
    m = rng.integers(0, 1 << 16, (3, 70), dtype=np.uint16)
    from sim.npu_programs import matrix_words
    assert np.array_equal(words_to_matrix(matrix_words(m, 16, 2, 128), 3, 70, 16, 2, 128), m)


def test_python_executor_runs_wide_gemm_programs():
    """``sim.decoder_program.execute_npu`` runs a ``gemm_program`` on 256-byte words (DMA
    bursts into slices, GEMM on wide rows) to the golden result."""
    from sim.decoder_program import interpret
    from sim.npu_programs import gemm_program
    config = wide_config(256, array_rows=8, array_cols=16)
    rng = np.random.default_rng(2)
    for m, k, n, fp32 in ((3, 150, 70, False), (5, 33, 130, True)):
        a = rng.standard_normal((m, k)).astype(np.float16).view(np.uint16)
        b = rng.standard_normal((k, n)).astype(np.float16).view(np.uint16)
        job = gemm_program(config, a, b, fp32=fp32)
        sp, _ = interpret(config, job.program, job.image.words)
        rb = job.readback
        got = job.result([sp.get(rb.sp + i, 0) for i in range(rb.words)])
        assert np.array_equal(got, job.expected)
