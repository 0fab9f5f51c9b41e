"""The ``npu-only`` KV cache: laid out for the NPU's DMA and its one-row GEMMs, not for a PIM.

With no PIM to serve, a request's tokens need not share a channel (``sim.kv_layout``
keeps them in one so that the channel's banks compute on them). Here every request's K
and V of a layer are one contiguous run of HBM bursts. The address map (row, column,
channel, rank, bankgroup, bank) deals consecutive bursts out over every bank of every
channel, so one DMA of a head's K or V streams from all channels at once: the cache is
read as fast as the bus allows (DESIGN.md: a fair ``npu-only`` baseline).

The attention runs as two GEMMs of one row per head, K and V as the array's weights:
``logits = q . K^T`` and ``out = s . V``. Their weight rows are K^T's rows (a dimension
of every token) and V's rows (a token's dimensions). Per request and layer, head after
head (E = FP16 per burst, 32 for 64-byte bursts; ``word_bursts`` = k bursts per
scratchpad word):

- **K**: ``slots / E`` token chunks of ``d_head`` bursts: burst d of chunk c holds
  dimension d of tokens [E c, E c + E) (zeros past the last token). The chunks are
  ordered by their slice ``c % k`` in a scratchpad word, then by ``c // k``: one DMA per
  slice (spread, a burst per word) puts tokens [k E g, k E g + k E) of dimension d in
  word ``g d_head + d``, a row of ``K^T`` for the logit GEMM of token group g.
- **V**: ``d_head / E`` pieces of ``slots`` bursts: burst t of piece j holds token t's
  elements [E j, E j + E). One DMA per piece (spread, slice ``j % k``) puts token t's
  row of V in word t (pieces past a word's k in further buffers).

``slots`` is the request's tokens (its cached ones and every step's new one) rounded up
to E. A new token is a burst per V piece and, in its K chunk, a lane of ``d_head``
bursts. Runs follow one another from HBM address ``base``, layer by layer, request by
request in each.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["NpuKV"]


class NpuKV:
    """Addresses of the ``npu-only`` KV cache (module docstring).

    ``heads``, ``d_head``: the KV heads of one device and their width (a multiple of a
    burst's FP16). ``burst_bytes``: the DRAM burst. ``word_bursts``: bursts per NPU
    scratchpad word (the K chunks' order). ``base``: the first byte address."""

    def __init__(self, heads: int, d_head: int, burst_bytes: int = 64, word_bursts: int = 1,
                 base: int = 0):
        self.per = burst_bytes // 2                      # FP16 per burst
        if d_head % self.per:
            raise ValueError(f"d_head {d_head} is not a multiple of a burst's {self.per} FP16")
        if word_bursts < 1:
            raise ValueError(f"word_bursts must be >= 1, got {word_bursts}")
        self.heads, self.d_head, self.burst = heads, d_head, burst_bytes
        self.word_bursts = word_bursts
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

    def _chunk_place(self, chunks: int, chunk: int) -> int:
        """Place of ``chunk`` among ``chunks``: by slice ``chunk % k``, then ``chunk // k``."""
        k = self.word_bursts
        s, g = chunk % k, chunk // k
        before = sum(math.ceil((chunks - i) / k) for i in range(s))
        return before + g

    def slice_chunks(self, tokens: int, s: int) -> int:
        """K chunks of slice ``s`` that hold some of ``tokens`` tokens (one DMA loads them)."""
        return max(0, math.ceil((math.ceil(tokens / self.per) - s) / self.word_bursts))

    def k(self, request: int, layer: int, head: int, chunk: int, dim: int = 0) -> int:
        """Byte address of dimension ``dim``'s burst of K token chunk ``chunk`` (the slice
        ``chunk % k`` runs on from chunk ``chunk % k``'s address)."""
        at, slots = self._head(request, layer, head)
        if not 0 <= chunk < slots // self.per:
            raise ValueError(f"chunk {chunk} is past the {slots} slots of request {request}")
        return at + (self._chunk_place(slots // self.per, chunk) * self.d_head + dim) * self.burst

    def v(self, request: int, layer: int, head: int, piece: int, token: int = 0) -> int:
        """Byte address of ``token``'s burst of V piece ``piece`` of ``head``."""
        at, slots = self._head(request, layer, head)
        return at + ((self.pieces + piece) * slots + token) * self.burst

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
        padded[:tokens] = keys
        for h in range(self.heads):
            # chunk c, dimension d: the chunk's tokens of d
            k_rows = padded[:, h, :].reshape(chunks, per, self.d_head).transpose(0, 2, 1)
            for c in range(chunks):
                out.update(_bursts(self.k(request, layer, h, c), k_rows[c], self.burst))
            v_rows = values[:, h, :].reshape(tokens, self.pieces, per)
            for j in range(self.pieces):
                out.update(_bursts(self.v(request, layer, h, j), v_rows[:, j, :], self.burst))
        return out


def _bursts(address: int, rows: np.ndarray, burst: int) -> dict[int, int]:
    """Consecutive bursts from ``address``: one per row of FP16 (element 0 low)."""
    data = np.ascontiguousarray(rows, dtype="<u2").tobytes()
    return {address + i * burst: int.from_bytes(data[i * burst:(i + 1) * burst], "little")
            for i in range(len(rows))}
