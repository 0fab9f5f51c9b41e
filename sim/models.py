"""LLM shapes for decode replay: one registry of the models the project runs.

A :class:`ModelShape` holds a decoder's published dimensions and how it is split over
devices: tensor parallelism ``tp`` divides the heads, the KV heads and the FFN among
``tp`` devices (one NeuPIMs device each); pipeline parallelism ``pp`` gives each device
``layers / pp`` consecutive layers. The per-device properties (``heads_per_device``,
``layers_per_device``, ...) and the GEMM shapes describe the work of one device.

Sources:
- GPT-3 7B / 13B / 30B / 175B exactly as NeuPIMs (NEUPIMS.md 6) used them: d_head 128,
  FFN 4 x d_model, GELU, TP and PP as in the paper; maximum sequence length 2048.
- LLaMA-2 7B / 13B / 70B and LLaMA-3 8B / 70B: the published configurations (grouped-query
  attention through ``kv_heads``, the real FFN widths, SwiGLU: FC1 is the gate and up
  projections side by side, 2 x ffn columns). TP and PP are not from the paper: our choice
  follows its pattern (TP 4 up to 13B, TP 8 and PP 2 for 70B).
- Test models small enough for an RTL slice (``tiny-gpt``, ``small-gpt``, ``tiny-gqa``);
  their d_head (32) is below the 128 of the real models, so a head fills fewer PIM COMPs;
  ``tiny-gpt-h64`` has one head of 64 (a head over several scratchpad words and bursts).

Invalid shapes raise :class:`ModelError` (a ``ValueError``) naming the field, e.g.
``ModelShape.heads: 3 heads x d_head 128 = 384, not d_model 512``.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ModelError", "GemmShape", "AttentionShape", "ModelShape", "MODELS", "get_model",
           "model_names", "FP16_BYTES"]

FP16_BYTES = 2
ACTIVATIONS = ("gelu", "swiglu")


class ModelError(ValueError):
    """A model shape that cannot exist; the message names the field."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"ModelShape.{field}: {message}")


def _require(condition: bool, field: str, message: str) -> None:
    if not condition:
        raise ModelError(field, message)


@dataclass(frozen=True)
class GemmShape:
    """One GEMM of a decode step on one device: (m x k) activations times (k x n) weights."""
    name: str
    m: int
    k: int
    n: int

    @property
    def macs(self) -> int:
        return self.m * self.k * self.n

    @property
    def flops(self) -> int:
        return 2 * self.macs

    @property
    def weight_bytes(self) -> int:
        return self.k * self.n * FP16_BYTES


@dataclass(frozen=True)
class AttentionShape:
    """Attention of one request at KV length ``seq_len`` in one layer of one device."""
    heads: int
    kv_heads: int
    d_head: int
    seq_len: int

    @property
    def logit_macs(self) -> int:
        """K^T q: heads x seq_len x d_head."""
        return self.heads * self.seq_len * self.d_head

    @property
    def attend_macs(self) -> int:
        """s V: heads x seq_len x d_head."""
        return self.heads * self.seq_len * self.d_head

    @property
    def kv_bytes(self) -> int:
        """K and V of this layer: 2 x kv_heads x d_head x seq_len FP16 values."""
        return 2 * self.kv_heads * self.d_head * self.seq_len * FP16_BYTES


@dataclass(frozen=True)
class ModelShape:
    """A decoder-only transformer and its split over devices.

    ``kv_heads`` defaults to ``heads`` (multi-head attention); fewer means grouped-query
    attention (query head h reads KV head ``h // (heads // kv_heads)``). ``ffn`` is the
    hidden width of the feed-forward block (for SwiGLU the width of each of gate / up).
    """
    name: str
    d_model: int
    heads: int
    layers: int
    ffn: int
    d_head: int = 128
    kv_heads: int | None = None
    tp: int = 1
    pp: int = 1
    activation: str = "gelu"
    max_seq_len: int = 2048
    source: str = ""

    def __post_init__(self):
        if self.kv_heads is None:
            object.__setattr__(self, "kv_heads", self.heads)
        _require(isinstance(self.name, str) and self.name.strip() != "", "name",
                 f"must be a non-empty string, got {self.name!r}")
        for field in ("d_model", "heads", "layers", "ffn", "d_head", "kv_heads", "tp", "pp",
                      "max_seq_len"):
            value = getattr(self, field)
            _require(isinstance(value, int) and not isinstance(value, bool), field,
                     f"must be an integer, got {value!r}")
            _require(value >= 1, field, f"must be positive, got {value}")
        self._check_split()

    def _check_split(self) -> None:
        _require(self.heads * self.d_head == self.d_model, "heads",
                 f"{self.heads} heads x d_head {self.d_head} = {self.heads * self.d_head}, "
                 f"not d_model {self.d_model}")
        _require(self.heads % self.kv_heads == 0, "kv_heads",
                 f"{self.kv_heads} KV heads do not divide {self.heads} query heads")
        _require(self.heads % self.tp == 0, "tp",
                 f"tensor parallel {self.tp} does not divide {self.heads} heads")
        _require(self.kv_heads % self.tp == 0, "tp",
                 f"tensor parallel {self.tp} does not divide {self.kv_heads} KV heads")
        _require(self.ffn % self.tp == 0, "tp",
                 f"tensor parallel {self.tp} does not divide the FFN width {self.ffn}")
        _require(self.layers % self.pp == 0, "pp",
                 f"pipeline parallel {self.pp} does not divide {self.layers} layers")
        _require(self.activation in ACTIVATIONS, "activation",
                 f"unknown activation {self.activation!r}; choose one of {', '.join(ACTIVATIONS)}")

    # -- per device (after TP and PP) --
    @property
    def devices(self) -> int:
        return self.tp * self.pp

    @property
    def heads_per_device(self) -> int:
        return self.heads // self.tp

    @property
    def kv_heads_per_device(self) -> int:
        return self.kv_heads // self.tp

    @property
    def group_size(self) -> int:
        """Query heads per KV head (1 for multi-head attention)."""
        return self.heads // self.kv_heads

    @property
    def ffn_per_device(self) -> int:
        return self.ffn // self.tp

    @property
    def layers_per_device(self) -> int:
        return self.layers // self.pp

    @property
    def q_dim_per_device(self) -> int:
        return self.heads_per_device * self.d_head

    @property
    def kv_dim_per_device(self) -> int:
        """Elements of K (or of V) per token and layer on one device."""
        return self.kv_heads_per_device * self.d_head

    def kv_bytes_per_token(self) -> int:
        """K and V of one token over this device's layers."""
        return 2 * self.kv_dim_per_device * FP16_BYTES * self.layers_per_device

    # -- one decode step, one layer, one device --
    def gemms(self, batch: int = 1) -> tuple[GemmShape, ...]:
        """QKV generation, output projection, FC1 and FC2 for ``batch`` tokens (m = batch).

        QKV: d_model -> (heads + 2 kv_heads) x d_head per device; projection: the device's
        heads x d_head -> d_model (partial sums all-reduced over TP); FC1: d_model -> ffn
        per device (2 x for SwiGLU: gate and up); FC2: ffn per device -> d_model.
        """
        _require(isinstance(batch, int) and batch >= 1, "batch", f"must be positive, got {batch}")
        qkv = (self.heads_per_device + 2 * self.kv_heads_per_device) * self.d_head
        fc1 = self.ffn_per_device * (2 if self.activation == "swiglu" else 1)
        return (GemmShape("qkv", batch, self.d_model, qkv),
                GemmShape("proj", batch, self.q_dim_per_device, self.d_model),
                GemmShape("fc1", batch, self.d_model, fc1),
                GemmShape("fc2", batch, self.ffn_per_device, self.d_model))

    def attention(self, seq_len: int) -> AttentionShape:
        """Attention sizes of one request with ``seq_len`` cached tokens, one layer, one device."""
        _require(isinstance(seq_len, int) and seq_len >= 1, "seq_len",
                 f"must be positive, got {seq_len}")
        return AttentionShape(self.heads_per_device, self.kv_heads_per_device, self.d_head,
                              seq_len)

    def weight_bytes_per_layer(self) -> int:
        """FP16 weights of one layer on one device (GEMMs only)."""
        return sum(g.weight_bytes for g in self.gemms(1))

    def summary(self) -> str:
        gqa = f", {self.kv_heads} KV heads" if self.kv_heads != self.heads else ""
        return (f"{self.name}: d_model {self.d_model}, {self.heads} heads x {self.d_head}{gqa}, "
                f"{self.layers} layers, FFN {self.ffn} ({self.activation}), TP {self.tp}, "
                f"PP {self.pp}")


def _gpt3(name, d_model, heads, layers, tp, pp=1):
    return ModelShape(name, d_model, heads, layers, ffn=4 * d_model, tp=tp, pp=pp,
                      source="NeuPIMs (ASPLOS 2024) evaluation, NEUPIMS.md 6")


def _llama(name, d_model, heads, kv_heads, layers, ffn, max_seq_len, tp, pp=1):
    return ModelShape(name, d_model, heads, layers, ffn=ffn, kv_heads=kv_heads, tp=tp, pp=pp,
                      activation="swiglu", max_seq_len=max_seq_len,
                      source="published model configuration; TP/PP chosen by this project")


def _test(name, d_model, heads, ffn, kv_heads=None, activation="gelu", max_seq_len=256,
          d_head=32):
    return ModelShape(name, d_model, heads, 2, ffn=ffn, d_head=d_head, kv_heads=kv_heads,
                      activation=activation, max_seq_len=max_seq_len,
                      source=f"test model sized for an RTL slice (d_head {d_head})")


#: Width scale of the GPT-3 shapes run on the RTL slice (``sim.reproduce``).
SLICE_SCALE = 32


def _gpt3_slice(name, d_model, heads, d_head=32):
    """GPT-3 ``name`` at 1/32 of its width (d_model / 32 in heads of ``d_head``, FFN 4 d)
    over 2 layers: with batches / 32 it keeps the paper's ratio of KV to weight traffic per
    layer (L B / 6 d) at the same context lengths (``sim.reproduce``). Heads of 32 fit
    every model's width; heads of the paper's 128 only 7B's (1 head) and 175B's (3)."""
    d = d_model // SLICE_SCALE
    suffix = "" if d_head == 32 else f"-h{d_head}"
    return ModelShape(f"{name}-s{SLICE_SCALE}{suffix}", d, d // d_head, 2, ffn=4 * d,
                      d_head=d_head,
                      source=f"{name} ({heads} heads, d_model {d_model}) at 1/{SLICE_SCALE} "
                             f"width in heads of {d_head} for the RTL slice")


MODELS: dict[str, ModelShape] = {m.name: m for m in (
    _gpt3("gpt3-7b", 4096, 32, 32, tp=4),
    _gpt3("gpt3-13b", 5120, 40, 40, tp=4),
    _gpt3("gpt3-30b", 7168, 56, 48, tp=4, pp=2),
    _gpt3("gpt3-175b", 12288, 96, 96, tp=8, pp=4),
    _llama("llama2-7b", 4096, 32, 32, 32, 11008, 4096, tp=4),
    _llama("llama2-13b", 5120, 40, 40, 40, 13824, 4096, tp=4),
    _llama("llama2-70b", 8192, 64, 8, 80, 28672, 4096, tp=8, pp=2),
    _llama("llama3-8b", 4096, 32, 8, 32, 14336, 8192, tp=4),
    _llama("llama3-70b", 8192, 64, 8, 80, 28672, 8192, tp=8, pp=2),
    _gpt3_slice("gpt3-7b", 4096, 32),
    _gpt3_slice("gpt3-13b", 5120, 40),
    _gpt3_slice("gpt3-30b", 7168, 56),
    _gpt3_slice("gpt3-175b", 12288, 96),
    _gpt3_slice("gpt3-7b", 4096, 32, d_head=128),
    _gpt3_slice("gpt3-175b", 12288, 96, d_head=128),
    _test("tiny-gpt", 64, 2, 256),
    _test("tiny-gpt-h64", 64, 1, 256, d_head=64),
    _test("small-gpt", 128, 4, 512, max_seq_len=512),
    _test("tiny-gqa", 128, 4, 256, kv_heads=2, activation="swiglu"),
)}


def model_names() -> list[str]:
    return list(MODELS)


def get_model(name: str) -> ModelShape:
    """The registered shape called ``name`` (case-insensitive); an unknown name raises
    :class:`ModelError` listing the known names."""
    key = str(name).strip().lower()
    if key not in MODELS:
        raise ModelError("name", f"unknown model {name!r}; known models: {', '.join(MODELS)}")
    return MODELS[key]
