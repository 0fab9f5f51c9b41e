"""Decode scheduling (NEUPIMS.md 5): channel assignment, sub-batches, the stage pipeline.

- Channel assignment pins each request (its whole KV cache) to one channel.
  :func:`assign_greedy` is NeuPIMs' greedy min-load bin packing: requests sorted by
  sequence length, longest first (ties: input order), each placed on the channel with the
  least load so far (ties: lowest channel). :func:`assign_round_robin` is the naive
  baseline: request i on channel i mod C. The load of a request is an estimate of its
  multi-head-attention latency, :func:`mha_load`, from the KV layout's PIM work
  (:func:`sim.kv_layout.pim_work`): GWRITEs x ``config.bus.gwrite_busy`` + row sets opened
  x ``config.bus.row_set_open(bankgroups)`` + sum of ``config.bus.gemv_busy(k)`` over the
  PIM_GEMVs. It is only a scheduling heuristic (no refresh, no normal traffic, no
  overlap), never a reported number.
- :func:`split_sub_batches` halves each channel's requests into sub-batch 1 and 2.
- :func:`pipeline_total` is the closed form of the stage pipeline over N layers,
  ``A + B + (C + D)(N - 1) + E + F``, from measured stage cycles.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass, fields
from functools import lru_cache
from typing import Callable, Mapping, Sequence, Union

from .kv_layout import KVLayout, pim_work

__all__ = ["mha_load", "load_function", "ChannelAssignment", "assign_greedy",
           "assign_round_robin", "assign_channels", "SubBatches", "split_sub_batches",
           "STAGES", "STAGE_WORK", "StageCycles", "stage_sequence", "pipeline_total",
           "serial_total"]

LoadSpec = Union[KVLayout, Callable[[int], int]]


# ----------------------------------------------------------------------------- load

def mha_load(layout: KVLayout, kv_len: int, layers: int = 1) -> int:
    """Estimated PIM cycles of one request's attention over ``kv_len`` tokens in ``layers``
    layers (a heuristic for balancing channels; see the module docstring)."""
    return pim_work(layout, kv_len).cycles(layout.config) * layers


def load_function(load: LoadSpec, layers: int = 1) -> Callable[[int], int]:
    """A ``length -> cycles`` function: :func:`mha_load` of a layout (memoised), or
    ``load`` itself if it is already a callable."""
    if isinstance(load, KVLayout):
        return lru_cache(maxsize=None)(lambda length: mha_load(load, length, layers))
    if callable(load):
        return load
    raise TypeError(f"load must be a KVLayout or a callable length -> cycles, got {load!r}")


# ----------------------------------------------------------------------------- assignment

@dataclass(frozen=True)
class ChannelAssignment:
    """Requests (indices into ``lengths``) per channel, in placement order, and each
    channel's estimated load (sum of its requests' loads)."""
    policy: str
    lengths: tuple
    channels: tuple          # tuple per channel of request indices
    loads: tuple             # per channel

    def channel_of(self) -> list[int]:
        """The channel of each request, by request index."""
        out = [-1] * len(self.lengths)
        for channel, members in enumerate(self.channels):
            for index in members:
                out[index] = channel
        return out

    @property
    def makespan(self) -> int:
        return max(self.loads)

    @property
    def imbalance(self) -> float:
        """Largest channel load over the mean load (1.0 = perfectly balanced)."""
        mean = sum(self.loads) / len(self.loads)
        return self.makespan / mean if mean else 1.0


def _check(lengths: Sequence[int], channels: int) -> tuple:
    if channels < 1:
        raise ValueError(f"channels must be positive, got {channels}")
    lengths = tuple(int(n) for n in lengths)
    bad = [n for n in lengths if n < 1]
    if bad:
        raise ValueError(f"sequence lengths must be positive, got {bad[0]}")
    return lengths


def assign_greedy(lengths: Sequence[int], channels: int, load: LoadSpec) -> ChannelAssignment:
    """Greedy min-load bin packing: longest first, each on the least-loaded channel."""
    lengths, cost = _check(lengths, channels), load_function(load)
    heap = [(0, c) for c in range(channels)]
    members = [[] for _ in range(channels)]
    loads = [0] * channels
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        current, channel = heapq.heappop(heap)
        members[channel].append(index)
        loads[channel] = current + cost(lengths[index])
        heapq.heappush(heap, (loads[channel], channel))
    return ChannelAssignment("greedy", lengths, tuple(map(tuple, members)), tuple(loads))


def assign_round_robin(lengths: Sequence[int], channels: int, load: LoadSpec) -> ChannelAssignment:
    """The baseline: request i on channel i mod ``channels`` (loads computed the same way)."""
    lengths, cost = _check(lengths, channels), load_function(load)
    members = [tuple(range(c, len(lengths), channels)) for c in range(channels)]
    loads = tuple(sum(cost(lengths[i]) for i in m) for m in members)
    return ChannelAssignment("round-robin", lengths, tuple(members), loads)


def assign_channels(lengths: Sequence[int], channels: int, load: LoadSpec,
                    policy: str = "greedy") -> ChannelAssignment:
    """``policy``: "greedy" (NeuPIMs) or "round-robin" (the naive NPU+PIM baseline)."""
    policies = {"greedy": assign_greedy, "round-robin": assign_round_robin}
    if policy not in policies:
        raise ValueError(f"unknown assignment policy {policy!r}; "
                         f"choose one of {', '.join(policies)}")
    return policies[policy](lengths, channels, load)


# ----------------------------------------------------------------------------- sub-batches

@dataclass(frozen=True)
class SubBatches:
    """Per channel, the request indices of sub-batch 1 (``first``) and 2 (``second``)."""
    first: tuple
    second: tuple

    def members(self, which: int) -> list[int]:
        """All request indices of sub-batch ``which`` (1 or 2), channel by channel."""
        if which not in (1, 2):
            raise ValueError(f"sub-batch must be 1 or 2, got {which}")
        part = self.first if which == 1 else self.second
        return [i for channel in part for i in channel]


def split_sub_batches(assignment: ChannelAssignment, cores: int = 1) -> SubBatches:
    """Halve each channel's requests (NEUPIMS.md 5).

    Within a channel, requests sorted longest first are dealt alternately to the two
    sub-batches, so both halves carry similar attention work. A channel with an odd count
    gives its extra request to sub-batch 1 and the next odd channel to sub-batch 2, and so
    on (the rounding alternates across channels); channels with even counts likewise
    alternate which sub-batch gets their longest request. Sub-batch sizes thus differ by
    at most one overall.

    ``cores``: channel c's attention runs on core ``c mod cores``, so the alternation goes
    over each core's channels in turn (0, cores, 2 cores, ..., then 1, cores + 1, ...):
    every core's two halves carry similar work, where channel order would give one core
    all the longer halves of one sub-batch when ``cores`` is even."""
    if cores < 1:
        raise ValueError(f"cores must be positive, got {cores}")
    lengths, channels = assignment.lengths, assignment.channels
    first, second = [()] * len(channels), [()] * len(channels)
    starts = {0: 0, 1: 0}           # by count parity: which sub-batch deals first next
    for c in sorted(range(len(channels)), key=lambda c: (c % cores, c)):
        order = sorted(channels[c], key=lambda i: (-lengths[i], i))
        parity = len(order) % 2
        start = starts[parity]
        if order:
            starts[parity] ^= 1
        leading, trailing = tuple(order[0::2]), tuple(order[1::2])   # leading: ceil half
        first[c] = leading if start == 0 else trailing
        second[c] = trailing if start == 0 else leading
    return SubBatches(tuple(first), tuple(second))


# ----------------------------------------------------------------------------- stages

STAGES = ("A", "B", "C", "D", "E", "F")

#: What each stage runs (NEUPIMS.md 5): (NPU systolic arrays, PIM).
STAGE_WORK = {
    "A": ("QKV gen SB1", None),
    "B": ("QKV gen SB2", "MHA SB1"),
    "C": ("Proj/FFN SB1 + QKV gen SB1 (next layer)", "MHA SB2"),
    "D": ("Proj/FFN SB2 + QKV gen SB2 (next layer)", "MHA SB1"),
    "E": ("Proj/FFN SB1", "MHA SB2"),
    "F": ("Proj/FFN SB2", None),
}


@dataclass(frozen=True)
class StageCycles:
    """Measured cycles of each stage (a stage ends at the barrier of NPU and PIM)."""
    A: int
    B: int
    C: int
    D: int
    E: int
    F: int

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"StageCycles.{f.name}: must be a non-negative integer, "
                                 f"got {value!r}")

    @classmethod
    def from_mapping(cls, stages: Mapping[str, int]) -> "StageCycles":
        missing = [s for s in STAGES if s not in stages]
        if missing:
            raise ValueError(f"stage cycles missing for {', '.join(missing)}")
        return cls(**{s: stages[s] for s in STAGES})

    @classmethod
    def from_parts(cls, npu: Mapping[str, int], pim: Mapping[str, int]) -> "StageCycles":
        """Each stage lasts as long as the longer of its NPU and PIM parts (absent = 0)."""
        return cls(**{s: max(npu.get(s, 0), pim.get(s, 0)) for s in STAGES})


def stage_sequence(layers: int) -> list[str]:
    """The stages run over ``layers`` layers: A, B, (C, D) x (N - 1), E, F."""
    if layers < 1:
        raise ValueError(f"layers must be positive, got {layers}")
    return ["A", "B"] + ["C", "D"] * (layers - 1) + ["E", "F"]


def pipeline_total(stages: StageCycles | Mapping[str, int], layers: int) -> int:
    """Sub-batch interleaving over N layers: A + B + (C + D)(N - 1) + E + F."""
    s = stages if isinstance(stages, StageCycles) else StageCycles.from_mapping(stages)
    if layers < 1:
        raise ValueError(f"layers must be positive, got {layers}")
    return s.A + s.B + (s.C + s.D) * (layers - 1) + s.E + s.F


def serial_total(qkv: int, mha: int, proj_ffn: int, layers: int) -> int:
    """Without sub-batching: QKV gen (all), MHA (all), Proj/FFN (all), per layer."""
    if layers < 1:
        raise ValueError(f"layers must be positive, got {layers}")
    return (qkv + mha + proj_ffn) * layers
