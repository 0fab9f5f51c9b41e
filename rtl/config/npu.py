"""NPU: weight-stationary systolic arrays and vector units (NEUPIMS.md 3)."""
from __future__ import annotations

from dataclasses import dataclass

from .errors import is_power_of_two, require, require_positive_ints


@dataclass(frozen=True)
class NpuConfig:
    """``arrays`` x (``array_rows`` x ``array_cols``) systolic arrays with ``vector_lanes``-lane
    vector units. The NPU core's storage (``rtl.npu``):

    ``word_bytes``: the scratchpad word in bytes (``word_bytes / 2`` FP16 or
    ``word_bytes / 4`` FP32 values): a power of two and a multiple of the DRAM burst
    (checked by ``DeviceConfig``); default 64, one burst of every preset's DRAM. An array
    row of ``array_rows`` FP16 and a result row of ``array_cols`` FP32 must fit one word,
    and so must the built-in vector engine's ``vector_lanes`` FP32 (``rtl.npu``).
    ``scratchpad_words``: on-chip scratchpad, in words of ``word_bytes``; a power of
    two. ``accumulator_rows``: FP32 partial-sum rows of the GEMM engine (one
    row = ``array_cols`` FP32); a GEMM whose K spans more than one array tile may have at
    most this many rows M. ``instruction_words``: the instruction memory, in instructions;
    a power of two. ``dma_in_flight``: outstanding DMA requests per memory channel (each
    with its own tag; at most the controller's ``tags``). ``weight_buffers``: weight
    registers per PE: 1 (a pass's preload waits for the array to drain) or 2 (the next
    pass's weights preload while the current pass streams, as the reference model's hidden
    preload; ``rtl.npu.systolic``). ``response_buffer`` (several arrays only): responses
    each (channel, core) pair holds between the channel's one response stream and the
    core (``rtl.npu.top``); 0 routes them straight, so a response whose core takes
    another channel's this clock holds up the channel's responses for every core behind
    it (head-of-line blocking). ``dma_responses``: read responses the DMA writes to the
    scratchpad per clock, from as many channels, each through a write port of its own
    (``rtl.npu.dma``); 1 caps a core at one burst per clock. ``dma_overlap``: the DMA
    takes a command as soon as the channels it has bursts in are free (same direction as
    the commands still issuing), instead of once every channel is done with the one
    before, so transfers to different channels issue at once (``rtl.npu.dma``)."""
    arrays: int = 8
    array_rows: int = 128
    array_cols: int = 128
    vector_lanes: int = 128
    scratchpad_words: int = 1024
    accumulator_rows: int = 128
    instruction_words: int = 256
    dma_in_flight: int = 32
    word_bytes: int = 64
    weight_buffers: int = 1
    response_buffer: int = 0
    dma_responses: int = 1
    dma_overlap: bool = False

    def __post_init__(self):
        require_positive_ints(self, ("arrays", "array_rows", "array_cols", "vector_lanes",
                                     "scratchpad_words", "accumulator_rows",
                                     "instruction_words", "dma_in_flight", "word_bytes",
                                     "dma_responses"))
        require(is_power_of_two(self.word_bytes), "NpuConfig.word_bytes",
                f"must be a power of two, got {self.word_bytes}")
        require(self.weight_buffers in (1, 2), "NpuConfig.weight_buffers",
                f"must be 1 or 2, got {self.weight_buffers}")
        require(isinstance(self.response_buffer, int) and not isinstance(self.response_buffer, bool)
                and self.response_buffer >= 0, "NpuConfig.response_buffer",
                f"must be an integer >= 0, got {self.response_buffer!r}")
        require(isinstance(self.dma_overlap, bool), "NpuConfig.dma_overlap",
                f"must be True or False, got {self.dma_overlap!r}")
        for name in ("scratchpad_words", "instruction_words"):
            value = getattr(self, name)
            require(is_power_of_two(value) and value >= 2, f"NpuConfig.{name}",
                    f"must be a power of two of at least 2, got {value}")

    @property
    def macs_per_cycle(self) -> int:
        return self.arrays * self.array_rows * self.array_cols

    def tile_latency(self, k: int) -> int:
        """Reference model's tile latency: H + W - 2 + max(K, 4)."""
        return self.array_rows + self.array_cols - 2 + max(k, 4)
