"""A decode workload for the RTL slice: a model, a batch of requests with their cached
lengths, the number of decode steps, and random weights, KV caches and inputs.

Decode is teacher-forced: the input of request r at step s is a given embedding row
(``DecodeData.inputs[s, r]``), so every step is known before the run and the device
runs alone. Each step appends one token per request to every layer's KV cache and
attends over ``kv_len + s + 1`` tokens.

A tensor- or pipeline-parallel model (``tp``, ``pp`` > 1, as the paper's GPT-3 shapes)
runs as the share of one device: heads / tp heads, ffn / tp FFN columns, layers / pp
layers, and the LM head. The all-reduce of the output projection's and FC2's partial sums
over the tp devices is not modelled, nor the hand-over between pipeline stages: the
device's own partial sums stand for the reduced ones, so its results are what the golden
computes for that one device, and no time is spent on communication.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..models import ModelShape, get_model

__all__ = ["DecodeError", "DecodeWorkload", "LayerWeights", "DecodeData", "random_data", "EPS"]

EPS = 1e-5


class DecodeError(ValueError):
    """A workload the compiler cannot run; the message names the field."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


#: how npu-only runs attention on the array (``sim.decode.npu_kv``)
NPU_ATTENTION = ("auto", "stream", "weights")


@dataclass(frozen=True)
class DecodeWorkload:
    """``model`` (a registered name or a ModelShape), ``kv_lens`` (tokens each request has
    cached before step 0: the batch), ``steps`` decode steps, a ``vocab`` for the LM head,
    ``seed`` for the random data; ``source`` says where the lengths came from."""
    model: ModelShape | str
    kv_lens: tuple
    steps: int = 1
    vocab: int = 128
    seed: int = 0
    source: str = ""
    npu_attention: str = "auto"     # npu-only: "stream", "weights" or "auto" (the compiler's pick)

    def __post_init__(self):
        model = get_model(self.model) if isinstance(self.model, str) else self.model
        object.__setattr__(self, "model", model)
        object.__setattr__(self, "kv_lens", tuple(int(n) for n in self.kv_lens))
        if not self.kv_lens:
            raise DecodeError("batch", "no requests")
        for i, n in enumerate(self.kv_lens):
            if n < 0:
                raise DecodeError(f"kv_lens[{i}]", f"negative length {n}")
        if self.steps < 1:
            raise DecodeError("steps", f"must be >= 1, got {self.steps}")
        if self.npu_attention not in NPU_ATTENTION:
            raise DecodeError("npu_attention", f"{self.npu_attention!r} is not one of "
                              f"{', '.join(NPU_ATTENTION)}")
        if self.vocab < 1 or self.vocab % 32:
            raise DecodeError("vocab", f"must be a positive multiple of 32, got {self.vocab}")
        m = model
        if m.d_model % 32 or m.ffn_per_device % 32:
            raise DecodeError("model", f"{m.name}: d_model and the FFN width per device "
                              f"(ffn / tp) must be multiples of 32, got {m.d_model} and "
                              f"{m.ffn_per_device}")
        if m.d_head % 32:
            raise DecodeError("model.d_head", f"{m.name}: the compiler needs d_head a multiple "
                              f"of 32 (whole scratchpad words per head), got {m.d_head}")
        if m.kv_heads != m.heads:
            raise DecodeError("model.kv_heads", f"{m.name}: grouped-query attention is not "
                              f"compiled yet ({m.kv_heads} KV heads for {m.heads} heads)")
        if m.activation != "gelu":
            raise DecodeError("model.activation", f"{m.name}: only GELU FFNs are compiled, "
                              f"got {m.activation}")
        longest = max(self.kv_lens) + self.steps
        if longest > m.max_seq_len:
            raise DecodeError("kv_lens", f"{longest} tokens exceed {m.name}'s max_seq_len "
                              f"{m.max_seq_len}")

    @property
    def batch(self) -> int:
        return len(self.kv_lens)

    # -- what one device runs (tensor parallel tp, pipeline parallel pp: sim.models) --
    @property
    def layers(self) -> int:
        """Layers on this device: the model's / pp."""
        return self.model.layers_per_device

    @property
    def heads(self) -> int:
        """Attention heads on this device: the model's / tp."""
        return self.model.heads_per_device

    @property
    def d_attn(self) -> int:
        """Width of this device's q (and of K, V, the attention output): heads x d_head."""
        return self.model.q_dim_per_device

    @property
    def ffn(self) -> int:
        """FFN columns on this device: the model's / tp."""
        return self.model.ffn_per_device

    def attention_len(self, request: int, step: int) -> int:
        """Tokens request ``request`` attends over at ``step`` (its cache + the new one)."""
        return self.kv_lens[request] + step + 1

    def describe(self) -> dict:
        m = self.model
        return {"model": m.name, "d_model": m.d_model, "heads": m.heads, "layers": m.layers,
                "ffn": m.ffn, "d_head": m.d_head, "tp": m.tp, "pp": m.pp,
                "device": {"heads": self.heads, "layers": self.layers, "ffn": self.ffn},
                "vocab": self.vocab, "batch": self.batch,
                "kv_lens": list(self.kv_lens), "steps": self.steps, "seed": self.seed,
                "source": self.source}


@dataclass
class LayerWeights:
    """One device's share of a layer (d = d_model; a = its heads x d_head and f its FFN
    columns: the whole model's at tp 1). FP16 bits: ``w_qkv`` [d, 3a] (q, k, v of its
    heads), ``w_o`` [a, d], ``w_1`` [d, f], ``w_2`` [f, d]; FP32 bits: ``ln`` [4, d] =
    gamma1, beta1, gamma2, beta2."""
    w_qkv: np.ndarray
    w_o: np.ndarray
    w_1: np.ndarray
    w_2: np.ndarray
    ln: np.ndarray


@dataclass
class DecodeData:
    """Everything random about a run: ``layers`` (LayerWeights), ``ln_f`` [2, d] FP32,
    ``w_lm`` [d, vocab] FP16, ``inputs`` [steps, batch, d] FP32, and the cached tokens
    ``keys[r][l]`` / ``values[r][l]`` [kv_len, heads, d_head] FP16."""
    layers: list
    ln_f: np.ndarray
    w_lm: np.ndarray
    inputs: np.ndarray
    keys: list
    values: list = field(default_factory=list)


def random_data(workload: DecodeWorkload) -> DecodeData:
    """GPT-like random data: weights ~ N(0, 1/fan_in) in FP16, LayerNorm gamma ~ U(0.5,
    1.5), beta ~ U(-0.5, 0.5), inputs ~ N(0, 1), cached K and V ~ N(0, 1) in FP16."""
    rng = np.random.default_rng(workload.seed)
    m = workload.model
    d, f, h, dh = m.d_model, workload.ffn, workload.heads, m.d_head
    a = workload.d_attn

    def w(rows, cols):
        return (rng.standard_normal((rows, cols)) / math.sqrt(rows)).astype(np.float16).view(np.uint16)

    def f32(values):
        return np.asarray(values, dtype=np.float32).view(np.uint32)

    def ln(count):
        rows = []
        for _ in range(count):
            rows += [rng.uniform(0.5, 1.5, d), rng.uniform(-0.5, 0.5, d)]
        return f32(np.stack(rows))

    layers = [LayerWeights(w(d, 3 * a), w(a, d), w(d, f), w(f, d), ln(2))
              for _ in range(workload.layers)]
    ln_f, w_lm = ln(1), w(d, workload.vocab)
    inputs = f32(rng.standard_normal((workload.steps, workload.batch, d)))

    def cache(n):
        return rng.standard_normal((n, h, dh)).astype(np.float16).view(np.uint16)

    keys = [[cache(n) for _ in range(workload.layers)] for n in workload.kv_lens]
    values = [[cache(n) for _ in range(workload.layers)] for n in workload.kv_lens]
    return DecodeData(layers, ln_f, w_lm, inputs, keys, values)


def shape_data(workload: DecodeWorkload) -> DecodeData:
    """:func:`random_data`'s shapes and types without its values: every array a read-only
    view of one zero (no memory), for a compile that lays out and programs a run but
    stores nothing (``compile_decode(..., values=False)``)."""
    m = workload.model
    d, f, h, dh, a = m.d_model, workload.ffn, workload.heads, m.d_head, workload.d_attn

    def zeros(shape, dtype):
        return np.broadcast_to(np.zeros((), dtype), shape)

    layers = [LayerWeights(zeros((d, 3 * a), np.uint16), zeros((a, d), np.uint16),
                           zeros((d, f), np.uint16), zeros((f, d), np.uint16),
                           zeros((4, d), np.uint32)) for _ in range(workload.layers)]
    inputs = zeros((workload.steps, workload.batch, d), np.uint32)
    keys = [[zeros((n, h, dh), np.uint16)] * workload.layers for n in workload.kv_lens]
    return DecodeData(layers, zeros((2, d), np.uint32), zeros((d, workload.vocab), np.uint16),
                      inputs, keys, [list(k) for k in keys])
