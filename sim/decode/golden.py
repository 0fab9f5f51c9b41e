"""Golden decode: the decode steps in numpy with the device's numerics, bit for bit.

Independent of the compiled programs: it calls the same arithmetic models the RTL is
proven against (``sim.golden.gemm`` for the systolic array, ``sim.golden.vector`` for
the vector unit, ``sim.kv_layout.golden_logits`` / ``golden_attention`` for the PIM
GEMVs) in the order of operations the compiler emits:

per step, per layer (rows = requests; a tensor-parallel model: one device's heads and FFN
columns, ``sim.decode.workload``)::

    h = LayerNorm1(x); qkv = fp16(h) . W_qkv (FP16 out); q, k, v = thirds of qkv
    append k, v to every request's cache; per request and head:
      logits (FP16): PIM modes: K^T q on the PIM (golden_logits);
                     npu-only in the ``stream`` form (``sim.decode.npu_kv``): the array,
                     K [L x d_head] . q^T [d_head x 1] (d_head > 32: one GEMM per 32
                     elements, chained in FP32, then rounded to FP16 by the vector
                     unit); in the ``weights`` form q [1 x d_head] . K^T [d_head x L]
                     with FP16 out (K tiles chained in the array's FP32 accumulator)
      p = softmax(fp32(logits) * 1/sqrt(d_head)) (vector unit), s = fp16(p)
      out (FP16):    PIM modes: golden_attention (a GEMV per V token chunk of
                     row_elements tokens; acc = +0.0, acc += fp32(partial) in chunk
                     order in FP32, rounded to FP16);
                     npu-only, ``stream``: V^T [d_head x L] . s^T [L x 1] on the array,
                     K split in 32-token chunks chained in FP32 (``acc``), rounded to
                     FP16; ``weights``: s [1 x L] . V [L x d_head] in FP32 (K tiles
                     chained in the accumulator), rounded to FP16 by the vector unit
    o = attn . W_o (FP32); r1 = x + o; h2 = LayerNorm2(r1); f1 = fp16(h2) . W_1 (FP32)
    x = r1 + fp16(GELU(f1)) . W_2

and after the last layer ``logits = fp16(LayerNorm_f(x)) . W_lm`` (FP32).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rtl.npu.vector import VectorOp

from ..golden import vector as gv
from ..golden.gemm import gemm
from ..kv_layout import KVLayout, golden_attention, golden_logits
from .workload import EPS, DecodeData, DecodeWorkload

__all__ = ["GoldenStep", "golden_decode", "reference_decode", "softmax_scale_bits", "MODES"]

MODES = ("npu-only", "npu+pim", "neupims")


def softmax_scale_bits(d_head: int) -> int:
    return int(np.array(1.0 / np.sqrt(d_head), dtype=np.float32).view(np.uint32))


@dataclass
class GoldenStep:
    """One step's results: ``hidden`` [batch, d] FP32 bits after the last layer, ``logits``
    [batch, vocab] FP32 bits, ``attention`` [layer] -> [batch, d] FP16 bits."""
    hidden: np.ndarray
    logits: np.ndarray
    attention: list


def _cvt(bits) -> np.ndarray:
    return gv.execute(VectorOp.CVT32TO16, np.asarray(bits, np.uint32)).astype(np.uint16)


def _to32(bits) -> np.ndarray:
    return gv.execute(VectorOp.CVT16TO32, np.asarray(bits, np.uint16).astype(np.uint32))


def _layernorm(x, gamma, beta, lanes) -> np.ndarray:
    return np.stack([gv.layernorm(row, gamma, beta, EPS, lanes) for row in x])


def _add(x, y, lanes) -> np.ndarray:
    return gv.residual_add(x.ravel(), y.ravel(), lanes).reshape(x.shape)


def scores(logits16, d_head: int, lanes: int) -> np.ndarray:
    """FP16 softmax of FP16 logits scaled by 1/sqrt(d_head), as the compiled program."""
    scaled = gv.execute(VectorOp.MUL, _to32(logits16), softmax_scale_bits(d_head), True)
    return _cvt(gv.softmax(scaled, lanes))


def _attention_pim(layout, keys, values, q, lanes) -> np.ndarray:
    logits = golden_logits(layout, keys, q)                    # heads x L
    s = np.stack([scores(row, layout.d_head, lanes) for row in logits])
    return golden_attention(layout, values, s)[1]              # heads x d_head


def _logits_npu(keys, q, H, W, per) -> np.ndarray:
    """K [L x d_head] . q: one GEMM with FP16 out for a head of one burst (``per`` FP16);
    a longer head one GEMM per burst-wide piece chained in FP32, then rounded."""
    dh = len(q)
    if dh == per:
        return gemm(keys, q.reshape(dh, 1), H, W)[1][:, 0]
    acc = None
    for j in range(0, dh, per):
        acc = gemm(np.ascontiguousarray(keys[:, j:j + per]), q[j:j + per].reshape(per, 1), H, W,
                   acc)[0]
    return _cvt(acc[:, 0])


def _attention_npu_stream(keys, values, q, H, W, lanes, per) -> np.ndarray:
    """The ``stream`` form (``sim.decode.npu_kv``); ``per``: FP16 per burst, the token
    chunk of one attend GEMM."""
    heads, dh = q.shape
    out = np.zeros((heads, dh), dtype=np.uint16)
    for h in range(heads):
        logits = _logits_npu(keys[:, h, :], q[h], H, W, per)
        s = scores(logits, dh, lanes)
        acc = None
        for c in range(0, len(s), per):
            vt = np.ascontiguousarray(values[c:c + per, h, :].T)     # dh x chunk
            acc = gemm(vt, s[c:c + per].reshape(-1, 1), H, W, acc)[0]
        out[h] = _cvt(acc[:, 0])
    return out


def _attention_npu_weights(keys, values, q, H, W, lanes) -> np.ndarray:
    """The ``weights`` form (``sim.decode.npu_kv``), per head: ``q . K^T`` (FP16 logits),
    the softmax, ``s . V`` (FP32, then rounded by the vector unit). A GEMM's rows and
    columns are independent, so the compiler's GEMMs per 32-token chunk for a block of
    heads (logits) and per group of heads in a V row (out) give these bits."""
    heads, dh = q.shape
    out = np.zeros((heads, dh), dtype=np.uint16)
    for h in range(heads):
        kt = np.ascontiguousarray(keys[:, h, :].T)                   # dh x L
        logits = gemm(q[h].reshape(1, dh), kt, H, W)[1][0]
        s = scores(logits, dh, lanes)
        v = np.ascontiguousarray(values[:, h, :])                    # L x dh
        out[h] = _cvt(gemm(s.reshape(1, -1), v, H, W)[0][0])
    return out


def golden_decode(workload: DecodeWorkload, data: DecodeData, mode: str, config) -> list[GoldenStep]:
    """The results of every step of ``workload`` in ``mode`` (see the module docstring)."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    m = workload.model
    npu = config.npu
    H, W, lanes = npu.array_rows, npu.array_cols, npu.vector_lanes
    layout = KVLayout(config, m)
    heads, dh, a = workload.heads, m.d_head, workload.d_attn
    keys = [[k.copy() for k in r] for r in data.keys]
    values = [[v.copy() for v in r] for r in data.values]
    from .compiler import npu_attention_form      # the compiler's pick (it imports this module)
    form = npu_attention_form(workload, config) if mode == "npu-only" else None
    steps = []
    for step in range(workload.steps):
        x = data.inputs[step].copy()
        attention = []
        for layer, w in enumerate(data.layers):
            h = _layernorm(x, w.ln[0], w.ln[1], lanes)
            qkv = gemm(_cvt(h), w.w_qkv, H, W)[1]
            attn = np.zeros((workload.batch, a), dtype=np.uint16)
            for r in range(workload.batch):
                q = qkv[r, :a].reshape(heads, dh)
                keys[r][layer] = np.concatenate([keys[r][layer], qkv[r, a:2 * a].reshape(1, heads, dh)])
                values[r][layer] = np.concatenate([values[r][layer],
                                                   qkv[r, 2 * a:].reshape(1, heads, dh)])
                if form == "weights":
                    out = _attention_npu_weights(keys[r][layer], values[r][layer], q, H, W,
                                                 lanes)
                elif form == "stream":
                    out = _attention_npu_stream(keys[r][layer], values[r][layer], q, H, W, lanes,
                                                layout.burst_elements)
                else:
                    out = _attention_pim(layout, keys[r][layer], values[r][layer], q, lanes)
                attn[r] = out.reshape(-1)
            attention.append(attn)
            o = gemm(attn, w.w_o, H, W)[0]
            r1 = _add(x, o, lanes)
            h2 = _layernorm(r1, w.ln[2], w.ln[3], lanes)
            f1 = gemm(_cvt(h2), w.w_1, H, W)[0]
            g16 = _cvt(gv.gelu(f1))
            x = _add(r1, gemm(g16, w.w_2, H, W)[0], lanes)
        hf = _layernorm(x, data.ln_f[0], data.ln_f[1], lanes)
        logits = gemm(_cvt(hf), data.w_lm, H, W)[0]
        steps.append(GoldenStep(x, logits, attention))
    return steps


def reference_decode(workload: DecodeWorkload, data: DecodeData) -> list[tuple[np.ndarray, np.ndarray]]:
    """The same decode in float64 from the same FP16 / FP32 inputs, no intermediate
    rounding: (hidden, logits) per step. The golden's distance from it is its rounding."""
    m = workload.model
    heads, dh, a = workload.heads, m.d_head, workload.d_attn
    f32 = lambda bits: np.asarray(bits, np.uint32).view(np.float32).astype(np.float64)  # noqa: E731
    f16 = lambda bits: np.asarray(bits, np.uint16).view(np.float16).astype(np.float64)  # noqa: E731

    def ln(x, g, b):
        mean = x.mean(axis=-1, keepdims=True)
        var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
        return (x - mean) / np.sqrt(var + np.float64(np.float32(EPS))) * f32(g) + f32(b)

    def gelu(x):
        return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))

    keys = [[f16(k) for k in r] for r in data.keys]
    values = [[f16(v) for v in r] for r in data.values]
    out = []
    for step in range(workload.steps):
        x = f32(data.inputs[step])
        for layer, w in enumerate(data.layers):
            qkv = ln(x, w.ln[0], w.ln[1]) @ f16(w.w_qkv)
            attn = np.zeros((workload.batch, a))
            for r in range(workload.batch):
                keys[r][layer] = np.concatenate([keys[r][layer], qkv[r, a:2 * a].reshape(1, heads, dh)])
                values[r][layer] = np.concatenate([values[r][layer], qkv[r, 2 * a:].reshape(1, heads, dh)])
                q = qkv[r, :a].reshape(heads, dh)
                for h in range(heads):
                    logits = keys[r][layer][:, h, :] @ q[h] / np.sqrt(dh)
                    p = np.exp(logits - logits.max())
                    attn[r, h * dh:(h + 1) * dh] = (p / p.sum()) @ values[r][layer][:, h, :]
            r1 = x + attn @ f16(w.w_o)
            x = r1 + gelu(ln(r1, w.ln[2], w.ln[3]) @ f16(w.w_1)) @ f16(w.w_2)
        out.append((x, ln(x, data.ln_f[0], data.ln_f[1]) @ f16(data.w_lm)))
    return out
