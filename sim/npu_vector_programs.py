"""VECTOR programs for the NPU core (``rtl.npu.vector_engine``) and their golden results.

Builders (:func:`softmax_program`, :func:`layernorm_program`, :func:`residual_add_program`,
:func:`gelu_program`) emit VECTOR instructions over scratchpad vectors (the engine's
data format: FP32 16 per word, FP16 32 per word for 64-byte words, ``word_bytes / 4``
and ``word_bytes / 2`` for wider ones (``NpuConfig.word_bytes``, the keyword
``word_bytes`` of every function here), element 0 in the low bits) and return
a :class:`VectorJob`: the program, the scratchpad words to preload, where the result
lies and the expected result. :func:`run_golden` interprets VECTOR instructions on a
word dictionary with :func:`sim.golden.vector.execute`, chunk by chunk exactly as the
engine runs them (reductions: chunks accumulated in order, padded with +0 / -inf,
then one lane tree; strided gather / scatter operands, ``FLAG_STRIDED_A`` /
``FLAG_STRIDED_D``, with the engine's semantics), so its result is the RTL's bit for
bit; :func:`execute_instruction` raises ValueError for an instruction the NPU rejects
with an error code (strided flags on a non-unary op, a bad group / first lane). The
jobs' ``expected`` is
computed with it and equals the compositions ``sim.golden.vector.softmax`` /
``layernorm`` / ``residual_add`` / ``gelu`` (``tests/test_vector_engine.py`` checks
both)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from rtl.isa.npu import Instruction, NpuOp, halt, vector
from rtl.npu.vector import VectorOp
from rtl.npu.vector_engine import FLAG_IMM_B, FLAG_SCALAR_B, FLAG_STRIDED_A, FLAG_STRIDED_D

from .golden import vector as golden

__all__ = ["VectorJob", "pack_vector", "unpack_vector", "vector_words", "run_golden",
           "execute_instruction", "strided_params",
           "softmax_program", "layernorm_program", "residual_add_program", "gelu_program",
           "f32_bits", "FP32_PER_WORD", "FP16_PER_WORD"]

FP32_PER_WORD = 16        # for the default 64-byte word
FP16_PER_WORD = 32
WORD_BITS = 512
WORD_BYTES = 64
_BINARY = {VectorOp.ADD, VectorOp.SUB, VectorOp.MUL, VectorOp.MAX}


def _v(op: VectorOp, **fields) -> Instruction:
    return vector(op.value, **fields)


def f32_bits(value: float) -> int:
    return int(np.array([value], dtype=np.float32).view(np.uint32)[0])


def _per(fp16: bool, word_bytes: int = WORD_BYTES) -> int:
    """Elements per word: FP16 (``fp16``) or FP32."""
    return word_bytes // 2 if fp16 else word_bytes // 4


def vector_words(n: int, fp16: bool = False, word_bytes: int = WORD_BYTES) -> int:
    return max(1, -(-n // _per(fp16, word_bytes)))


def pack_vector(values, fp16: bool = False, word_bytes: int = WORD_BYTES) -> list[int]:
    """Words holding ``values`` (uint32 FP32 bits, or uint16 FP16 bits with ``fp16``)."""
    values = np.asarray(values).astype(np.uint16 if fp16 else np.uint32)
    per, bits = _per(fp16, word_bytes), (16 if fp16 else 32)
    words = []
    for w in range(vector_words(len(values), fp16, word_bytes)):
        word = 0
        for k, v in enumerate(values[w * per:(w + 1) * per]):
            word |= int(v) << (bits * k)
        words.append(word)
    return words


def unpack_vector(words, n: int, fp16: bool = False, word_bytes: int = WORD_BYTES) -> np.ndarray:
    per, bits = _per(fp16, word_bytes), (16 if fp16 else 32)
    mask = (1 << bits) - 1
    out = [(int(words[i // per]) >> (bits * (i % per))) & mask for i in range(n)]
    return np.array(out, dtype=np.uint16 if fp16 else np.uint32)


# ---------------------------------------------------------------------------
# Golden interpreter of VECTOR instructions
# ---------------------------------------------------------------------------

def _read(memory, base, i, fp16, word_bytes=WORD_BYTES):
    per, bits = _per(fp16, word_bytes), (16 if fp16 else 32)
    return (memory.get(base + i // per, 0) >> (bits * (i % per))) & ((1 << bits) - 1)


def _write(memory, base, i, value, fp16, word_bytes=WORD_BYTES):
    per, bits = _per(fp16, word_bytes), (16 if fp16 else 32)
    mask = (1 << bits) - 1
    addr, shift = base + i // per, bits * (i % per)
    memory[addr] = (memory.get(addr, 0) & ~(mask << shift)) | ((int(value) & mask) << shift)


_UNARY_FIRST = VectorOp.EXP.value    # EXP .. CVT32TO16 and the copies 12..15


def strided_params(ins: Instruction, word_bytes: int = WORD_BYTES):
    """``(strided_a, strided_d, group, lane0)`` of a VECTOR instruction; ValueError
    where the NPU stops with BAD_SHAPE (strided flags on a binary op or a reduction,
    ``group == 0`` or ``lane0 + group`` beyond a strided operand's elements per word)."""
    vop, flags, imm = ins["vop"], ins["flags"], ins["imm"]
    sa, sd = bool(flags & FLAG_STRIDED_A), bool(flags & FLAG_STRIDED_D)
    group, lane0 = imm & 0xFF, (imm >> 8) & 0xFF
    if not (sa or sd):
        return False, False, group, lane0
    if vop < _UNARY_FIRST:
        raise ValueError(f"strided operands need a unary op, not vop {vop}")
    for on, fp16 in ((sa, vop == VectorOp.CVT16TO32.value),
                     (sd, vop == VectorOp.CVT32TO16.value)):
        per = _per(fp16, word_bytes)
        if on and (group == 0 or lane0 + group > per):
            raise ValueError(f"strided group {group}, lane0 {lane0}: needs 1 <= group and "
                             f"lane0 + group <= {per}")
    return sa, sd, group, lane0


def _place(i, fp16, strided, group, lane0, word_bytes=WORD_BYTES):
    """(word offset, element lane) of element ``i``."""
    if strided:
        return i // group, lane0 + i % group
    per = _per(fp16, word_bytes)
    return i // per, i % per


def _read_lane(memory, addr, lane, fp16):
    bits = 16 if fp16 else 32
    return (memory.get(addr, 0) >> (bits * lane)) & ((1 << bits) - 1)


def _write_lane(memory, addr, lane, value, fp16):
    bits = 16 if fp16 else 32
    mask, shift = (1 << bits) - 1, bits * lane
    memory[addr] = (memory.get(addr, 0) & ~(mask << shift)) | ((int(value) & mask) << shift)


def _execute_strided(memory, ins, lanes, sa, sd, group, lane0, word_bytes=WORD_BYTES):
    """A unary op with strided ``a`` and / or ``d``: element-wise, so chunking is
    irrelevant to the values; each chunk is read before it is written."""
    vop, n, a, d = ins["vop"], ins["length"], ins["a"], ins["d"]
    in16, out16 = vop == VectorOp.CVT16TO32.value, vop == VectorOp.CVT32TO16.value
    for c in range(-(-n // lanes)):
        idx = range(c * lanes, min(n, (c + 1) * lanes))
        part = []
        for i in idx:
            w, lane = _place(i, in16, sa, group, lane0, word_bytes)
            part.append(_read_lane(memory, a + w, lane, in16))
        out = golden.execute(vop, np.array(part, np.uint32), np.zeros(len(part), np.uint32))
        for i, value in zip(idx, out):
            w, lane = _place(i, out16, sd, group, lane0, word_bytes)
            _write_lane(memory, d + w, lane, value, out16)


def execute_instruction(memory: dict, ins: Instruction, lanes: int,
                        word_bytes: int = WORD_BYTES) -> None:
    """Run one VECTOR instruction on ``memory`` ({word address: int}, words of
    ``word_bytes``) in place.
    ValueError: an instruction the NPU rejects (see :func:`strided_params`)."""
    vop, flags, n = ins["vop"], ins["flags"], ins["length"]
    a, b, d, imm = ins["a"], ins["b"], ins["d"], ins["imm"]
    sa, sd, group, lane0 = strided_params(ins, word_bytes)
    if n == 0:
        return
    if sa or sd:
        _execute_strided(memory, ins, lanes, sa, sd, group, lane0, word_bytes)
        return
    wb = word_bytes
    try:
        op = VectorOp(vop)
    except ValueError:
        op = None
    in16, out16 = op is VectorOp.CVT16TO32, op is VectorOp.CVT32TO16
    imm_b = bool(flags & FLAG_IMM_B)
    scalar_b = bool(flags & FLAG_SCALAR_B) and not imm_b
    chunks = -(-n // lanes)
    if op in (VectorOp.SUM, VectorOp.RMAX):
        pad = 0xFF800000 if op is VectorOp.RMAX else 0
        acc_op = VectorOp.MAX if op is VectorOp.RMAX else VectorOp.ADD
        acc = None
        for c in range(chunks):
            part = np.array([_read(memory, a, c * lanes + k, False, wb) if c * lanes + k < n
                             else pad for k in range(lanes)], dtype=np.uint32)
            acc = part if acc is None else golden.execute(acc_op, acc, part)
        result = golden.execute(op, acc)
        _write(memory, d, 0, result[0], False, wb)
        return
    for c in range(chunks):
        idx = [c * lanes + k for k in range(lanes)]
        part = np.array([_read(memory, a, i, in16, wb) if i < n else 0 for i in idx], np.uint32)
        if op in _BINARY and imm_b:
            bv, sb = np.full(lanes, imm, np.uint32), True
        elif op in _BINARY and scalar_b:
            bv, sb = np.full(lanes, _read(memory, b, 0, False, wb), np.uint32), True
        elif op in _BINARY:
            bv = np.array([_read(memory, b, i, False, wb) if i < n else 0 for i in idx],
                          np.uint32)
            sb = False
        else:
            bv, sb = np.zeros(lanes, np.uint32), False
        out = golden.execute(vop, part, bv, sb)
        for k, i in enumerate(idx):
            if i < n:
                _write(memory, d, i, out[k], out16, wb)


def run_golden(program, memory: dict, lanes: int, word_bytes: int = WORD_BYTES) -> dict:
    """A copy of ``memory`` after the VECTOR instructions of ``program`` (others skipped)."""
    memory = dict(memory)
    for ins in program:
        if isinstance(ins, Instruction) and ins.op is NpuOp.VECTOR:
            execute_instruction(memory, ins, lanes, word_bytes)
    return memory


# ---------------------------------------------------------------------------
# Program builders
# ---------------------------------------------------------------------------

@dataclass
class VectorJob:
    """A VECTOR program with its data: ``preload`` {word: int} to write into the
    scratchpad first, the result at word ``out`` (``n`` elements, FP16 with ``fp16``),
    ``expected`` (uint32 / uint16 bits, from :func:`run_golden`) and ``reference`` (the
    ``sim.golden.vector`` composition's result); words of ``word_bytes``."""
    program: list
    preload: dict
    out: int
    n: int
    fp16: bool
    lanes: int
    expected: np.ndarray = field(default=None)
    reference: np.ndarray = field(default=None)
    words_used: int = 0
    word_bytes: int = WORD_BYTES

    def result(self, memory_words) -> np.ndarray:
        """The result from the words [out, out + vector_words(n)) in order."""
        return unpack_vector(list(memory_words), self.n, self.fp16, self.word_bytes)

    @property
    def out_words(self) -> range:
        return range(self.out, self.out + vector_words(self.n, self.fp16, self.word_bytes))


class _Alloc:
    def __init__(self, base, word_bytes=WORD_BYTES):
        self.next = base
        self.word_bytes = word_bytes

    def take(self, n, fp16=False):
        addr = self.next
        self.next += vector_words(n, fp16, self.word_bytes)
        return addr


def _finish(job: VectorJob, alloc: _Alloc, reference, with_halt: bool) -> VectorJob:
    if with_halt:
        job.program.append(halt())
    job.word_bytes = alloc.word_bytes
    memory = run_golden(job.program, job.preload, job.lanes, job.word_bytes)
    job.expected = unpack_vector([memory.get(a, 0) for a in job.out_words], job.n, job.fp16,
                                 job.word_bytes)
    job.reference = reference
    job.words_used = alloc.next
    return job


def softmax_program(x, lanes: int, base: int = 0, fp16: bool = False,
                    with_halt: bool = True, word_bytes: int = WORD_BYTES) -> VectorJob:
    """Softmax of ``x`` (FP32 bits, or FP16 bits with ``fp16``) stored at ``base``:
    [CVT16TO32], RMAX -> m; SUB x - m (scalar b); EXP; SUM -> s; RECIP s -> r;
    MUL e * r (scalar b) [, CVT32TO16]. Words from ``base`` on are used."""
    n = len(x)
    al = _Alloc(base, word_bytes)
    xa = al.take(n, fp16)
    preload = {xa + i: w for i, w in enumerate(pack_vector(x, fp16, word_bytes))}
    prog = []
    if fp16:
        x32 = al.take(n)
        prog.append(_v(VectorOp.CVT16TO32, a=xa, d=x32, length=n))
    else:
        x32 = xa
    mx, e, s, r = al.take(1), al.take(n), al.take(1), al.take(1)
    prog += [_v(VectorOp.RMAX, a=x32, d=mx, length=n),
             _v(VectorOp.SUB, a=x32, b=mx, d=e, length=n, flags=FLAG_SCALAR_B),
             _v(VectorOp.EXP, a=e, d=e, length=n),
             _v(VectorOp.SUM, a=e, d=s, length=n),
             _v(VectorOp.RECIP, a=s, d=r, length=1)]
    y = al.take(n)
    prog.append(_v(VectorOp.MUL, a=e, b=r, d=y, length=n, flags=FLAG_SCALAR_B))
    out = y
    if fp16:
        out = al.take(n, True)
        prog.append(_v(VectorOp.CVT32TO16, a=y, d=out, length=n))
    job = VectorJob(prog, preload, out, n, fp16, lanes)
    return _finish(job, al, golden.softmax(x, lanes, fp16), with_halt)


def layernorm_ops(x: int, gamma: int, beta: int, y: int, t: int, dv: int, sq: int, n: int,
                  eps: float) -> list[Instruction]:
    """LayerNorm as VECTOR instructions on FP32 vectors at the given words:
    ``x`` (n), ``gamma``, ``beta`` -> ``y``; scratch ``t`` (1 word), ``dv``, ``sq`` (n)."""
    inv_n, eps_bits = f32_bits(1.0 / n), f32_bits(eps)
    return [_v(VectorOp.SUM, a=x, d=t, length=n),
            _v(VectorOp.MUL, a=t, d=t, length=1, imm=inv_n, flags=FLAG_IMM_B),
            _v(VectorOp.SUB, a=x, b=t, d=dv, length=n, flags=FLAG_SCALAR_B),
            _v(VectorOp.MUL, a=dv, b=dv, d=sq, length=n),
            _v(VectorOp.SUM, a=sq, d=t, length=n),
            _v(VectorOp.MUL, a=t, d=t, length=1, imm=inv_n, flags=FLAG_IMM_B),
            _v(VectorOp.ADD, a=t, d=t, length=1, imm=eps_bits, flags=FLAG_IMM_B),
            _v(VectorOp.RSQRT, a=t, d=t, length=1),
            _v(VectorOp.MUL, a=dv, b=t, d=y, length=n, flags=FLAG_SCALAR_B),
            _v(VectorOp.MUL, a=y, b=gamma, d=y, length=n),
            _v(VectorOp.ADD, a=y, b=beta, d=y, length=n)]


def layernorm_program(x, gamma, beta, eps: float, lanes: int, base: int = 0,
                      with_halt: bool = True, word_bytes: int = WORD_BYTES) -> VectorJob:
    """LayerNorm of FP32 ``x`` with ``gamma``, ``beta``: SUM -> t; MUL t * (1/n) (imm) ->
    mean; SUB x - mean (scalar) -> dv; MUL dv * dv; SUM -> q; MUL q * (1/n) (imm);
    ADD + eps (imm); RSQRT -> r; MUL dv * r (scalar); MUL * gamma; ADD + beta."""
    n = len(x)
    al = _Alloc(base, word_bytes)
    xa, ga, ba = al.take(n), al.take(n), al.take(n)
    preload = {}
    for addr, values in ((xa, x), (ga, gamma), (ba, beta)):
        preload.update({addr + i: w for i, w in enumerate(pack_vector(values, False,
                                                                      word_bytes))})
    t, dv, sq, y = al.take(1), al.take(n), al.take(n), al.take(n)
    prog = layernorm_ops(xa, ga, ba, y, t, dv, sq, n, eps)
    job = VectorJob(prog, preload, y, n, False, lanes)
    return _finish(job, al, golden.layernorm(x, gamma, beta, eps, lanes), with_halt)


def residual_add_program(x, y, lanes: int, base: int = 0, fp16: bool = False,
                         with_halt: bool = True, word_bytes: int = WORD_BYTES) -> VectorJob:
    """x + y (FP32; with ``fp16``: CVT16TO32 both, ADD, CVT32TO16)."""
    n = len(x)
    al = _Alloc(base, word_bytes)
    xa, ya = al.take(n, fp16), al.take(n, fp16)
    preload = {}
    for addr, values in ((xa, x), (ya, y)):
        preload.update({addr + i: w for i, w in enumerate(pack_vector(values, fp16,
                                                                      word_bytes))})
    if fp16:
        x32, y32, s = al.take(n), al.take(n), al.take(n)
        out = al.take(n, True)
        prog = [_v(VectorOp.CVT16TO32, a=xa, d=x32, length=n),
                _v(VectorOp.CVT16TO32, a=ya, d=y32, length=n),
                _v(VectorOp.ADD, a=x32, b=y32, d=s, length=n),
                _v(VectorOp.CVT32TO16, a=s, d=out, length=n)]
    else:
        out = al.take(n)
        prog = [_v(VectorOp.ADD, a=xa, b=ya, d=out, length=n)]
    job = VectorJob(prog, preload, out, n, fp16, lanes)
    return _finish(job, al, golden.residual_add(x, y, lanes, fp16), with_halt)


def gelu_program(x, lanes: int, base: int = 0, with_halt: bool = True,
                 word_bytes: int = WORD_BYTES) -> VectorJob:
    """GELU (tanh form) of FP32 ``x``, element-wise."""
    n = len(x)
    al = _Alloc(base, word_bytes)
    xa = al.take(n)
    preload = {xa + i: w for i, w in enumerate(pack_vector(x, False, word_bytes))}
    out = al.take(n)
    job = VectorJob([_v(VectorOp.GELU, a=xa, d=out, length=n)], preload, out, n, False,
                    lanes)
    return _finish(job, al, golden.gelu(np.asarray(x, dtype=np.uint32)), with_halt)
