"""The links between the devices of a tensor- and pipeline-parallel group: an estimate of
the time a decode step spends communicating, added beside the RTL's cycles (the RTL
simulates one device's share of a model, ``sim.models``, and its communication takes no
time there).

Per decode step, every device of a TP group of ``tp`` devices all-reduces the batch's
activations (``batch x d_model`` FP16) twice per layer (after the attention's output
projection and after the FFN's second GEMM, Megatron-style), a ring all-reduce: ``2 (tp
- 1)`` steps, each sending ``1 / tp`` of the bytes over a link and waiting one hop. With
``pp`` pipeline stages, every stage hands the batch's activations to the next once per
step (one transfer; the last stage's tokens are a few bytes). Nothing overlaps the
computation: an upper bound on what communication adds to a step, under the links'
assumed bandwidth and latency.
"""
from __future__ import annotations

from dataclasses import dataclass

from .models import ModelShape

__all__ = ["Interconnect", "LinkError", "step_communication"]

FP16_BYTES = 2


class LinkError(ValueError):
    """An interconnect parameter out of range; ``field`` names it."""

    def __init__(self, field: str, message: str):
        super().__init__(f"Interconnect.{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class Interconnect:
    """A device's links: ``gbytes_per_s`` per direction (default: an A100's NVLink 3, 12
    links of 25 GB/s, the paper's GPU baseline), ``hop_us`` per transfer (a ring step or
    a hand-over: link latency and synchronization; an assumption)."""
    gbytes_per_s: float = 300.0
    hop_us: float = 1.0

    def __post_init__(self):
        if not self.gbytes_per_s > 0:
            raise LinkError("gbytes_per_s", f"must be > 0, got {self.gbytes_per_s!r}")
        if not self.hop_us >= 0:
            raise LinkError("hop_us", f"must be >= 0, got {self.hop_us!r}")

    def transfer_s(self, nbytes: float) -> float:
        """One transfer of ``nbytes`` over one link."""
        return self.hop_us * 1e-6 + nbytes / (self.gbytes_per_s * 1e9)

    def allreduce_s(self, nbytes: float, devices: int) -> float:
        """A ring all-reduce of ``nbytes`` over ``devices`` (0 for one device)."""
        if devices <= 1:
            return 0.0
        return 2 * (devices - 1) * self.transfer_s(nbytes / devices)


def step_communication(model: ModelShape, batch: int, link: Interconnect) -> dict:
    """Seconds one device spends communicating per decode step of ``batch`` requests:
    ``allreduce_s`` (TP, 2 per layer of the device's share), ``handover_s`` (PP) and
    ``total_s``; ``bytes`` of one all-reduce or hand-over (the batch's activations)."""
    nbytes = batch * model.d_model * FP16_BYTES
    allreduce = 2 * model.layers_per_device * link.allreduce_s(nbytes, model.tp)
    handover = link.transfer_s(nbytes) if model.pp > 1 else 0.0
    return {"bytes": nbytes, "allreduce_s": allreduce, "handover_s": handover,
            "total_s": allreduce + handover}
