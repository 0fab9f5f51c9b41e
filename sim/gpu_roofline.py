"""The report's GPU-only column: a roofline estimate of a decode step on a GPU (default an
A100 40 GB, the paper's GPU baseline), not a simulation.

One GPU stands in for one NeuPIMs device and holds the same share of the model (the
point's TP and PP, ``sim.models``). Per layer of that share, each GEMM takes the longer of
its FLOPs at the GPU's FP16 peak and its weights at the HBM's bandwidth, and the
attention the longer of its FLOPs and the batch's K and V at the bandwidth; activations,
kernel launches, the LM head and the communication are left out. Every kernel runs at
the peak of what bounds it, so the estimate is a best case for the GPU: a real GPU is
slower, and NeuPIMs over it is at least the ratio shown.
"""
from __future__ import annotations

from dataclasses import dataclass

from .models import ModelShape

__all__ = ["Gpu", "GpuError", "decode_step"]


class GpuError(ValueError):
    """A GPU parameter out of range; ``field`` names it."""

    def __init__(self, field: str, message: str):
        super().__init__(f"Gpu.{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class Gpu:
    """``hbm_gbytes_per_s`` and ``fp16_tflops`` (dense tensor cores) of the GPU."""
    name: str = "A100 40 GB"
    hbm_gbytes_per_s: float = 1555.0
    fp16_tflops: float = 312.0

    def __post_init__(self):
        for field in ("hbm_gbytes_per_s", "fp16_tflops"):
            if not getattr(self, field) > 0:
                raise GpuError(field, f"must be > 0, got {getattr(self, field)!r}")

    def kernel_s(self, flops: float, nbytes: float) -> float:
        """A kernel bound by the slower of its FLOPs and its HBM bytes."""
        return max(flops / (self.fp16_tflops * 1e12), nbytes / (self.hbm_gbytes_per_s * 1e9))


def decode_step(model: ModelShape, kv_lens: list[int], gpu: Gpu) -> dict:
    """One decode step of ``len(kv_lens)`` requests (request r with ``kv_lens[r]`` cached
    tokens) on one GPU holding one device's share of ``model``: ``seconds``,
    ``gemm_s`` and ``attention_s`` (over the share's layers) and ``tokens_per_s``."""
    if not kv_lens:
        raise GpuError("kv_lens", "a decode step needs at least one request")
    gemm = sum(gpu.kernel_s(g.flops, g.weight_bytes) for g in model.gemms(len(kv_lens)))
    shapes = [model.attention(length) for length in kv_lens]
    flops = sum(2 * (a.logit_macs + a.attend_macs) for a in shapes)
    attention = gpu.kernel_s(flops, sum(a.kv_bytes for a in shapes))
    layers = model.layers_per_device
    seconds = layers * (gemm + attention)
    return {"seconds": seconds, "gemm_s": layers * gemm, "attention_s": layers * attention,
            "tokens_per_s": len(kv_lens) / seconds}
