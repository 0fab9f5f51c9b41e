"""The ``npu-only`` KV cache: laid out for the NPU's DMA, not for a PIM.

With no PIM to serve, a request's tokens need not share a channel (``sim.kv_layout``
keeps them in one so that the channel's banks compute on them). Here every request's K
and V of a layer are one contiguous run of HBM bursts. The address map (row, column,
channel, rank, bankgroup, bank) deals consecutive bursts out over every bank of every
channel, so one DMA of a head's K or V streams from all channels at once: the cache is
read as fast as the bus allows (DESIGN.md: a fair ``npu-only`` baseline).

Per request and layer, head after head (E = FP16 per burst, 32 for 64-byte bursts):

- **K**: ``d_head / E`` pieces, each ``slots`` bursts: burst t of piece j holds token
  t's elements [E j, E j + E). A piece is loaded one burst per scratchpad word, so the
  words are the rows of ``K`` for the logit GEMM.
- **V**: ``slots / E`` token chunks, each ``d_head`` bursts: burst d of chunk c holds
  dimension d of tokens [E c, E c + E) (zeros past the last token). A chunk's words are
  the rows of ``V^T`` for the output GEMM.

``slots`` is the request's tokens (its cached ones and every step's new one) rounded up
to E. Runs follow one another from HBM address ``base``, layer by layer, request by
request in each.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["NpuKV"]


class NpuKV:
    """Addresses of the ``npu-only`` KV cache (module docstring).

    ``heads``, ``d_head``: the KV heads of one device and their width (a multiple of a
    burst's FP16). ``burst_bytes``: the DRAM burst. ``base``: the first byte address."""

    def __init__(self, heads: int, d_head: int, burst_bytes: int = 64, base: int = 0):
        self.per = burst_bytes // 2                      # FP16 per burst
        if d_head % self.per:
            raise ValueError(f"d_head {d_head} is not a multiple of a burst's {self.per} FP16")
        self.heads, self.d_head, self.burst = heads, d_head, burst_bytes
        self.pieces = d_head // self.per
        self.end = base
        self._runs: dict[tuple[int, int], tuple[int, int]] = {}    # (request, layer) -> (start, slots)

    def slots_for(self, tokens: int) -> int:
        return max(1, math.ceil(tokens / self.per)) * self.per

    def head_bursts(self, slots: int) -> int:
        """Bursts of one head's K and V for ``slots`` token slots."""
        return 2 * self.pieces * slots

    def add(self, request: int, layer: int, tokens: int) -> int:
        """Reserve room for ``tokens`` tokens of ``request`` in ``layer``; its first address."""
        if (request, layer) in self._runs:
            raise ValueError(f"request {request}, layer {layer} is placed already")
        slots = self.slots_for(tokens)
        start = self.end
        self._runs[request, layer] = (start, slots)
        self.end += self.heads * self.head_bursts(slots) * self.burst
        return start

    def slots(self, request: int, layer: int) -> int:
        return self._runs[request, layer][1]

    def _head(self, request: int, layer: int, head: int) -> tuple[int, int]:
        start, slots = self._runs[request, layer]
        return start + head * self.head_bursts(slots) * self.burst, slots

    def k(self, request: int, layer: int, head: int, piece: int, token: int = 0) -> int:
        """Byte address of ``token``'s burst of K piece ``piece`` of ``head``."""
        at, slots = self._head(request, layer, head)
        return at + (piece * slots + token) * self.burst

    def v(self, request: int, layer: int, head: int, chunk: int, dim: int = 0) -> int:
        """Byte address of dimension ``dim``'s burst of V token chunk ``chunk``."""
        at, slots = self._head(request, layer, head)
        return at + (self.pieces * slots + chunk * self.d_head + dim) * self.burst

    def writes(self, request: int, layer: int, keys, values) -> dict[int, int]:
        """{byte address: burst} that store cached tokens ``keys``/``values`` (T x heads x
        d_head FP16 bits) of ``request`` in ``layer``."""
        keys, values = np.asarray(keys, np.uint16), np.asarray(values, np.uint16)
        want = (self.heads, self.d_head)
        if keys.shape != values.shape or keys.ndim != 3 or keys.shape[1:] != want:
            raise ValueError(f"keys {keys.shape} and values {values.shape} must both be "
                             f"tokens x {want[0]} heads x {want[1]}")
        tokens = len(keys)
        slots = self.slots(request, layer)
        if tokens > slots:
            raise ValueError(f"{tokens} tokens do not fit the {slots} slots of request "
                             f"{request}, layer {layer}")
        out = {}
        per = self.per
        chunks = math.ceil(tokens / per)
        padded = np.zeros((chunks * per,) + want, np.uint16)
        padded[:tokens] = values
        for h in range(self.heads):
            k_rows = keys[:, h, :].reshape(tokens, self.pieces, per)
            for j in range(self.pieces):
                out.update(_bursts(self.k(request, layer, h, j), k_rows[:, j, :], self.burst))
            # chunk c, dimension d: the chunk's tokens of d
            v_rows = padded[:, h, :].reshape(chunks, per, self.d_head).transpose(0, 2, 1)
            out.update(_bursts(self.v(request, layer, h, 0), v_rows.reshape(-1, per),
                               self.burst))
        return out


def _bursts(address: int, rows: np.ndarray, burst: int) -> dict[int, int]:
    """Consecutive bursts from ``address``: one per row of FP16 (element 0 low)."""
    data = np.ascontiguousarray(rows, dtype="<u2").tobytes()
    return {address + i * burst: int.from_bytes(data[i * burst:(i + 1) * burst], "little")
            for i in range(len(rows))}
