"""One GPT-style decoder block on the NPU core, from weights in HBM, and its golden.

The block (``M`` token rows, model width ``d``, FFN width ``f``)::

    h   = LayerNorm1(x)                      VECTOR, per row (FP32)
    h16 = CVT32TO16(h)                       VECTOR, whole matrix
    qkv = h16 . W_qkv            [M x 3d]    GEMM, FP16 out
    v   = qkv[:, 2d:3d]                      (no copy: GEMM A operand at word offset)
    o   = v . W_o                [M x d]     GEMM, FP32 out
    r1  = x + o                              VECTOR ADD (residual)
    h2  = LayerNorm2(r1)                     VECTOR, per row
    h2h = CVT32TO16(h2)
    f1  = h2h . W_1              [M x f]     GEMM, FP32 out
    g   = GELU(f1)                           VECTOR (tanh form), whole matrix
    g16 = CVT32TO16(g)
    f2  = g16 . W_2              [M x d]     GEMM, FP32 out
    y   = r1 + f2                            VECTOR ADD (residual) -> DMA_STORE (FP32)

Attention itself (softmax(Q K^T) V) is the PIM's job (NeuPIMs) and out of scope here:
the output projection takes the V part of the QKV GEMM's result directly as its input
(as if every token attended only to itself: softmax weight 1 on its own V row). Q and K
are still computed (the QKV GEMM is the full [d x 3d] one) but not used further.

Data: x, the LayerNorm parameters and the output are FP32 (16 per word); weights and the
GEMM inputs FP16 (32 per word), rows ``ceil(cols / 32)`` words apart. ``d`` must be a
multiple of 32 (so a flattened FP16 matrix is row-major with pitch ``d / 32`` and the
element-wise VECTOR ops can run over a whole matrix in one instruction) and ``f`` a
multiple of 32.

Default sizes (:data:`DEFAULT_SHAPE`): M = 4, d = 32, f = 128 (FFN ratio 4 as in GPT).
``tiny-gpt`` (d 64, f 256) does not fit the ``small`` preset's 1024-word scratchpad: its
four weight matrices alone are 384 + 128 + 512 + 512 = 1536 words. The default block
uses 384 weight words + 137 words of activations (521 of 1024) and 408 HBM bursts
(more than the one-channel ``small`` preset stores in its RTL rows, 256: the Amaranth
test uses a behavioural memory; two channels store 512).

:func:`golden_decoder_block` computes the block with ``sim.golden.gemm.gemm`` and the
``sim.golden.vector`` compositions in the program's order of operations (bit-exact with
the RTL); :func:`interpret` runs the program's instructions on a Python scratchpad (DMA
copies, GEMM by ``sim.golden.gemm``, VECTOR by ``sim.npu_vector_programs``'s chunked
interpreter) as an independent check of the program; :func:`reference_float64` is the
block in float64 (weights as given, no intermediate rounding).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from rtl.config import ConfigError
from rtl.isa.npu import (Instruction, NpuOp, dma_load, dma_store, gemm, halt, vector,
                         wait)
from rtl.npu.vector import VectorOp
from sim.golden import vector as golden
from sim.golden.gemm import gemm as golden_gemm
from sim.npu_programs import HbmImage, matrix_words, stored_bursts, words_to_matrix
from sim.npu_vector_programs import execute_instruction, layernorm_ops

__all__ = ["DecoderShape", "DecoderWeights", "DecoderProgram", "DEFAULT_SHAPE",
           "random_weights", "decoder_program", "golden_decoder_block", "interpret",
           "reference_float64", "layernorm_ops", "execute_npu", "EPS"]

EPS = 1e-5
FP32_PER_WORD = 16
FP16_PER_WORD = 32


@dataclass(frozen=True)
class DecoderShape:
    tokens: int = 4      # M
    d_model: int = 32    # d
    ffn: int = 128       # f

    def __post_init__(self):
        if self.d_model % FP16_PER_WORD or self.ffn % FP16_PER_WORD:
            raise ValueError("d_model and ffn must be multiples of 32 (FP16 per word)")
        if self.tokens < 1:
            raise ValueError("tokens must be >= 1")


DEFAULT_SHAPE = DecoderShape()


@dataclass
class DecoderWeights:
    """Bit patterns: ``x`` [M, d] FP32 (uint32); ``w_qkv`` [d, 3d], ``w_o`` [d, d],
    ``w_1`` [d, f], ``w_2`` [f, d] FP16 (uint16); ``ln1_g``, ``ln1_b``, ``ln2_g``,
    ``ln2_b`` [d] FP32."""
    x: np.ndarray
    w_qkv: np.ndarray
    w_o: np.ndarray
    w_1: np.ndarray
    w_2: np.ndarray
    ln1_g: np.ndarray
    ln1_b: np.ndarray
    ln2_g: np.ndarray
    ln2_b: np.ndarray

    @property
    def shape(self) -> DecoderShape:
        m, d = self.x.shape
        return DecoderShape(m, d, self.w_1.shape[1])


def random_weights(shape: DecoderShape = DEFAULT_SHAPE, seed: int = 0) -> DecoderWeights:
    """GPT-like initialisation: x ~ N(0, 1), weights ~ N(0, 1/fan_in) in FP16, LayerNorm
    gamma ~ U(0.5, 1.5), beta ~ U(-0.5, 0.5)."""
    rng = np.random.default_rng(seed)
    m, d, f = shape.tokens, shape.d_model, shape.ffn

    def w(rows, cols):
        return (rng.standard_normal((rows, cols)) / math.sqrt(rows)).astype(np.float16).view(np.uint16)

    def f32(values):
        return np.asarray(values, dtype=np.float32).view(np.uint32)

    return DecoderWeights(
        x=f32(rng.standard_normal((m, d))), w_qkv=w(d, 3 * d), w_o=w(d, d), w_1=w(d, f),
        w_2=w(f, d), ln1_g=f32(rng.uniform(0.5, 1.5, d)), ln1_b=f32(rng.uniform(-0.5, 0.5, d)),
        ln2_g=f32(rng.uniform(0.5, 1.5, d)), ln2_b=f32(rng.uniform(-0.5, 0.5, d)))


# ---------------------------------------------------------------------------
# Golden and float64 reference
# ---------------------------------------------------------------------------

def _cvt32to16(bits) -> np.ndarray:
    return golden.execute(VectorOp.CVT32TO16, np.asarray(bits, np.uint32)).astype(np.uint16)


def golden_decoder_block(w: DecoderWeights, array_rows: int, array_cols: int, lanes: int,
                         eps: float = EPS, intermediates: bool = False):
    """The block's FP32 output bits [M, d] as the NPU computes it (same operations, same
    order, same roundings); with ``intermediates`` also a dict of every stage."""
    m, d = w.x.shape
    H, W = array_rows, array_cols
    h = np.stack([golden.layernorm(w.x[r], w.ln1_g, w.ln1_b, eps, lanes) for r in range(m)])
    h16 = _cvt32to16(h)
    _, qkv16 = golden_gemm(h16, w.w_qkv, H, W)
    v16 = qkv16[:, 2 * d:3 * d]
    o32, _ = golden_gemm(v16, w.w_o, H, W)
    r1 = golden.residual_add(w.x.ravel(), o32.ravel(), lanes).reshape(m, d)
    h2 = np.stack([golden.layernorm(r1[r], w.ln2_g, w.ln2_b, eps, lanes) for r in range(m)])
    h2_16 = _cvt32to16(h2)
    f1, _ = golden_gemm(h2_16, w.w_1, H, W)
    g = golden.gelu(f1)
    g16 = _cvt32to16(g)
    f2, _ = golden_gemm(g16, w.w_2, H, W)
    out = golden.residual_add(r1.ravel(), f2.ravel(), lanes).reshape(m, d)
    if intermediates:
        return out, dict(h=h, h16=h16, qkv16=qkv16, o=o32, r1=r1, h2=h2, h2_16=h2_16, f1=f1,
                         g=g, g16=g16, f2=f2, out=out)
    return out


def reference_float64(w: DecoderWeights, eps: float = EPS) -> np.ndarray:
    """The block in float64 from the same FP32 / FP16 inputs, no intermediate rounding
    (tanh GELU, LayerNorm with the population variance and float32(eps))."""
    f64 = lambda bits: bits.view(np.float32).astype(np.float64)  # noqa: E731
    h16 = lambda bits: bits.view(np.float16).astype(np.float64)  # noqa: E731
    eps = float(np.float32(eps))

    def ln(z, g, b):
        mu = z.mean(axis=1, keepdims=True)
        var = ((z - mu) ** 2).mean(axis=1, keepdims=True)
        return (z - mu) / np.sqrt(var + eps) * f64(g) + f64(b)

    d = w.x.shape[1]
    x = f64(w.x)
    qkv = ln(x, w.ln1_g, w.ln1_b) @ h16(w.w_qkv)
    r1 = x + qkv[:, 2 * d:] @ h16(w.w_o)
    f1 = ln(r1, w.ln2_g, w.ln2_b) @ h16(w.w_1)
    g = 0.5 * f1 * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (f1 + 0.044715 * f1 ** 3)))
    return r1 + g @ h16(w.w_2)


# ---------------------------------------------------------------------------
# Program
# ---------------------------------------------------------------------------

def _v(op: VectorOp, **fields) -> Instruction:
    return vector(op.value, **fields)


@dataclass
class Region:
    """A matrix or vector: ``rows`` x ``cols`` of ``bits`` bits, ``pitch`` words per row,
    at scratchpad word ``sp`` (and HBM byte address ``hbm`` when it lives there)."""
    name: str
    rows: int
    cols: int
    bits: int
    pitch: int
    sp: int = 0
    hbm: int | None = None

    @property
    def words(self) -> int:
        return self.rows * self.pitch


@dataclass
class DecoderProgram:
    shape: DecoderShape
    weights: DecoderWeights
    program: list[Instruction]
    image: HbmImage
    regions: dict[str, Region]
    expected: np.ndarray                 # FP32 bits [M, d]
    sp_words_used: int
    hbm_bursts_used: int
    intermediates: dict = field(default_factory=dict, repr=False)

    @property
    def out(self) -> Region:
        return self.regions["out"]

    def result_from_words(self, words) -> np.ndarray:
        r = self.out
        return words_to_matrix(list(words), r.rows, r.cols, 32, r.pitch)

    def result_from_hbm(self, memory: dict) -> np.ndarray:
        r = self.out
        burst = self.image.config.geometry.burst_bytes
        return self.result_from_words([memory.get(r.hbm + i * burst, 0) for i in range(r.words)])


def _pitch(cols: int, bits: int) -> int:
    return -(-cols * bits // 512)


def decoder_program(config, weights: DecoderWeights | None = None, seed: int = 0,
                    eps: float = EPS, hbm_base: int = 0, check_stored_rows: bool = True
                    ) -> DecoderProgram:
    """Lay out the block in HBM and scratchpad and assemble its program (module
    docstring). ``check_stored_rows``: the HBM regions must lie in the rows the RTL
    channel stores (``config.stored_rows``; needed for Verilator's backdoor preload, not
    for a behavioural memory)."""
    weights = weights if weights is not None else random_weights(DEFAULT_SHAPE, seed)
    shape = weights.shape
    M, d, f = shape.tokens, shape.d_model, shape.ffn
    npu = config.npu
    lanes, H, W = npu.vector_lanes, npu.array_rows, npu.array_cols
    burst = config.geometry.burst_bytes
    assert burst == 64, "the layout assumes 64-byte words"
    if npu.word_bytes != burst:
        raise ConfigError("NpuConfig.word_bytes",
                          f"the decoder block's layout needs scratchpad words of one "
                          f"{burst}-byte burst, got {npu.word_bytes}")

    regions: dict[str, Region] = {}
    sp_next = 0

    def region(name, rows, cols, bits):
        nonlocal sp_next
        r = Region(name, rows, cols, bits, _pitch(cols, bits), sp_next)
        sp_next += r.words
        regions[name] = r
        return r

    # activations first (low words: VECTOR's range check counts `length` in words)
    x = region("x", M, d, 32)
    ln = region("ln", 4, d, 32)                     # ln1_g, ln1_b, ln2_g, ln2_b
    t = region("t", 1, 1, 32)
    dv = region("dv", 1, d, 32)
    sq = region("sq", 1, d, 32)
    h = region("h", M, d, 32)
    h16 = region("h16", M, d, 16)
    qkv = region("qkv", M, 3 * d, 16)
    o = region("o", M, d, 32)
    r1 = region("r1", M, d, 32)
    h2 = region("h2", M, d, 32)
    h2_16 = region("h2_16", M, d, 16)
    f1 = region("f1", M, f, 32)                     # GELU in place
    g16 = region("g16", M, f, 16)
    f2 = region("f2", M, d, 32)
    out = region("out", M, d, 32)
    act_end = sp_next
    # weights
    w_qkv = region("w_qkv", d, 3 * d, 16)
    w_o = region("w_o", d, d, 16)
    w_1 = region("w_1", d, f, 16)
    w_2 = region("w_2", f, d, 16)
    if sp_next > npu.scratchpad_words:
        raise ValueError(f"the block needs {sp_next} scratchpad words, the NPU has "
                         f"{npu.scratchpad_words}")
    longest = max(M * f, M * d)
    if act_end + longest > npu.scratchpad_words:
        raise ValueError("element-wise VECTOR ranges pass the scratchpad end")
    if f > H and M > npu.accumulator_rows:
        raise ValueError("M exceeds the accumulator rows")

    # HBM
    image = HbmImage(config)
    hbm_next = hbm_base
    for r, data in ((x, weights.x), (ln, np.stack([weights.ln1_g, weights.ln1_b,
                                                    weights.ln2_g, weights.ln2_b])),
                    (w_qkv, weights.w_qkv), (w_o, weights.w_o), (w_1, weights.w_1),
                    (w_2, weights.w_2), (out, None)):
        r.hbm = hbm_next
        hbm_next += r.words * burst
        if data is not None:
            image.write(r.hbm, matrix_words(data, r.bits, r.pitch, burst))
    hbm_bursts = (hbm_next - hbm_base) // burst
    if check_stored_rows and hbm_next > stored_bursts(config) * burst:
        raise ValueError(f"the block's HBM regions end at {hbm_next:#x}, past the stored rows "
                         f"({stored_bursts(config) * burst:#x})")

    pd, pf = d // FP32_PER_WORD, f // FP32_PER_WORD   # FP32 words per row
    g1, b1, g2, b2 = (ln.sp + i * ln.pitch for i in range(4))
    prog: list[Instruction] = [
        # activations and LayerNorm parameters first, weights behind them (the DMA
        # streams the weights while LayerNorm 1 runs)
        dma_load(x.hbm, x.sp, x.words), dma_load(ln.hbm, ln.sp, ln.words), wait("dma"),
        dma_load(w_qkv.hbm, w_qkv.sp, w_qkv.words), dma_load(w_o.hbm, w_o.sp, w_o.words),
        dma_load(w_1.hbm, w_1.sp, w_1.words), dma_load(w_2.hbm, w_2.sp, w_2.words)]
    for r in range(M):
        prog += layernorm_ops(x.sp + r * pd, g1, b1, h.sp + r * pd, t.sp, dv.sp, sq.sp, d, eps)
    prog += [_v(VectorOp.CVT32TO16, a=h.sp, d=h16.sp, length=M * d),
             wait("vector", "dma"),
             gemm(h16.sp, w_qkv.sp, qkv.sp, M, d, 3 * d, h16.pitch, w_qkv.pitch, qkv.pitch),
             wait("gemm"),
             # V = columns [2d, 3d) of QKV: word offset 2d / 32 inside each QKV row
             gemm(qkv.sp + 2 * d // FP16_PER_WORD, w_o.sp, o.sp, M, d, d, qkv.pitch,
                  w_o.pitch, o.pitch, fp32=True),
             wait("gemm"),
             _v(VectorOp.ADD, a=x.sp, b=o.sp, d=r1.sp, length=M * d)]
    for r in range(M):
        prog += layernorm_ops(r1.sp + r * pd, g2, b2, h2.sp + r * pd, t.sp, dv.sp, sq.sp, d,
                              eps)
    prog += [_v(VectorOp.CVT32TO16, a=h2.sp, d=h2_16.sp, length=M * d),
             wait("vector"),
             gemm(h2_16.sp, w_1.sp, f1.sp, M, d, f, h2_16.pitch, w_1.pitch, f1.pitch,
                  fp32=True),
             wait("gemm"),
             _v(VectorOp.GELU, a=f1.sp, d=f1.sp, length=M * f),
             _v(VectorOp.CVT32TO16, a=f1.sp, d=g16.sp, length=M * f),
             wait("vector"),
             gemm(g16.sp, w_2.sp, f2.sp, M, f, d, g16.pitch, w_2.pitch, f2.pitch, fp32=True),
             wait("gemm"),
             _v(VectorOp.ADD, a=r1.sp, b=f2.sp, d=out.sp, length=M * d),
             wait("vector"),
             dma_store(out.hbm, out.sp, out.words),
             wait("dma"),
             halt()]
    assert pd * M == x.words and pf * M == f1.words
    if len(prog) > npu.instruction_words:
        raise ValueError(f"{len(prog)} instructions, the NPU holds {npu.instruction_words}")
    expected, stages = golden_decoder_block(weights, H, W, lanes, eps, intermediates=True)
    return DecoderProgram(shape, weights, prog, image, regions, expected, sp_next, hbm_bursts,
                          stages)


# ---------------------------------------------------------------------------
# A Python interpreter of the program (independent check of layout + order)
# ---------------------------------------------------------------------------

def _read_elem(mem, base, i, bits, word_bits=512):
    per = word_bits // bits
    return (mem.get(base + i // per, 0) >> (bits * (i % per))) & ((1 << bits) - 1)


def _write_elem(mem, base, i, value, bits, word_bits=512):
    per, mask = word_bits // bits, (1 << bits) - 1
    addr, shift = base + i // per, bits * (i % per)
    mem[addr] = (mem.get(addr, 0) & ~(mask << shift)) | ((int(value) & mask) << shift)


def _read_matrix(mem, base, rows, cols, pitch, bits, word_bits=512):
    return np.array([[_read_elem(mem, base + r * pitch, j, bits, word_bits) for j in range(cols)]
                     for r in range(rows)], dtype=np.uint16 if bits == 16 else np.uint32)


def execute_npu(config, sp: dict, hbm: dict, ins) -> None:
    """One DMA, GEMM or VECTOR instruction on a Python scratchpad ({word: int}, words of
    ``NpuConfig.word_bytes`` = k bursts) and HBM ({burst address: int}), in place: DMA
    copies bursts (burst i to / from slice j % k of word sp + j // k, j = slice + i, or
    slice + i k with ``spread``; the word's other slices kept), GEMM uses ``sim.golden.gemm`` (C written column by column, neighbours
    kept), VECTOR ``sim.npu_vector_programs.execute_instruction``; other opcodes do
    nothing."""
    npu, burst = config.npu, config.geometry.burst_bytes
    k, bb = npu.word_bytes // burst, burst * 8
    wbits = npu.word_bytes * 8
    if ins.op is NpuOp.DMA_LOAD:
        mask = (1 << bb) - 1
        for i in range(ins["count"]):
            at = ins["slice"] + i * (k if ins["spread"] else 1)
            addr, shift = ins["sp"] + at // k, bb * (at % k)
            value = hbm.get(ins["hbm"] + i * burst, 0)
            if k == 1:
                sp[addr] = value
            else:
                sp[addr] = (sp.get(addr, 0) & ~(mask << shift)) | (value << shift)
    elif ins.op is NpuOp.DMA_STORE:
        mask = (1 << bb) - 1
        for i in range(ins["count"]):
            at = ins["slice"] + i * (k if ins["spread"] else 1)
            word = sp.get(ins["sp"] + at // k, 0)
            hbm[ins["hbm"] + i * burst] = word if k == 1 else (word >> (bb * (at % k))) & mask
    elif ins.op is NpuOp.GEMM:
        m, kk, n = ins["m"], ins["k"], ins["n"]
        a = _read_matrix(sp, ins["a"], m, kk, ins["a_pitch"], 16, wbits)
        b = _read_matrix(sp, ins["b"], kk, n, ins["b_pitch"], 16, wbits)
        bits = 32 if ins["fp32"] else 16
        psum = (_read_matrix(sp, ins["c"], m, n, ins["c_pitch"], 32, wbits) if ins["acc"]
                else None)
        c32, c16 = golden_gemm(a, b, npu.array_rows, npu.array_cols, psum)
        c = c32 if bits == 32 else c16
        for r in range(m):
            for j in range(n):
                _write_elem(sp, ins["c"] + r * ins["c_pitch"], j, c[r, j], bits, wbits)
    elif ins.op is NpuOp.VECTOR:
        execute_instruction(sp, ins, npu.vector_lanes, npu.word_bytes)


def interpret(config, program, hbm: dict) -> tuple[dict, dict]:
    """Run ``program`` on a Python model (:func:`execute_npu` per instruction, up to the
    HALT): (scratchpad {word: int}, HBM {address: int}) afterwards. Units run one
    instruction at a time in program order, which is what the RTL computes when the
    program's WAITs order every dependency between units: a ValueError names the first
    instruction that touches words another unit may still be using
    (``sim.decode.interpret``'s hazard check)."""
    from .decode.interpret import Interpreter
    it = Interpreter(config, hbm)
    it.run(program)
    if it.hazards:
        raise ValueError(f"{len(it.hazards)} hazard(s), the first: {it.hazards[0]}")
    return dict(it.sp), dict(it.hbm)
