"""NpuCore on Amaranth's simulator with a behavioural memory: every channel's controller
is a Python model answering the request streams (random acceptance, random latency,
responses of different tags out of order) and GEMV transactions. GEMM programs from HBM
to HBM are bit-exact with ``sim.golden.gemm``; illegal programs stop with their error
code and ``done`` still rises; WAIT, VECTOR dispatch and PIM results behave."""
import dataclasses
import random

import numpy as np
import pytest
from amaranth.sim import Simulator

from rtl.config import ConfigError, NpuConfig, preset
from rtl.controller.interface import PimOp, pim_request_layout, request_layout
from rtl.isa.npu import (NpuOp, dma_load, dma_store, encode, gemm, halt, nop, pim, vector,
                         wait, Instruction)
from rtl.npu.core import COUNTERS, NpuCore, NpuError
from rtl.npu.dma import burst_fields, check_dma_config
from rtl.npu.gemm_engine import check_array_shape
from sim.golden.gemm import unpack_payload
from sim.npu_programs import HbmImage, gemm_program, pack_words, unpack_word

pytestmark = pytest.mark.xdist_group("npu")


def tiny_config(channels=1, **npu):
    base = preset("tiny")
    fields = dict(arrays=1, array_rows=4, array_cols=4, vector_lanes=4, scratchpad_words=256,
                  accumulator_rows=16, instruction_words=32, dma_in_flight=8)
    fields.update(npu)
    return preset("tiny", geometry=dataclasses.replace(base.geometry, channels=channels),
                  npu=NpuConfig(**fields))


def moderate16(rng, shape):
    return (rng.standard_normal(shape) * 2.0 ** rng.integers(-4, 3, shape)).astype(np.float16).view(np.uint16)


class ChannelModel:
    """One channel's controller, behaviourally: requests accepted with probability
    ``accept``, answered after 4..``latency`` clocks, due responses in random order."""

    def __init__(self, config, channel, memory, rnd, accept=0.8, latency=24):
        self.config, self.channel, self.memory, self.rnd = config, channel, memory, rnd
        self.accept, self.latency = accept, latency
        self.req_layout = request_layout(config)
        self.pim_layout = pim_request_layout(config)
        self.pending_reads, self.pending_writes, self.pending_pims = [], [], []
        self.offer_read = self.offer_write = self.offer_pim = None
        self.outstanding = set()
        self.requests = 0
        self.gemvs = []

    def address(self, f):
        g = self.config.geometry
        return self.config.address_map.encode(
            g, row=f["row"], rank=f["rank"], bankgroup=f["bankgroup"], bank=f["bank"],
            channel=self.channel, column=f["column"], offset=0)

    def drive(self, ctx, dut, now):
        """Set this clock's inputs (every channel first, then :meth:`sample`)."""
        c = self.channel
        req, rd, wr = dut.requests[c], dut.read_responses[c], dut.write_responses[c]
        preq, presp = dut.pim_requests[c], dut.pim_responses[c]
        ready = self.ready = self.rnd.random() < self.accept
        ctx.set(req.ready, ready)
        ctx.set(preq.ready, ready)
        # offers: keep an offer until taken
        for kind in ("read", "write", "pim"):
            pending = getattr(self, f"pending_{kind}s")
            if getattr(self, f"offer_{kind}") is None:
                due = [p for p in pending if p[0] <= now]
                if due:
                    pick = self.rnd.choice(due)
                    pending.remove(pick)
                    setattr(self, f"offer_{kind}", pick)
        for kind, port in (("read", rd), ("write", wr), ("pim", presp)):
            offer = getattr(self, f"offer_{kind}")
            ctx.set(port.valid, offer is not None)
            if offer is not None:
                ctx.set(port.payload.as_value(), offer[1])

    def sample(self, ctx, dut, now):
        """The handshakes of this clock, before the edge."""
        c = self.channel
        req, rd, wr = dut.requests[c], dut.read_responses[c], dut.write_responses[c]
        preq, presp = dut.pim_requests[c], dut.pim_responses[c]
        ready = self.ready
        taken = {}
        for kind, port in (("read", rd), ("write", wr), ("pim", presp)):
            taken[kind] = getattr(self, f"offer_{kind}") is not None and ctx.get(port.ready)
        if ready and ctx.get(req.valid):
            f = unpack_payload(self.req_layout, ctx.get(req.payload.as_value()))
            tag = f["tag"]
            assert (c, tag) not in self.outstanding, f"tag {tag} reused while outstanding"
            self.outstanding.add((c, tag))
            addr = self.address(f)
            when = now + self.rnd.randint(4, self.latency)
            self.requests += 1
            if f["write"]:
                self.memory[addr] = int(f["data"])
                self.pending_writes.append((when, tag, tag))
            else:
                word = self.memory.get(addr, 0)
                self.pending_reads.append((when, tag | (word << len(rd.payload.tag)), tag))
        if ready and ctx.get(preq.valid):
            f = unpack_payload(self.pim_layout, ctx.get(preq.payload.as_value()))
            if f["op"] == PimOp.GEMV.value:
                result = (0x1234 + 7 * len(self.gemvs) + (c << 12)) & 0xFFFF
                self.gemvs.append(f)
                word = pack_words(np.full(self.config.geometry.burst_bytes // 2, result, np.uint16))
                self.pending_pims.append((now + 10, word << len(presp.payload.tag), result))
            else:
                self.gemvs.append(f)
        for kind in ("read", "write", "pim"):
            if taken[kind]:
                offer = getattr(self, f"offer_{kind}")
                if kind != "pim":
                    self.outstanding.discard((c, offer[2]))
                setattr(self, f"offer_{kind}", None)


async def load_and_start(ctx, dut, program):
    """Write ``program`` (Instructions or raw words) into NpuCore's instruction memory and
    pulse ``start``."""
    for i, ins in enumerate(program):
        ctx.set(dut.program_en, 1)
        ctx.set(dut.program_addr, i)
        ctx.set(dut.program_data, encode(ins) if isinstance(ins, Instruction) else ins)
        await ctx.tick()
    ctx.set(dut.program_en, 0)
    ctx.set(dut.start, 1)
    await ctx.tick()
    ctx.set(dut.start, 0)


class CoreBench:
    def __init__(self, config, seed=1, accept=0.8, vector_engine=False):
        self.config = config
        # the external vector port (a stand-in vector unit answers ``vector_done``); the
        # built-in VectorEngine is tested in tests/test_vector_engine.py
        self.dut = NpuCore(config, vector_engine=vector_engine)
        self.rnd = random.Random(seed)
        self.memory = {}
        self.channels = [ChannelModel(config, c, self.memory, self.rnd, accept)
                         for c in range(config.geometry.channels)]
        self.vector_seen = []
        self.vector_latency = 5

    def run(self, programs, reads=(), max_cycles=20000, sync_go_from=0):
        """Run each (program, image, reads) in turn; return per run: (error code, error pc,
        counters, scratchpad words read afterwards at ``reads`` (list of addresses)).
        ``sync_go`` (the barrier of the other cores) is high from clock ``sync_go_from``
        of each run; ``sync_seen``: per run, the first clock ``sync_ready`` was high and
        whether the DMA was busy then (None: never)."""
        dut = self.dut
        results = []
        self.sync_seen = []

        async def bench(ctx):
            now = 0
            vector_due = []
            for program, image, addrs in programs:
                if image is not None:
                    self.memory.update(image.words)
                await load_and_start(ctx, dut, program)
                cycles = 0
                self.sync_seen.append(None)
                while not ctx.get(dut.done):
                    ctx.set(dut.sync_go, cycles >= sync_go_from)
                    if ctx.get(dut.sync_ready) and self.sync_seen[-1] is None:
                        self.sync_seen[-1] = (cycles, bool(ctx.get(dut.sequencer.dma_busy)))
                    ctx.set(dut.vector_ops.ready, 1)
                    ctx.set(dut.vector_done, bool(vector_due) and vector_due[0] <= now)
                    if vector_due and vector_due[0] <= now:
                        vector_due.pop(0)
                    for ch in self.channels:
                        ch.drive(ctx, dut, now)
                    for ch in self.channels:
                        ch.sample(ctx, dut, now)
                    if ctx.get(dut.vector_ops.valid):
                        self.vector_seen.append(ctx.get(dut.vector_ops.payload.as_value()))
                        vector_due.append(now + self.vector_latency)
                    await ctx.tick()
                    now += 1
                    cycles += 1
                    assert cycles < max_cycles, "the NPU did not finish"
                ctx.set(dut.vector_done, 0)
                for ch in self.channels:
                    assert not ch.outstanding, "requests left outstanding after done"
                words = []
                for addr in addrs:
                    ctx.set(dut.ext_read.addr, addr)
                    ctx.set(dut.ext_read.en, 1)
                    assert ctx.get(dut.ext_read.grant)
                    await ctx.tick()
                    words.append(ctx.get(dut.ext_read.data))
                ctx.set(dut.ext_read.en, 0)
                counters = {name: ctx.get(getattr(dut.counters, name)) for name in COUNTERS}
                results.append((NpuError(ctx.get(dut.error_code)), ctx.get(dut.error_pc),
                                counters, words, cycles))

        sim = Simulator(dut)
        sim.add_clock(1e-9)
        sim.add_testbench(bench)
        sim.run()
        return results


def _gemm_run(config, shapes, seed, accept=0.8):
    rng = np.random.default_rng(seed)
    bench = CoreBench(config, seed=seed, accept=accept)
    runs, jobs = [], []
    for (m, k, n, fp32, acc) in shapes:
        a, b = moderate16(rng, (m, k)), moderate16(rng, (k, n))
        psum = (rng.standard_normal((m, n)) * 4).astype(np.float32).view(np.uint32) if acc else None
        job = gemm_program(config, a, b, psum=psum, fp32=fp32)
        jobs.append(job)
        rb = job.readback
        runs.append((job.program, job.image, list(range(rb.sp, rb.sp + rb.words))))
    results = bench.run(runs)
    for job, (code, pc, counters, words, cycles) in zip(jobs, results):
        assert code is NpuError.NONE, f"error {code} at pc {pc}"
        got = job.result(words)
        bad = np.argwhere(got != job.expected)
        assert not len(bad), (f"{len(bad)} mismatches, first at {tuple(bad[0])}: "
                              f"{got[tuple(bad[0])]:#x}, golden {job.expected[tuple(bad[0])]:#x}")
    return bench, results


def test_gemm_programs_bit_exact_two_channels():
    """Shapes with K and N tails, FP16 and FP32 output, accumulate into C; the
    memory answers out of order on two channels."""
    config = tiny_config(channels=2)
    shapes = [(5, 7, 6, False, False), (3, 9, 5, True, False), (4, 4, 4, False, False),
              (6, 10, 9, True, True)]
    bench, results = _gemm_run(config, shapes, seed=3)
    for (m, k, n, *_), (_, _, counters, _, _) in zip(shapes, results):
        assert counters["dma_bytes_read"] > 0
    last = results[-1][2]
    rows = sum(m * -(-k // 4) * -(-n // 4) for m, k, n, *_ in shapes)
    assert last["macs"] == rows * 16
    assert last["instructions"] > 0 and last["dma_busy"] > 0 and last["gemm_busy"] > 0
    assert all(ch.requests > 0 for ch in bench.channels), "both channels carried bursts"


def test_gemm_program_one_channel_8x8():
    """The ``small`` preset's memory (8 banks, 512-byte rows) and an 8 x 8 array."""
    config = preset("small", npu=NpuConfig(arrays=1, array_rows=8, array_cols=8,
                                           vector_lanes=8, scratchpad_words=256,
                                           accumulator_rows=16, instruction_words=32))
    _gemm_run(config, [(9, 17, 11, False, False)], seed=5, accept=1.0)


#: (M, K, N, fp32, acc) on 4 x 4 with 16 accumulator rows: N tiles in pairs (M <= 8) with
#: K chains, an odd N tile out, M at and past the pairing limit, one N tile with a long K
#: chain (each pass continues the one before), FP32 and accumulate-into-C.
TWO_BUFFER_SHAPES = [(5, 7, 6, False, False), (3, 9, 5, True, False), (4, 4, 4, False, False),
                     (6, 10, 9, True, True), (2, 17, 13, False, False), (8, 13, 11, True, True),
                     (9, 13, 7, True, True), (1, 21, 4, False, False), (1, 12, 12, True, True),
                     (12, 9, 8, False, False)]


def test_gemm_two_weight_buffers_bit_exact_and_faster():
    """``weight_buffers`` = 2: the engine preloads under the current pass, pairs N tiles,
    interlocks K chains on the accumulator; every result bit-exact with the golden, and
    every GEMM of more than one pass keeps the engine busy fewer clocks than with one
    buffer (same programs, same memory). The decode compiler's scheduling estimate of a
    GEMM (``Costs.gemm``) is within 20 % of the measured busy clocks for either count."""
    from sim.decode.compiler import Costs
    busy = {}
    for buffers in (1, 2):
        config = tiny_config(channels=2, weight_buffers=buffers)
        _, results = _gemm_run(config, TWO_BUFFER_SHAPES, seed=11)
        totals = [r[2]["gemm_busy"] for r in results]
        busy[buffers] = np.diff([0] + totals)
        for shape, clocks in zip(TWO_BUFFER_SHAPES, busy[buffers]):
            estimate = Costs(config).gemm(*shape[:3])
            assert abs(estimate - clocks) <= 0.2 * clocks, \
                f"{buffers} buffer(s), {shape}: estimate {estimate}, measured {clocks}"
    for shape, one, two in zip(TWO_BUFFER_SHAPES, busy[1], busy[2]):
        m, k, n, *_ = shape
        if -(-k // 4) * -(-n // 4) > 1:
            assert two < one, f"{shape}: {two} busy clocks with two buffers, {one} with one"


def test_gemm_two_weight_buffers_timing_only_twin():
    """The same GEMM programs on the timing-only core: the same clocks and counters."""
    config = tiny_config(channels=2, weight_buffers=2)
    runs = []
    for cfg in (config, config.replace(datapath=False)):
        bench = CoreBench(cfg, seed=4)
        rng = np.random.default_rng(4)
        programs = []
        for (m, k, n, fp32, acc) in TWO_BUFFER_SHAPES[3:7]:
            a, b = moderate16(rng, (m, k)), moderate16(rng, (k, n))
            psum = np.zeros((m, n), np.uint32) if acc else None
            job = gemm_program(config, a, b, psum=psum, fp32=fp32)
            programs.append((job.program, job.image, []))
        runs.append([(code, pc, counters, cycles)
                     for code, pc, counters, _, cycles in bench.run(programs)])
    assert runs[0] == runs[1]


def test_instruction_memory_depth_enters_no_timing():
    """The same programs on a 32- and a 1,024-instruction memory: the same clocks and
    counters (``neupims reproduce --resume`` relies on it)."""
    runs = []
    for words in (32, 1024):
        config = tiny_config(channels=2, weight_buffers=2, instruction_words=words)
        rng = np.random.default_rng(6)
        programs = []
        for (m, k, n, fp32, acc) in TWO_BUFFER_SHAPES[:3]:
            a, b = moderate16(rng, (m, k)), moderate16(rng, (k, n))
            job = gemm_program(config, a, b, fp32=fp32)
            programs.append((job.program, job.image, []))
        runs.append([(code, pc, counters, cycles) for code, pc, counters, _, cycles
                     in CoreBench(config, seed=6).run(programs)])
    assert runs[0] == runs[1] and all(r[0] is NpuError.NONE for r in runs[0])


def test_illegal_programs_stop_with_their_code():
    """One core runs every illegal program in turn (restarting after each error): each
    stops with its code and pc, and ``done`` rises."""
    config = tiny_config(channels=1)
    spw = config.npu.scratchpad_words
    cap = config.geometry.capacity_bytes
    ok_gemm = dict(a=0, b=8, c=16, m=4, k=4, n=4, a_pitch=1, b_pitch=1, c_pitch=1)
    cases = [
        ([nop(), encode(Instruction(NpuOp.NOP)) | 0xE], NpuError.BAD_OPCODE, 1),
        ([dma_load(0, spw - 2, 4)], NpuError.SCRATCHPAD_RANGE, 0),
        ([nop(), dma_store(cap - 128, 0, 3)], NpuError.HBM_RANGE, 1),
        ([dma_load(32, 0, 1)], NpuError.HBM_ALIGN, 0),
        ([dma_load(0, 0, 0)], NpuError.BAD_SHAPE, 0),
        ([gemm(**{**ok_gemm, "m": 0})], NpuError.BAD_SHAPE, 0),
        ([gemm(**{**ok_gemm, "k": 40})], NpuError.BAD_SHAPE, 0),        # pitch 1 < 2 words
        ([gemm(**{**ok_gemm, "acc": True})], NpuError.BAD_SHAPE, 0),    # acc needs fp32
        ([gemm(**{**ok_gemm, "k": 8, "m": 17})], NpuError.BAD_SHAPE, 0),  # accumulator: 16
        ([gemm(**{**ok_gemm, "c": spw - 2})], NpuError.SCRATCHPAD_RANGE, 0),
        ([gemm(**{**ok_gemm, "b": spw - 2})], NpuError.SCRATCHPAD_RANGE, 0),
        ([vector(1, a=0, b=0, d=spw - 1, length=2)], NpuError.SCRATCHPAD_RANGE, 0),
        ([pim("gemv", channel=1, comps=1)], NpuError.BAD_PIM, 0),
        ([pim("header", row=config.geometry.rows)], NpuError.BAD_PIM, 0),
        ([pim(3)], NpuError.BAD_PIM, 0),
        ([nop(), halt()], NpuError.NONE, 0),
        ([nop()] * config.npu.instruction_words, NpuError.PC_RANGE,
         config.npu.instruction_words),
    ]
    bench = CoreBench(config)
    results = bench.run([(program, None, []) for program, _, _ in cases])
    for (program, code, pc), (got, got_pc, _, _, cycles) in zip(cases, results):
        assert got is code, f"{program}: {got}, expected {code}"
        if code is not NpuError.NONE:
            assert got_pc == pc, f"{program}: error pc {got_pc}, expected {pc}"
        assert cycles < 100


def test_error_waits_for_running_units_and_restarts():
    """An error after a DMA was dispatched: the DMA completes, then done; a new start runs
    a good program on the same core."""
    config = tiny_config(channels=1)
    bench = CoreBench(config)
    bad = [dma_load(0, 0, 16), gemm(0, 0, 0, 0, 1, 1, 1, 1, 1)]
    good = [dma_load(0, 32, 4), wait("dma"), halt()]
    image = HbmImage(config)
    image.write(0, [pack_words(np.arange(i * 32, i * 32 + 32, dtype=np.uint16)) for i in range(16)])
    r1, r2 = bench.run([(bad, image, []), (good, None, list(range(32, 36)))])
    assert r1[0] is NpuError.BAD_SHAPE and r1[1] == 1
    assert r1[2]["dma_bytes_read"] == 16 * 64, "the dispatched DMA finished before done"
    assert r2[0] is NpuError.NONE
    for i, word in enumerate(r2[3]):
        assert np.array_equal(unpack_word(word, np.uint16), np.arange(i * 32, i * 32 + 32))


def test_vector_and_pim_dispatch():
    """VECTOR reaches ``vector_ops`` with its fields and WAIT VECTOR waits for
    ``vector_done``; a PIM GEMV's result lands in its scratchpad word."""
    config = tiny_config(channels=2)
    bench = CoreBench(config)
    bench.vector_latency = 40
    program = [vector(5, a=1, b=2, d=3, length=4, imm=0xABCD, flags=2), wait("vector"),
               pim("header", channel=1, row=1, gemvs=1, comps=2),
               pim("gemv", channel=1, row=1, column=0, comps=2, sp=100),
               pim("gemv", channel=0, row=0, column=1, comps=1, sp=101), wait("pim"), halt()]
    (code, pc, counters, words, cycles), = bench.run([(program, None, [100, 101])])
    assert code is NpuError.NONE
    assert len(bench.vector_seen) == 1
    from rtl.npu.sequencer import vector_op_layout
    fields = unpack_payload(vector_op_layout(), bench.vector_seen[0])
    assert fields == {"vop": 5, "flags": 2, "a": 1, "b": 2, "d": 3, "length": 4, "imm": 0xABCD}
    assert counters["vector_busy"] >= 40 and counters["vector_ops"] == 1
    assert cycles > 40, "WAIT VECTOR waited for vector_done"
    ch1_result = unpack_word(words[0], np.uint16)[0]
    ch0_result = unpack_word(words[1], np.uint16)[0]
    assert ch1_result == (0x1234 + 7 + (1 << 12)) & 0xFFFF   # 2nd PIM transaction on channel 1
    assert ch0_result == 0x1234
    assert counters["pim_transactions"] == 3
    gemv = bench.channels[1].gemvs[1]
    assert (gemv["op"], gemv["row"], gemv["comps"]) == (PimOp.GEMV.value, 1, 2)


def test_dma_walkers_follow_the_address_map():
    """The channel walkers' order (Python mirror of the RTL formula) covers every burst of a
    transfer exactly once, for several address maps and channel counts."""
    from rtl.config import AddressMap
    for channels in (1, 2, 4):
        for order in (None, ("row", "rank", "bankgroup", "channel", "bank", "column", "offset"),
                      ("channel", "row", "rank", "bankgroup", "bank", "column", "offset")):
            config = tiny_config(channels=channels)
            if order:
                config = config.replace(address_map=AddressMap(order=order))
            q, cw = burst_fields(config)["channel"]
            for start, count in ((0, 37), (3, 5), (13, 64)):
                seen = []
                for c in range(channels):
                    b = _first(start, c, q, cw)
                    while b < start + count:
                        assert (b >> q) & ((1 << cw) - 1) == c
                        seen.append(b)
                        b = _next(b, c, q, cw)
                assert sorted(seen) == list(range(start, start + count))


def _first(start, c, q, cw):
    if cw == 0:
        return start
    ch, high = (start >> q) & ((1 << cw) - 1), start >> (q + cw)
    if ch == c:
        return start
    return ((high + (ch > c)) << (q + cw)) | (c << q)


def _next(b, c, q, cw):
    if cw == 0 or ((b + 1) >> q) & ((1 << cw) - 1) == c:
        return b + 1
    return (((b >> (q + cw)) + 1) << (q + cw)) | (c << q)


def test_config_limits():
    """NpuCore's constructor runs these checks first."""
    with pytest.raises(ConfigError, match="NpuConfig.array_cols"):
        check_array_shape(tiny_config(array_rows=4, array_cols=32))
    with pytest.raises(ConfigError, match="NpuConfig.array_rows"):
        check_array_shape(tiny_config(array_rows=6, array_cols=4))
    with pytest.raises(ConfigError, match="NpuConfig.dma_in_flight"):
        check_dma_config(tiny_config(dma_in_flight=128))
    with pytest.raises(ConfigError, match="NpuConfig.scratchpad_words"):
        NpuConfig(scratchpad_words=100)


def test_units_run_concurrently_until_wait():
    """A DMA dispatched right after a GEMM runs while the GEMM does (no WAIT between):
    the program takes fewer clocks than with a WAIT GEMM between them; the results of
    both are right either way."""
    config = tiny_config(channels=1)
    rng = np.random.default_rng(9)
    m, k, n = 8, 12, 8
    a, b = moderate16(rng, (m, k)), moderate16(rng, (k, n))
    job = gemm_program(config, a, b, readback=False, halt_at_end=False)
    image = job.image
    extra = [pack_words(rng.integers(0, 1 << 16, 32, dtype=np.uint16)) for _ in range(24)]
    image.write(0x8000, extra)   # the behavioural memory stores every row
    loads = job.program[:3]                 # DMA A, DMA B, WAIT DMA
    gemm_ins = job.program[3]
    c = job.c
    runs = []
    for between in ([wait("gemm")], []):
        program = loads + [gemm_ins] + between + [dma_load(0x8000, 200, 24), wait("dma", "gemm"),
                                                  halt()]
        runs.append((program, image, list(range(c.sp, c.sp + c.words)) + list(range(200, 224))))
    bench = CoreBench(config, accept=1.0)
    (r_serial, r_overlap) = bench.run(runs)
    from sim.npu_programs import words_to_matrix
    for code, pc, counters, words, cycles in (r_serial, r_overlap):
        assert code is NpuError.NONE
        got = words_to_matrix(words[:c.words], m, n, 16, c.pitch)
        assert np.array_equal(got, job.expected)
        assert words[c.words:] == extra
    assert r_overlap[4] < r_serial[4] - 20, (r_overlap[4], r_serial[4])


@pytest.mark.parametrize("units", [("dma",), ()])
def test_sync_waits_for_its_units_then_the_barrier(units):
    """SYNC: ``sync_ready`` once the named units are idle (``sync dma``: the DMA idle; no
    units: at once, the DMA still running); the core stays there until
    ``sync_go`` (the other cores), counting ``sync_wait``; then the program goes on and
    its data are right."""
    from rtl.isa.npu import sync
    config = tiny_config(channels=2)
    rng = np.random.default_rng(4)
    image = HbmImage(config)
    words = [pack_words(rng.integers(0, 1 << 16, 32, dtype=np.uint16)) for _ in range(24)]
    image.write(0x4000, words)
    program = [dma_load(0x4000, 100, 24), sync(*units), wait("dma"), halt()]
    reads = list(range(100, 124))
    bench = CoreBench(config, accept=0.7)
    (free,) = bench.run([(program, image, reads)])
    ready_free, busy_free = bench.sync_seen[0]
    late = free[4] + 100
    (held,) = bench.run([(program, image, reads)], sync_go_from=late)
    ready_held, busy_held = bench.sync_seen[0]
    for code, pc, counters, got, cycles in (free, held):
        assert code is NpuError.NONE and got == words
    assert free[2]["sync_wait"] == 0
    assert busy_free == busy_held == (not units)       # the unit mask is honoured
    assert held[2]["sync_wait"] - free[2]["sync_wait"] == late - ready_held
    assert held[4] >= late > free[4]


def _channel_run(config, n, channel):
    """HBM byte address of the n-th run of bursts that lies in ``channel`` alone."""
    q, cw = burst_fields(config)["channel"]
    return ((n << (q + cw)) | (channel << q)) * config.geometry.burst_bytes


def test_dma_overlap_issues_commands_to_different_channels_at_once():
    """``NpuConfig.dma_overlap``: loads into one channel each, back to back, then stores
    with no WAIT between (a store must still wait for the loads it reads), then a load
    into words a store is still reading (it must wait for that store). Same words and
    HBM bursts with and without overlap, in fewer clocks with it (one request in flight
    per channel, so each burst of a command waits a round trip in its channel)."""
    runs = {}
    for overlap in (False, True):
        from rtl.config import AddressMap
        config = tiny_config(channels=4, dma_in_flight=1, dma_overlap=overlap).replace(
            address_map=AddressMap(order=("row", "channel", "rank", "bankgroup", "bank",
                                          "column", "offset")))
        q, cw = burst_fields(config)["channel"]
        per_run = 1 << q
        rng = np.random.default_rng(21)
        image = HbmImage(config)
        loads, stores = [], []
        for i in range(8):
            src = _channel_run(config, i // 4, i % 4)
            image.write(src, [int(w) for w in rng.integers(0, 1 << 62, per_run)])
            loads.append(dma_load(src, 16 + per_run * i, per_run))
            stores.append(dma_store(_channel_run(config, 8 + i // 4, i % 4),
                                    16 + per_run * i, per_run))
        late = _channel_run(config, 4, 1)
        image.write(late, [int(w) for w in rng.integers(0, 1 << 62, per_run)])
        last = 16 + per_run * 7                 # the words the last store reads
        program = loads + stores + [dma_load(late, last, per_run), wait("dma"), halt()]
        bench = CoreBench(config, seed=4, accept=1.0)
        words = list(range(16, 16 + 8 * per_run))
        assert per_run == 8
        (code, pc, _, got, cycles), = bench.run([(program, image, words)])
        assert code is NpuError.NONE, (code, pc)
        stored = [bench.memory.get(_channel_run(config, 8 + i // 4, i % 4) + j * 64)
                  for i in range(8) for j in range(per_run)]
        sources = [image.words[_channel_run(config, i // 4, i % 4) + j * 64]
                   for i in range(8) for j in range(per_run)]
        assert stored == sources, "a store read its words before the loads wrote them"
        assert got == sources[:7 * per_run] + image.read(late, per_run), \
            "the last load overwrote words before the store read them, or was lost"
        runs[overlap] = cycles
    assert 2 * runs[True] < runs[False], runs       # 4 channels at once, not one by one
