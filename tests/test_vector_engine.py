"""The VectorEngine (``rtl.npu.vector_engine``) on Amaranth's simulator, 4 lanes: every op
over lengths that are not multiples of the lanes (and with scalar / immediate ``b``),
bit-exact with ``sim.npu_vector_programs.run_golden`` (= ``sim.golden.vector``); the
pipelined timing (4 and 8 lanes: clocks per chunk and per instruction, as the module
docstring states); in-place ops on words shared by consecutive chunks and overlaps with
read-after-write hazards, bit-exact with the scratchpad grants free and randomly withheld;
the golden interpreter equals the golden compositions; softmax of 20 logits (and
LayerNorm, residual add, GELU) as VECTOR programs on the whole NpuCore, bit-exact. Every
engine run checks that ``done`` pulses once per instruction and that the engine is quiet
while ``ops.ready``."""
import dataclasses

import numpy as np
import pytest
from amaranth.hdl import Module, Mux
from amaranth.lib import wiring
from amaranth.lib.wiring import In
from amaranth.sim import Simulator

from rtl.config import ConfigError, NpuConfig, preset
from rtl.isa.npu import vector
from rtl.npu.core import NpuCore, NpuError
from rtl.npu.scratchpad import Scratchpad
from rtl.npu.sequencer import vector_op_layout
from rtl.npu.vector import VectorOp, VectorUnit, steps_for
from rtl.npu.vector_engine import FLAG_IMM_B, FLAG_SCALAR_B, VectorEngine
from sim.golden import vector as golden
from sim.npu_vector_programs import (_v, execute_instruction, gelu_program, layernorm_program,
                                     pack_vector, residual_add_program, run_golden,
                                     softmax_program)

from test_npu_core import load_and_start

pytestmark = [pytest.mark.xdist_group("vector_engine"),
              pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")]

LANES = 4
SPW = 256


def tiny_config(lanes=LANES, **npu):
    base = preset("tiny")
    fields = dict(arrays=1, array_rows=4, array_cols=4, vector_lanes=lanes,
                  scratchpad_words=SPW, accumulator_rows=16, instruction_words=32,
                  dma_in_flight=8)
    fields.update(npu)
    return preset("tiny", geometry=dataclasses.replace(base.geometry, channels=1),
                  npu=NpuConfig(**fields))


class EngineHarness(wiring.Component):
    """VectorEngine + VectorUnit + a scratchpad with ``ext`` ports (after the engine).
    ``hold_read`` / ``hold_write``: withhold the engine's read / write grant this clock
    (as a busier client of its port group would; the scratchpad sees no request)."""

    def __init__(self, config):
        self.engine = VectorEngine(config)
        self.unit = VectorUnit(config)
        self.sp = Scratchpad(config, read_groups=[["vector", "ext"]],
                             write_groups=[["vector", "ext"]])
        sig = self.sp.signature.members
        super().__init__({"ops": self.engine.signature.members["ops"],
                          "done": self.engine.signature.members["done"],
                          "ext_read": sig["read_ext"], "ext_write": sig["write_ext"],
                          "hold_read": In(1), "hold_write": In(1)})

    def elaborate(self, platform):
        m = Module()
        e = m.submodules.engine = self.engine
        u = m.submodules.unit = self.unit
        sp = m.submodules.sp = self.sp
        wiring.connect(m, e.vu_i, u.i)
        wiring.connect(m, u.o, e.vu_o)
        rd, spr = e.sp_read, sp.read_vector
        m.d.comb += [spr.addr.eq(rd.addr), spr.en.eq(rd.en & ~self.hold_read),
                     rd.grant.eq(spr.grant & ~self.hold_read), rd.data.eq(spr.data)]
        wr, spw = e.sp_write, sp.write_vector
        m.d.comb += [spw.addr.eq(wr.addr), spw.data.eq(wr.data),
                     spw.lanes.eq(Mux(self.hold_write, 0, wr.lanes)),
                     wr.grant.eq(spw.grant & ~self.hold_write)]
        wiring.connect(m, wiring.flipped(self.ops), e.ops)
        m.d.comb += self.done.eq(e.done)
        wiring.connect(m, wiring.flipped(self.ext_read), sp.read_ext)
        wiring.connect(m, wiring.flipped(self.ext_write), sp.write_ext)
        return m


def _payload(ins) -> int:
    layout = vector_op_layout()
    value = 0
    for name, _ in layout:
        value |= ins[name] << layout[name].offset
    return value


async def _write_words(ctx, port, words: dict):
    for addr, word in sorted(words.items()):
        ctx.set(port.addr, addr)
        ctx.set(port.data, word)
        ctx.set(port.lanes, (1 << len(port.lanes)) - 1)      # every lane of the word
        assert ctx.get(port.grant)
        await ctx.tick()
    ctx.set(port.lanes, 0)


async def _read_words(ctx, port, addrs) -> dict:
    out = {}
    for addr in addrs:
        ctx.set(port.addr, addr)
        ctx.set(port.en, 1)
        assert ctx.get(port.grant)
        await ctx.tick()
        out[addr] = ctx.get(port.data)
    ctx.set(port.en, 0)
    return out


def run_engine(config, batches, hold=None):
    """``batches``: [(preload {word: int}, [VECTOR instructions])]; returns per batch
    (every scratchpad word afterwards, clocks per instruction). ``hold``: None, or
    (probability, seed): each clock the engine's read grant and its write grant are
    withheld with that probability (independently). Checks that ``done`` pulses once per
    instruction and that the engine touches no port while ``ops.ready``."""
    dut = EngineHarness(config)
    results = []
    dones = []

    async def bench(ctx):
        for preload, program in batches:
            await _write_words(ctx, dut.ext_write, preload)
            clocks = []
            for ins in program:
                ctx.set(dut.ops.payload.as_value(), _payload(ins))
                ctx.set(dut.ops.valid, 1)
                n = 0
                while not ctx.get(dut.ops.ready):
                    await ctx.tick()
                await ctx.tick()
                ctx.set(dut.ops.valid, 0)
                while not ctx.get(dut.done):
                    await ctx.tick()
                    n += 1
                    assert n < 20000, f"{ins} did not finish"
                clocks.append(n)
                await ctx.tick()
            words = await _read_words(ctx, dut.ext_read, range(SPW))
            results.append((words, clocks))

    async def monitor(ctx):
        e = dut.engine
        pulses = 0
        async for values in ctx.tick().sample(e.done, e.ops.ready, e.sp_read.en,
                                              e.sp_write.lanes, e.vu_i.valid):
            _, _, done, ready, rd_en, wr_lanes, vu_valid = values
            pulses += done
            if ready:
                assert not (rd_en or wr_lanes or vu_valid), "engine active while ops.ready"
            dones.append(pulses)

    async def withhold(ctx):
        probability, seed = hold
        rng = np.random.default_rng(seed)
        while True:
            ctx.set(dut.hold_read, int(rng.random() < probability))
            ctx.set(dut.hold_write, int(rng.random() < probability))
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-9)
    sim.add_testbench(bench)
    sim.add_testbench(monitor, background=True)
    if hold is not None:
        sim.add_testbench(withhold, background=True)
    sim.run()
    instructions = sum(len(program) for _, program in batches)
    assert dones and dones[-1] == instructions, (
        f"done pulsed {dones[-1] if dones else 0} times for {instructions} instructions")
    return results


def _values(rng, op, n):
    if op in (VectorOp.EXP,):
        return rng.uniform(-20, 20, n).astype(np.float32)
    if op in (VectorOp.RSQRT,):
        return rng.uniform(0.01, 100, n).astype(np.float32)
    if op is VectorOp.GELU:
        return rng.uniform(-6, 6, n).astype(np.float32)
    return (rng.standard_normal(n) * 4).astype(np.float32)


def test_every_op_bit_exact():
    """Each op (binary ones also with SCALAR_B and IMM_B; SUM / RMAX over 1, 7, 13, 21
    elements), lengths 7 and 13 with 4 lanes; neighbouring elements of ``d`` untouched."""
    config = tiny_config()
    rng = np.random.default_rng(7)
    sentinel = 0x5A5A5A5A_A5A5A5A5
    batches, cases = [], []
    A, B, D = 0, 8, 16
    ops = [(VectorOp.ADD, 0), (VectorOp.SUB, FLAG_SCALAR_B), (VectorOp.MUL, FLAG_IMM_B),
           (VectorOp.MAX, 0), (VectorOp.EXP, 0), (VectorOp.RECIP, 0), (VectorOp.RSQRT, 0),
           (VectorOp.GELU, 0), (VectorOp.CVT16TO32, 0), (VectorOp.CVT32TO16, 0),
           (VectorOp.ADD, FLAG_SCALAR_B), (VectorOp.SUB, 0), (VectorOp.MUL, 0),
           (VectorOp.MAX, FLAG_IMM_B)]
    for op, flags in ops:
        program, preload = [], {}
        for k, n in enumerate((7, 13)):
            base = 32 * k
            if op is VectorOp.CVT16TO32:
                a = (rng.standard_normal(n) * 8).astype(np.float16).view(np.uint16)
                a_words = pack_vector(a, fp16=True)
            else:
                a_words = pack_vector(_values(rng, op, n).view(np.uint32))
            b_words = pack_vector((rng.standard_normal(n) * 3).astype(np.float32).view(np.uint32))
            preload.update({base + A + i: w for i, w in enumerate(a_words)})
            preload.update({base + B + i: w for i, w in enumerate(b_words)})
            preload.update({base + D + i: sentinel for i in range(2)})
            imm = int(np.float32(-1.75).view(np.uint32))
            program.append(_v(op, a=base + A, b=base + B, d=base + D, length=n,
                              flags=flags, imm=imm))
        batches.append((preload, program))
        cases.append((op, flags))
    for op, n in ((VectorOp.SUM, 1), (VectorOp.SUM, 7), (VectorOp.RMAX, 13),
                  (VectorOp.SUM, 21), (VectorOp.RMAX, 21), (VectorOp.RMAX, 4)):
        x = _values(rng, op, n).view(np.uint32)
        preload = {i: w for i, w in enumerate(pack_vector(x))}
        preload.update({D: sentinel})
        batches.append((preload, [_v(op, a=0, d=D, length=n)]))
        cases.append((op, n))
        # the golden interpreter's reduction = the composition's order (pad +0 / -inf)
        pad = 0xFF800000 if op is VectorOp.RMAX else 0
        parts = golden.chunks(x, LANES, pad)
        acc = parts[0]
        for part in parts[1:]:
            acc = golden.execute(VectorOp.ADD if op is VectorOp.SUM else VectorOp.MAX, acc, part)
        want = golden.execute(op, acc)[0]
        got = run_golden(batches[-1][1], preload, LANES)[D] & 0xFFFFFFFF
        assert got == want
    results = run_engine(config, batches)
    memory = {}
    for (preload, program), (words, clocks), case in zip(batches, results, cases):
        memory.update(preload)
        want = run_golden(program, memory, LANES)
        for addr in range(SPW):
            assert words[addr] == want.get(addr, 0), (
                f"{case}: word {addr}: {words[addr]:#x}, golden {want.get(addr, 0):#x}")
        memory = {a: w for a, w in words.items() if w}


def engine_clocks(lanes, vop, flags, n, steps=None):
    """The engine's clocks for one instruction without scratchpad contention or
    read-after-write stalls (the module docstring's timing), as ``run_engine`` counts
    them: from the clock after ``ops`` transfers to the clock ``done`` is high.
    ``steps``: the strided steps (default: the dense chunks ``ceil(n / lanes)``)."""
    if n == 0:
        return 0
    op = VectorOp(vop) if vop < 12 else None
    unit_steps = steps_for(op, lanes) if op is not None else 1
    latency = unit_steps + 1
    chunks = -(-n // lanes) if steps is None else steps
    if op in (VectorOp.SUM, VectorOp.RMAX):          # acc chain: 2 clocks per chunk
        return 1 + latency + 2 + 2 * (chunks - 1)
    binary = op in (VectorOp.ADD, VectorOp.SUB, VectorOp.MUL, VectorOp.MAX)
    once = binary and flags & FLAG_SCALAR_B and not flags & FLAG_IMM_B
    reads = 2 if binary and not flags & (FLAG_SCALAR_B | FLAG_IMM_B) else 1
    return int(bool(once)) + reads + latency + 1 + (chunks - 1) * max(unit_steps, reads)


@pytest.mark.parametrize("lanes", [4, 8])
def test_pipelined_timing(lanes):
    """Back-to-back chunks overlap: per chunk 1 clock (unary, IMM_B / SCALAR_B), 2 (vector
    b), the VectorUnit's steps (EXP 22), 2 (reductions); in-place ops and CVT32TO16 into
    words shared by several chunks do not stall; results bit-exact."""
    rng = np.random.default_rng(40 + lanes)
    memory = {a: int.from_bytes(rng.bytes(64), "little") for a in range(SPW)}
    for base in (0, 40, 100):
        x = (rng.standard_normal(16 * 6) * 3).astype(np.float32).view(np.uint32)
        memory.update({base + i: w for i, w in enumerate(pack_vector(x))})
    imm = int(np.float32(0.5).view(np.uint32))
    program = []
    for n in (1, lanes, 3 * lanes + 1, 64):
        program += [_v(VectorOp.ADD, a=0, b=40, d=100, length=n),
                    _v(VectorOp.MUL, a=0, b=40, d=0, length=n, flags=FLAG_SCALAR_B),
                    _v(VectorOp.SUB, a=100, b=40, d=100, length=n, flags=FLAG_IMM_B, imm=imm),
                    _v(VectorOp.MAX, a=0, b=40, d=40, length=n),
                    _v(VectorOp.CVT32TO16, a=0, d=150, length=n),
                    _v(VectorOp.CVT32TO16, a=100, d=100, length=n),
                    _v(VectorOp.CVT16TO32, a=150, d=200, length=n),
                    vector(13, a=40, d=40, length=n),
                    _v(VectorOp.SUM, a=40, d=60, length=n),
                    _v(VectorOp.RMAX, a=0, d=60, length=n)]
    program += [_v(VectorOp.EXP, a=0, d=0, length=3 * lanes),
                _v(VectorOp.ADD, a=0, b=40, d=100, length=0)]
    want = dict(memory)
    for ins in program:
        execute_instruction(want, ins, lanes)
    [(words, clocks)] = run_engine(tiny_config(lanes=lanes), [(memory, program)])
    bad = [a for a in range(SPW) if words[a] != want[a]]
    assert not bad, f"{len(bad)} words differ, first {bad[0]}"
    for ins, got in zip(program, clocks):
        assert got == engine_clocks(lanes, ins["vop"], ins["flags"], ins["length"]), (
            ins, got)
    # e.g. 64 elements with 8 lanes: ADD 19 clocks (8 chunks), CVT32TO16 11
    if lanes == 8:
        assert clocks[30:35] == [19, 12, 11, 19, 11]


#: (name, vop, flags, a, b, d, n, stalls): in-place ops on words shared by consecutive
#: chunks (no stall needed: a chunk writes only its own lanes) and overlaps where a later
#: chunk reads what an earlier one writes (the read waits for the write). ``stalls``: the
#: lane counts with which the read runs ahead far enough to wait (d = a + 1: a chunk
#: reads what the chunk 16 elements earlier wrote); None: the wait hides behind the
#: VectorUnit (not checked)
HAZARDS = [
    ("ADD d = a", VectorOp.ADD, 0, 10, 20, 10, 37, ()),
    ("SUB d = b", VectorOp.SUB, 0, 30, 40, 40, 29, ()),
    ("ADD a = b = d", VectorOp.ADD, 0, 45, 45, 45, 27, ()),
    ("MUL SCALAR_B d = a", VectorOp.MUL, FLAG_SCALAR_B, 50, 60, 50, 21, ()),
    ("MAX SCALAR_B b in d (element 16)", VectorOp.MAX, FLAG_SCALAR_B, 70, 81, 80, 40, (4, 8)),
    ("SUB SCALAR_B b = d", VectorOp.SUB, FLAG_SCALAR_B, 90, 100, 100, 20, (4, 8)),
    ("ADD IMM_B d = a", VectorOp.ADD, FLAG_IMM_B, 110, 0, 110, 33, ()),
    ("copy d = a + 1 (cascade)", 12, 0, 120, 0, 121, 60, (8,)),
    ("ADD b = a, d = a + 1", VectorOp.ADD, 0, 126, 126, 127, 40, (8,)),
    ("CVT16TO32 d = a (source overwritten)", VectorOp.CVT16TO32, 0, 140, 0, 140, 40, (4, 8)),
    ("CVT32TO16 d = a", VectorOp.CVT32TO16, 0, 150, 0, 150, 45, ()),
    ("CVT32TO16 shared words", VectorOp.CVT32TO16, 0, 160, 0, 170, 70, ()),
    ("EXP d = a", VectorOp.EXP, 0, 180, 0, 180, 13, ()),
    ("SUM d = a", VectorOp.SUM, 0, 190, 0, 190, 30, ()),
    ("RMAX d = a + 1", VectorOp.RMAX, 0, 200, 0, 201, 35, ()),
    ("RECIP d = a + 1", VectorOp.RECIP, 0, 210, 0, 211, 20, None),
]


def _hazard_batches(rng, lanes):
    batches, wants = [], []
    imm = int(np.float32(-0.75).view(np.uint32))
    for name, op, flags, a, b, d, n, _ in HAZARDS:
        vop = op if isinstance(op, int) else op.value
        memory = {w: int.from_bytes(rng.bytes(64), "little") for w in range(SPW)}
        if vop == VectorOp.CVT16TO32.value:
            x = (rng.standard_normal(n) * 4).astype(np.float16).view(np.uint16)
            a_words = pack_vector(x, fp16=True)
        elif vop == VectorOp.RECIP.value:
            a_words = pack_vector(rng.uniform(0.5, 4, n).astype(np.float32).view(np.uint32))
        else:
            a_words = pack_vector((rng.standard_normal(n) * 3).astype(np.float32).view(np.uint32))
        y = (rng.standard_normal(n) * 3).astype(np.float32)
        y[0] = -1000.0                  # a scalar b that MAX / SUB results replace
        y = y.view(np.uint32)
        if b != a and vop in (0, 1, 2, 3):
            memory.update({b + i: w for i, w in enumerate(pack_vector(y))})
        memory.update({a + i: w for i, w in enumerate(a_words)})
        ins = vector(vop, a=a, b=b, d=d, length=n, flags=flags, imm=imm)
        want = dict(memory)
        execute_instruction(want, ins, lanes)
        batches.append((memory, [ins]))
        wants.append(want)
    return batches, wants


@pytest.mark.parametrize("lanes", [4, 8])
@pytest.mark.parametrize("hold", [None, 0.4], ids=["free", "withheld"])
def test_pipelined_hazards_bit_exact(lanes, hold):
    """HAZARDS on random scratchpads, bit-exact with execute_instruction (every word),
    with the grants free and randomly withheld (40 % of the clocks, read and write port
    independently); without contention the overlaps that need it take longer than the
    stall-free timing, the others do not."""
    rng = np.random.default_rng(60 + lanes)
    batches, wants = _hazard_batches(rng, lanes)
    hold_arg = None if hold is None else (hold, 7 + lanes)
    results = run_engine(tiny_config(lanes=lanes), batches, hold=hold_arg)
    for case, (words, clocks), want, (_, [ins]) in zip(HAZARDS, results, wants, batches):
        bad = [a for a in range(SPW) if words[a] != want[a]]
        assert not bad, (f"{case[0]}: {len(bad)} words differ, first {bad[0]}: "
                         f"{words[bad[0]]:#x}, golden {want[bad[0]]:#x}")
        if hold is None:
            flags = ins["flags"]
            if case[7] is not None and lanes in case[7] and flags & FLAG_SCALAR_B:
                flags = 0                # b is written: read before every chunk, as a vector b
            free = engine_clocks(lanes, ins["vop"], flags, ins["length"])
            if case[7] is None:
                assert clocks[0] >= free, (case[0], clocks, free)
            elif lanes in case[7]:
                assert clocks[0] > free, (case[0], clocks, free)
            else:
                assert clocks[0] == free, (case[0], clocks, free)
        else:
            assert clocks[0] >= engine_clocks(lanes, ins["vop"], ins["flags"], ins["length"])


def test_elementwise_golden_matches_execute():
    """run_golden's element-wise ops are golden.execute chunk by chunk."""
    rng = np.random.default_rng(3)
    x = (rng.standard_normal(11) * 3).astype(np.float32).view(np.uint32)
    y = (rng.standard_normal(11) * 3).astype(np.float32).view(np.uint32)
    memory = {i: w for i, w in enumerate(pack_vector(x))}
    memory.update({4 + i: w for i, w in enumerate(pack_vector(y))})
    for op in (VectorOp.ADD, VectorOp.MUL, VectorOp.EXP, VectorOp.GELU):
        out = run_golden([_v(op, a=0, b=4, d=8, length=11)], memory, LANES)
        got = np.array([(out[8] >> (32 * i)) & 0xFFFFFFFF for i in range(11)], np.uint32)
        assert np.array_equal(got, golden.execute(op, x, y))


def test_engine_rejects_wide_lanes():
    with pytest.raises(ConfigError):
        VectorEngine(tiny_config(lanes=32))
    with pytest.raises(ConfigError):
        VectorEngine(tiny_config(lanes=3))


class CoreVectorBench:
    """NpuCore with its VectorEngine: preload through ext_write, run, read ext_read."""

    def __init__(self, config):
        self.config = config
        self.dut = NpuCore(config, vector_engine=True)

    def run(self, jobs):
        dut = self.dut
        results = []

        async def bench(ctx):
            for job in jobs:
                await _write_words(ctx, dut.ext_write, job.preload)
                await load_and_start(ctx, dut, job.program)
                cycles = 0
                while not ctx.get(dut.done):
                    assert not ctx.get(dut.vector_ops.valid)
                    await ctx.tick()
                    cycles += 1
                    assert cycles < 50000
                words = await _read_words(ctx, dut.ext_read, list(job.out_words))
                code = NpuError(ctx.get(dut.error_code))
                ops = ctx.get(dut.counters.vector_ops)
                results.append((code, job.result([words[a] for a in job.out_words]), cycles, ops))

        sim = Simulator(dut)
        sim.add_clock(1e-9)
        sim.add_testbench(bench)
        sim.run()
        return results


def test_core_vector_programs_bit_exact():
    """On NpuCore (tiny, 4 lanes): softmax of 20 logits, FP16 softmax of 9, LayerNorm of
    13, FP16 residual add of 10 and GELU of 6 as VECTOR programs; bit-exact with the
    golden interpreter and the sim.golden.vector compositions."""
    config = tiny_config()
    rng = np.random.default_rng(11)
    logits = (rng.standard_normal(20) * 3).astype(np.float32).view(np.uint32)
    x16 = (rng.standard_normal(9) * 2).astype(np.float16).view(np.uint16)
    ln = (rng.standard_normal(13) * 3 + 1).astype(np.float32)
    g = rng.uniform(0.5, 1.5, 13).astype(np.float32)
    b = rng.uniform(-0.5, 0.5, 13).astype(np.float32)
    r1 = (rng.standard_normal(10)).astype(np.float16).view(np.uint16)
    r2 = (rng.standard_normal(10)).astype(np.float16).view(np.uint16)
    gx = rng.uniform(-5, 5, 6).astype(np.float32).view(np.uint32)
    jobs = [softmax_program(logits, LANES, base=10),
            softmax_program(x16, LANES, base=40, fp16=True),
            layernorm_program(ln.view(np.uint32), g.view(np.uint32), b.view(np.uint32), 1e-5,
                              LANES, base=70),
            residual_add_program(r1, r2, LANES, base=120, fp16=True),
            gelu_program(gx, LANES, base=150)]
    results = CoreVectorBench(config).run(jobs)
    total_ops = 0
    for job, (code, got, cycles, ops) in zip(jobs, results):
        assert code is NpuError.NONE
        assert np.array_equal(job.expected, job.reference)
        bad = np.flatnonzero(got != job.expected)
        assert not len(bad), (f"{job.program[0]}: {len(bad)} mismatches, first at {bad[0]}: "
                              f"{int(got[bad[0]]):#x}, golden {int(job.expected[bad[0]]):#x}")
        total_ops += len(job.program) - 1
        assert ops == total_ops
