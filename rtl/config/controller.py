"""Sizes and policy knobs of the per-channel memory controller (NEUPIMS.md 2.4)."""
from __future__ import annotations

from dataclasses import dataclass

from .errors import is_power_of_two, require, require_positive_ints


@dataclass(frozen=True)
class ControllerConfig:
    """``tags``: distinct request tags; a tag is outstanding from request to response, and a
    request whose tag is outstanding waits (so responses of one tag come back in order).
    ``read_queue`` / ``write_queue``: transactions of each kind held at once (reference 32).
    ``bank_queue_depth``: requests held per bank (the per-bank command queues).
    ``write_drain_threshold``: writes are drained first once more than this many wait and no
    read waits, or once the write queue is full (until it is empty).
    ``row_hit_limit``: row hits a bank may serve past its oldest (conflicting) request
    before that request precharges.
    ``pim_queue``: PIM transactions (GWRITE, PIM_HEADER, PIM_GEMV) held in order.
    ``response_depth``: buffered responses per response stream (read data, write
    acknowledgements, GEMV results); commands wait for a free slot, so a stalled
    requester never loses data."""
    tags: int = 64
    read_queue: int = 32
    write_queue: int = 32
    bank_queue_depth: int = 16
    write_drain_threshold: int = 8
    row_hit_limit: int = 4
    pim_queue: int = 16
    response_depth: int = 32

    def __post_init__(self):
        require_positive_ints(self, ("tags", "read_queue", "write_queue", "bank_queue_depth",
                                     "write_drain_threshold", "row_hit_limit", "pim_queue",
                                     "response_depth"))
        require(is_power_of_two(self.tags), "ControllerConfig.tags",
                f"must be a power of two, got {self.tags}")
        require(self.read_queue <= self.tags, "ControllerConfig.read_queue",
                f"{self.read_queue} exceeds the {self.tags} tags")
        require(self.write_queue <= self.tags, "ControllerConfig.write_queue",
                f"{self.write_queue} exceeds the {self.tags} tags")
        require(self.write_drain_threshold < self.write_queue,
                "ControllerConfig.write_drain_threshold",
                f"{self.write_drain_threshold} must be below write_queue {self.write_queue}")

    @property
    def tag_bits(self) -> int:
        return max(1, (self.tags - 1).bit_length())


def refresh_delay_bound(config) -> int:
    """Most clocks an all-bank REF can trail its due time (``tREFI`` after the previous REF).

    Once a refresh is due the controller issues no new ACT, G_ACT, RD, WR, GWRITE or
    PIM_GEMV. What is already running finishes (a PIM_GEMV of a full row plus tRTP, a
    GWRITE, tRAS after an ACT, write recovery), then every open buffer is precharged, one
    command per clock (two buffers per bank), then tRP, then REF."""
    t, bus, g = config.timing, config.bus, config.geometry
    running = max(bus.gemv_busy(bus.comps_per_row) + t.tRTP, bus.gwrite_busy, t.tRAS,
                  bus.wr_to_pre, bus.rd_to_pre)
    return running + 2 * g.banks + t.tRP + 1
