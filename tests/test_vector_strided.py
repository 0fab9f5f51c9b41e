"""Strided (gather / scatter) VECTOR operands (``FLAG_STRIDED_A`` / ``FLAG_STRIDED_D``,
``rtl.npu.vector_engine``) on Amaranth's simulator: the VectorEngine's whole scratchpad
(pre-filled with random words, so the lanes a strided write must not touch hold data)
bit-exact with ``sim.npu_vector_programs.execute_instruction`` for scatters, gathers,
copies, conversions and EXP with both flags (4 and 8 lanes); the clocks of a strided
instruction (pipelined steps); scatters of consecutive elements into one word's lanes and
in-place strided ops with the scratchpad grants randomly withheld, and overlaps whose later
steps read what earlier steps wrote, against a step-by-step model;
the golden model against direct formulations; NpuCore runs a strided program and stops
illegal ones (strided binary op / reduction, group 0, lane0 + group too large) with
BAD_SHAPE, and the golden interpreter raises ValueError for the same instructions."""
import numpy as np
import pytest
from amaranth.sim import Simulator

from rtl.isa.npu import halt, vector
from rtl.npu.core import NpuCore, NpuError
from rtl.npu.vector import VectorOp
from rtl.npu.vector_engine import (FLAG_IMM_B, FLAG_SCALAR_B, FLAG_STRIDED_A,
                                   FLAG_STRIDED_D, strided_imm)
from sim.golden import vector as golden
from sim.npu_vector_programs import execute_instruction, strided_params

from test_npu_core import load_and_start
from test_vector_engine import (SPW, _read_words, _write_words, engine_clocks, run_engine,
                                tiny_config)

pytestmark = [pytest.mark.xdist_group("vector_engine"),
              pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")]

SA, SD = FLAG_STRIDED_A, FLAG_STRIDED_D
COPY = 12
WORD = (1 << 512) - 1


def _random_memory(rng):
    return {a: int.from_bytes(rng.bytes(64), "little") for a in range(SPW)}


def _put(memory, addr, lane, value, bits):
    mask = (1 << bits) - 1
    memory[addr] = (memory[addr] & ~(mask << (bits * lane))) | ((int(value) & mask) << (bits * lane))


def _get(memory, addr, lane, bits):
    return (memory[addr] >> (bits * lane)) & ((1 << bits) - 1)


def _place(i, per, strided, g, lane0):
    return (i // g, lane0 + i % g) if strided else (i // per, i % per)


def _store_operand(memory, base, values, fp16, strided, g, lane0):
    """Write ``values`` as the (strided) vector at ``base`` (other lanes keep theirs)."""
    per, bits = (32, 16) if fp16 else (16, 32)
    for i, v in enumerate(values):
        w, lane = _place(i, per, strided, g, lane0)
        _put(memory, base + w, lane, v, bits)


def _values(rng, vop, n, fp16):
    if fp16:
        return (rng.standard_normal(n) * 8).astype(np.float16).view(np.uint16)
    if vop == VectorOp.EXP.value:
        return rng.uniform(-20, 20, n).astype(np.float32).view(np.uint32)
    if vop == VectorOp.RSQRT.value:
        return rng.uniform(0.01, 100, n).astype(np.float32).view(np.uint32)
    return (rng.standard_normal(n) * 4).astype(np.float32).view(np.uint32)


#: (name, vop, flags, group, lane0, n, a, d): the brief's cases first, then more
CASES = [
    ("scatter CVT32TO16 g1 l7", VectorOp.CVT32TO16.value, SD, 1, 7, 20, 0, 100),
    ("gather CVT16TO32 g8 l0", VectorOp.CVT16TO32.value, SA, 8, 0, 29, 10, 130),
    ("gather copy g1 l0", COPY, SA, 1, 0, 13, 20, 140),
    ("scatter copy g1 l3", COPY, SD, 1, 3, 13, 40, 150),
    ("EXP both g4 l2", VectorOp.EXP.value, SA | SD, 4, 2, 18, 60, 170),
    ("EXP both in place g4 l2", VectorOp.EXP.value, SA | SD, 4, 2, 11, 200, 200),
    ("gather GELU g3 l13", VectorOp.GELU.value, SA, 3, 13, 10, 80, 180),
    ("scatter RECIP g5 l11", VectorOp.RECIP.value, SD, 5, 11, 17, 90, 210),
    ("gather RSQRT g16 l0 (dense)", VectorOp.RSQRT.value, SA, 16, 0, 21, 120, 230),
    ("CVT16TO32 both g5 l11", VectorOp.CVT16TO32.value, SA | SD, 5, 11, 12, 234, 240),
    ("CVT32TO16 both g2 l14", VectorOp.CVT32TO16.value, SA | SD, 2, 14, 9, 245, 246),
    ("gather CVT16TO32 g2 l30", VectorOp.CVT16TO32.value, SA, 2, 30, 7, 100, 105),
    ("scatter CVT32TO16 g32 l0 (dense)", VectorOp.CVT32TO16.value, SD, 32, 0, 40, 110, 113),
    ("copy 15 scatter g1 l15", 15, SD, 1, 15, 5, 250, 251),
]


def _case_batch(rng, case):
    name, vop, flags, g, lane0, n, a, d = case
    in16 = vop == VectorOp.CVT16TO32.value
    memory = _random_memory(rng)
    values = _values(rng, vop, n, in16)
    _store_operand(memory, a, values, in16, bool(flags & SA), g, lane0)
    # IMM_B / SCALAR_B and other imm bits are ignored by unary ops
    imm = strided_imm(g, lane0) | (0xA5 << 16)
    ins = vector(vop, a=a, b=3, d=d, length=n, flags=flags | FLAG_SCALAR_B, imm=imm)
    return memory, ins, values


def _expected_steps(lanes, vop, flags, g, lane0, n):
    """The engine's steps: min(lanes, left, left in a's group, left in d's group)."""
    ga = g if flags & SA else (32 if vop == VectorOp.CVT16TO32.value else 16)
    gd = g if flags & SD else (32 if vop == VectorOp.CVT32TO16.value else 16)
    steps, left, ja, jd = 0, n, 0, 0
    while left:
        k = min(lanes, left, ga - ja, gd - jd)
        ja, jd, left, steps = (ja + k) % ga, (jd + k) % gd, left - k, steps + 1
    return steps


@pytest.mark.parametrize("lanes", [4, 8])
def test_strided_bit_exact_and_timing(lanes):
    """Every case on the VectorEngine (one batch each: the whole scratchpad random, the
    operand's elements written with sensible values): all 256 words equal the golden
    interpreter's; the steps are pipelined: a strided instruction of ``s`` steps takes
    what a dense unary one of ``s`` chunks takes (1 + latency + 1 + (s - 1) x the
    VectorUnit's steps per op: 1 clock per step for copies and conversions, 22 for EXP)."""
    rng = np.random.default_rng(100 + lanes)
    batches, golden_memories = [], []
    for case in CASES:
        memory, ins, _ = _case_batch(rng, case)
        # one dense unary instruction of one chunk first: the per-instruction overhead
        dense = vector(case[1], a=SPW - 1, d=SPW - 1, length=1)
        after_dense = dict(memory)
        execute_instruction(after_dense, dense, lanes)
        want = dict(after_dense)
        execute_instruction(want, ins, lanes)
        batches.append((memory, [dense, ins]))
        golden_memories.append(want)
    results = run_engine(tiny_config(lanes=lanes), batches)
    for case, (words, clocks), want in zip(CASES, results, golden_memories):
        name, vop, flags, g, lane0, n, a, d = case
        bad = [addr for addr in range(SPW) if words[addr] != want[addr]]
        assert not bad, (f"{name}: {len(bad)} words differ, first {bad[0]}: "
                         f"{words[bad[0]]:#x}, golden {want[bad[0]]:#x}")
        steps = _expected_steps(lanes, vop, flags, g, lane0, n)
        assert clocks[0] == engine_clocks(lanes, vop, 0, 1), (name, clocks)   # dense chunk
        assert clocks[1] == engine_clocks(lanes, vop, flags, n, steps), (name, clocks, steps)
        if vop in (COPY, VectorOp.CVT16TO32.value, VectorOp.CVT32TO16.value):
            assert clocks[1] == steps + 3                  # 1 clock per step + 3
        if vop == VectorOp.EXP.value:
            assert clocks[1] == 25 + 22 * (steps - 1)


def step_serial(memory, ins, lanes):
    """The engine's order for a strided instruction, step by step: each step (the
    elements of ``_expected_steps``) reads its elements of ``a``, then writes its results
    to ``d`` before the next step reads. Equals ``execute_instruction`` (whose chunks
    read ``lanes`` elements before writing) unless ``d`` overlaps ``a`` in another
    layout (undefined by the ISA; the RTL keeps this order)."""
    sa, sd, g, lane0 = strided_params(ins)
    vop, n, a, d = ins["vop"], ins["length"], ins["a"], ins["d"]
    in16, out16 = vop == VectorOp.CVT16TO32.value, vop == VectorOp.CVT32TO16.value
    ga = g if sa else (32 if in16 else 16)
    gd = g if sd else (32 if out16 else 16)
    la, ld = (lane0 if sa else 0), (lane0 if sd else 0)
    done, ja, jd, wa, wd = 0, 0, 0, 0, 0
    while done < n:
        k = min(lanes, n - done, ga - ja, gd - jd)
        part = np.array([_get(memory, a + wa, la + ja + t, 16 if in16 else 32)
                         for t in range(k)], np.uint32)
        out = golden.execute(vop, part, np.zeros(k, np.uint32))
        for t in range(k):
            _put(memory, d + wd, ld + jd + t, int(out[t]), 16 if out16 else 32)
        done += k
        ja, jd = ja + k, jd + k
        if ja >= ga:
            ja, wa = 0, wa + 1
        if jd >= gd:
            jd, wd = 0, wd + 1


#: (name, vop, flags, group, lane0, n, a, d, golden): consecutive elements scattered into
#: one word's lanes (several steps write the same word), in-place strided ops, and
#: overlaps in different layouts (``golden`` False: checked against ``step_serial`` only:
#: a later step reads lanes an earlier step wrote, so the read waits for the write)
STRIDED_HAZARDS = [
    ("scatter CVT32TO16 g8 l0", VectorOp.CVT32TO16.value, SD, 8, 0, 30, 0, 10, True),
    ("scatter copy g8 l4", COPY, SD, 8, 4, 30, 20, 30, True),
    ("scatter CVT32TO16 g32 l0 in place", VectorOp.CVT32TO16.value, SD, 32, 0, 40, 40, 40, True),
    ("scatter EXP g8 l8", VectorOp.EXP.value, SD, 8, 8, 10, 50, 55, True),
    ("gather CVT16TO32 g8 l16", VectorOp.CVT16TO32.value, SA, 8, 16, 30, 60, 70, True),
    ("copy both in place g3 l5", 13, SA | SD, 3, 5, 20, 80, 80, True),
    ("CVT32TO16 both in place g8 l0", VectorOp.CVT32TO16.value, SA | SD, 8, 0, 30, 90, 90, True),
    ("scatter copy g1 l7", COPY, SD, 1, 7, 20, 100, 110, True),
    ("copy dense a -> scatter g1 l1 over a", COPY, SD, 1, 1, 20, 140, 140, False),
    ("EXP gather g2 -> dense d = a + 1", VectorOp.EXP.value, SA, 2, 0, 10, 170, 171, False),
    ("CVT32TO16 dense a -> scatter g1 l2 over a", VectorOp.CVT32TO16.value, SD, 1, 2, 20, 190,
     190, False),
]


@pytest.mark.parametrize("lanes", [4, 8])
def test_strided_hazards_withheld_grants(lanes):
    """STRIDED_HAZARDS on random scratchpads with the engine's read and write grants
    withheld at random (35 % of the clocks each): every word bit-exact with
    ``execute_instruction`` (and ``step_serial``, which equals it there), or with
    ``step_serial`` for the overlaps in different layouts (which differ from
    ``execute_instruction``'s chunk order, so that the test sees a missing wait)."""
    rng = np.random.default_rng(300 + lanes)
    batches, wants = [], []
    for name, vop, flags, g, lane0, n, a, d, use_golden in STRIDED_HAZARDS:
        in16 = vop == VectorOp.CVT16TO32.value
        memory = _random_memory(rng)
        _store_operand(memory, a, _values(rng, vop, n, in16), in16, bool(flags & SA), g, lane0)
        ins = vector(vop, a=a, b=0, d=d, length=n, flags=flags, imm=strided_imm(g, lane0))
        serial = dict(memory)
        step_serial(serial, ins, lanes)
        chunked = dict(memory)
        execute_instruction(chunked, ins, lanes)
        if use_golden:
            assert serial == chunked, name
        else:
            assert serial != chunked, f"{name}: not an overlap the chunk order sees"
        batches.append((memory, [ins]))
        wants.append(serial)
    results = run_engine(tiny_config(lanes=lanes), batches, hold=(0.35, lanes))
    for case, (words, clocks), want in zip(STRIDED_HAZARDS, results, wants):
        bad = [addr for addr in range(SPW) if words[addr] != want[addr]]
        assert not bad, (f"{case[0]}: {len(bad)} words differ, first {bad[0]}: "
                         f"{words[bad[0]]:#x}, want {want[bad[0]]:#x}")


def test_golden_strided_against_direct_formulation():
    """The golden interpreter's strided results, formulated directly: the scatter writes
    only lane 7 (FP16) of each word, the gather reads the first 8 FP16 of each word,
    the copies move whole FP32 elements, EXP with both flags maps lanes 2..5."""
    rng = np.random.default_rng(5)
    # scatter CVT32TO16 g=1 lane0=7, 20 elements
    memory, ins, x = _case_batch(rng, CASES[0])
    before = dict(memory)
    execute_instruction(memory, ins, 4)
    want16 = golden.execute(VectorOp.CVT32TO16, x)
    for i in range(20):
        word, old = memory[100 + i], before[100 + i]
        assert _get(memory, 100 + i, 7, 16) == want16[i] & 0xFFFF
        keep = WORD ^ (0xFFFF << 112)
        assert word & keep == old & keep, f"word {100 + i}: other lanes changed"
    assert {a: w for a, w in memory.items() if not 100 <= a < 120} == \
        {a: w for a, w in before.items() if not 100 <= a < 120}
    # gather CVT16TO32 g=8 lane0=0, 29 elements
    memory, ins, x = _case_batch(rng, CASES[1])
    x16 = [_get(memory, 10 + i // 8, i % 8, 16) for i in range(29)]
    assert x16 == [int(v) for v in x]
    execute_instruction(memory, ins, 4)
    got = [_get(memory, 130 + i // 16, i % 16, 32) for i in range(29)]
    assert got == [int(v) for v in golden.execute(VectorOp.CVT16TO32, np.array(x16))]
    # copies: gather g=1 lane0=0, scatter g=1 lane0=3
    memory, ins, x = _case_batch(rng, CASES[2])
    execute_instruction(memory, ins, 4)
    assert [_get(memory, 140 + i // 16, i % 16, 32) for i in range(13)] == [int(v) for v in x]
    memory, ins, x = _case_batch(rng, CASES[3])
    execute_instruction(memory, ins, 4)
    assert [_get(memory, 150 + i, 3, 32) for i in range(13)] == [int(v) for v in x]
    # EXP, both strided, g=4 lane0=2
    memory, ins, x = _case_batch(rng, CASES[4])
    execute_instruction(memory, ins, 4)
    got = [_get(memory, 170 + i // 4, 2 + i % 4, 32) for i in range(18)]
    assert got == [int(v) for v in golden.execute(VectorOp.EXP, x)]
    assert strided_imm(4, 2) == 0x204 and strided_params(ins) == (True, True, 4, 2)


#: (instruction, why) the NPU rejects with BAD_SHAPE and the golden with ValueError
ILLEGAL = [
    (vector(VectorOp.ADD.value, a=0, b=8, d=16, length=4, flags=SA, imm=strided_imm(1, 0)),
     "binary op, strided a"),
    (vector(VectorOp.MUL.value, a=0, b=8, d=16, length=4, flags=SD | FLAG_IMM_B,
            imm=strided_imm(1, 0)), "binary op, strided d"),
    (vector(VectorOp.SUM.value, a=0, d=16, length=4, flags=SA, imm=strided_imm(2, 0)),
     "reduction"),
    (vector(VectorOp.EXP.value, a=0, d=16, length=4, flags=SA, imm=strided_imm(0, 0)),
     "g = 0"),
    (vector(VectorOp.CVT32TO16.value, a=0, d=16, length=4, flags=SD, imm=strided_imm(0, 3)),
     "g = 0, strided d"),
    (vector(VectorOp.EXP.value, a=0, d=16, length=4, flags=SD, imm=strided_imm(4, 13)),
     "lane0 + g = 17 > 16 FP32"),
    (vector(COPY, a=0, d=16, length=4, flags=SA, imm=strided_imm(17, 0)), "g = 17 > 16"),
    (vector(VectorOp.CVT16TO32.value, a=0, d=16, length=4, flags=SA, imm=strided_imm(3, 30)),
     "lane0 + g = 33 > 32 FP16"),
    (vector(VectorOp.CVT16TO32.value, a=0, d=16, length=4, flags=SA | SD,
            imm=strided_imm(8, 12)), "both: fits FP16 a, not FP32 d"),
    (vector(VectorOp.GELU.value, a=0, d=16, length=0, flags=SA, imm=strided_imm(0, 0)),
     "g = 0 with length 0"),
    (vector(COPY, a=0, d=16, length=4, flags=SD, imm=strided_imm(200, 0)),
     "g = 200 (the 8-bit field) > 16"),
    (vector(VectorOp.CVT32TO16.value, a=0, d=16, length=4, flags=SD,
            imm=strided_imm(60, 200)), "lane0 + g = 260: past 8 bits, not wrapped"),
]

#: legal boundary cases (lane0 + g == elements per word), same words as ILLEGAL
LEGAL = [
    vector(VectorOp.CVT16TO32.value, a=0, d=16, length=5, flags=SA, imm=strided_imm(3, 29)),
    vector(VectorOp.EXP.value, a=0, d=16, length=6, flags=SD, imm=strided_imm(4, 12)),
    vector(VectorOp.CVT32TO16.value, a=0, d=16, length=40, flags=SA | SD,
           imm=strided_imm(16, 0)),
    vector(14, a=0, d=16, length=3, flags=SA | SD, imm=strided_imm(1, 15)),
]


def test_golden_rejects_illegal_strided():
    for ins, why in ILLEGAL:
        with pytest.raises(ValueError):
            execute_instruction({}, ins, 4)
    for ins in LEGAL:
        execute_instruction({}, ins, 4)


def run_core(config, batches):
    """NpuCore with its VectorEngine; ``batches``: [(preload, program)]; per batch
    (error code, error pc, every scratchpad word)."""
    dut = NpuCore(config, vector_engine=True)
    results = []

    async def bench(ctx):
        for preload, program in batches:
            await _write_words(ctx, dut.ext_write, preload)
            await load_and_start(ctx, dut, program)
            cycles = 0
            while not ctx.get(dut.done):
                await ctx.tick()
                cycles += 1
                assert cycles < 20000
            words = await _read_words(ctx, dut.ext_read, range(SPW))
            results.append((NpuError(ctx.get(dut.error_code)), ctx.get(dut.error_pc), words))

    sim = Simulator(dut)
    sim.add_clock(1e-9)
    sim.add_testbench(bench)
    sim.run()
    return results


def test_core_strided_and_illegal():
    """On NpuCore (tiny, 4 lanes): a program of strided instructions (the brief's cases
    and the legal boundary cases) runs bit-exact; each illegal instruction, after a legal
    strided one, stops the core with BAD_SHAPE at its pc, after the legal one ran."""
    config = tiny_config()
    rng = np.random.default_rng(21)
    batches, wants, expect = [], [], []
    memory = _random_memory(rng)
    program = []
    for case in CASES[:5]:
        m2, ins, _ = _case_batch(rng, case)
        name, vop, flags, g, lane0, n, a, d = case
        in16 = vop == VectorOp.CVT16TO32.value
        words = -(-n // g) if flags & SA else -(-n // (32 if in16 else 16))
        memory.update({a + w: m2[a + w] for w in range(words)})
        program.append(ins)
    program += LEGAL + [halt()]
    want = dict(memory)
    for ins in program[:-1]:
        execute_instruction(want, ins, 4)
    batches.append((memory, program))
    wants.append(want)
    expect.append((NpuError.NONE, 0))
    legal = vector(VectorOp.EXP.value, a=0, d=16, length=4, flags=SD, imm=strided_imm(1, 9))
    for ins, why in ILLEGAL:
        memory = _random_memory(rng)
        want = dict(memory)
        execute_instruction(want, legal, 4)
        batches.append((memory, [legal, ins, halt()]))
        wants.append(want)
        expect.append((NpuError.BAD_SHAPE, 1))
    results = run_core(config, batches)
    for i, ((code, pc, words), want, (want_code, want_pc)) in enumerate(
            zip(results, wants, expect)):
        label = "strided program" if i == 0 else ILLEGAL[i - 1][1]
        assert (code, pc) == (want_code, want_pc), f"{label}: {code.name} at pc {pc}"
        bad = [a for a in range(SPW) if words[a] != want[a]]
        assert not bad, f"{label}: {len(bad)} words differ, first {bad[0]}"
