"""The ``npu-only`` KV cache: laid out for the NPU's DMA and its attention GEMMs, not for a PIM.

With no PIM to serve, a request's tokens need not share a channel (``sim.kv_layout``
keeps them in one so that the channel's banks compute on them). Here every request's K
and V of a layer are one contiguous run of HBM bursts. The address map (row, column,
channel, rank, bankgroup, bank) deals consecutive bursts out over every bank of every
channel, so a DMA of a head's K, or of a request's V, streams from many channels at
once: the cache is read as fast as the bus allows (DESIGN.md: a fair ``npu-only``
baseline).

Two forms, one per way the array runs the attention (``sim.decode.compiler`` picks the
one its cost estimate finds faster, ``npu_attention_form``): ``stream``
(:class:`NpuKVStream`: ``K . q^T`` and ``V^T . s^T``, K and V^T streamed through the
array, best on small arrays) and ``weights`` (:class:`NpuKV`: ``q . K^T`` and ``s . V``
with K and V as the array's weights and one row streamed, for several heads per GEMM
where a scratchpad word holds several heads' bursts; best on large arrays). The
``weights`` form, per request and layer (E = FP16 per burst, 32 for 64-byte bursts;
k = ``word_bursts``, the bursts of one scratchpad word):

- **K**, head after head: ``slots / E`` token chunks of ``d_head`` bursts, burst d of
  chunk c holding dimension d of tokens [E c, E c + E) (zeros past the last token). A
  DMA per head (one burst per word, in slice ``head % k``) makes word ``c d_head + d``
  a row of ``K^T`` for k heads at once, a head per slice.
- **V**, in groups of ``v_heads = max(1, k / pieces)`` heads (pieces = d_head / E):
  per token slot a row of ``v_words`` scratchpad words, head m of the group in bursts
  [m pieces, (m + 1) pieces), the rest of the row unused; group after group. One DMA
  of the whole region fills word ``(g slots + t) v_words``: row t of ``V`` for the
  group's heads side by side.

``slots`` is the request's tokens (its cached ones and every step's new one) rounded up
to E. A new token is a burst per V piece and, in its K chunk, a lane of ``d_head``
bursts. Runs follow one another from HBM address ``base``, layer by layer, request by
request in each.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["NpuKV", "NpuKVStream"]


class _Runs:
    """A run of bursts per (request, layer), one after another from ``base``; the layout
    inside a run is the subclass's (``run_bursts``)."""

    form = ""

    def __init__(self, heads: int, d_head: int, burst_bytes: int = 64, base: int = 0):
        self.per = burst_bytes // 2                      # FP16 per burst
        if d_head % self.per:
            raise ValueError(f"d_head {d_head} is not a multiple of a burst's {self.per} FP16")
        self.heads, self.d_head, self.burst = heads, d_head, burst_bytes
        self.pieces = d_head // self.per
        self.end = base
        self._runs: dict[tuple[int, int], tuple[int, int]] = {}    # (request, layer) -> (start, slots)

    def run_bursts(self, slots: int) -> int:
        raise NotImplementedError

    def slots_for(self, tokens: int) -> int:
        return max(1, math.ceil(tokens / self.per)) * self.per

    def add(self, request: int, layer: int, tokens: int) -> int:
        """Reserve room for ``tokens`` tokens of ``request`` in ``layer``; its first address."""
        if (request, layer) in self._runs:
            raise ValueError(f"request {request}, layer {layer} is placed already")
        slots = self.slots_for(tokens)
        start = self.end
        self._runs[request, layer] = (start, slots)
        self.end += self.run_bursts(slots) * self.burst
        return start

    def slots(self, request: int, layer: int) -> int:
        return self._runs[request, layer][1]

    def _checked(self, request: int, layer: int, keys, values) -> tuple:
        """``keys``, ``values`` as FP16 bits, T x heads x d_head with T within the slots."""
        keys, values = np.asarray(keys, np.uint16), np.asarray(values, np.uint16)
        want = (self.heads, self.d_head)
        if keys.shape != values.shape or keys.ndim != 3 or keys.shape[1:] != want:
            raise ValueError(f"keys {keys.shape} and values {values.shape} must both be "
                             f"tokens x {want[0]} heads x {want[1]}")
        slots = self.slots(request, layer)
        if len(keys) > slots:
            raise ValueError(f"{len(keys)} tokens do not fit the {slots} slots of request "
                             f"{request}, layer {layer}")
        return keys, values

    def _chunk_rows(self, x: np.ndarray, head: int) -> np.ndarray:
        """``head``'s tokens of ``x`` transposed by 32-token chunk: row c d_head + d holds
        dimension d of chunk c's tokens (zeros past the last)."""
        per, chunks = self.per, math.ceil(len(x) / self.per)
        padded = np.zeros((chunks * per, self.d_head), np.uint16)
        padded[:len(x)] = x[:, head, :]
        return padded.reshape(chunks, per, self.d_head).transpose(0, 2, 1).reshape(-1, per)


class NpuKV(_Runs):
    """The ``weights`` form's cache (module docstring).

    ``heads``, ``d_head``: the KV heads of one device and their width (a multiple of a
    burst's FP16). ``burst_bytes``: the DRAM burst. ``word_bursts``: bursts per NPU
    scratchpad word (the V rows' width). ``base``: the first byte address."""

    form = "weights"

    def __init__(self, heads: int, d_head: int, burst_bytes: int = 64, word_bursts: int = 1,
                 base: int = 0):
        super().__init__(heads, d_head, burst_bytes, base)
        if word_bursts < 1:
            raise ValueError(f"word_bursts must be >= 1, got {word_bursts}")
        self.v_heads = max(1, word_bursts // self.pieces)
        self.v_groups = math.ceil(heads / self.v_heads)
        self.v_words = math.ceil(self.v_heads * self.pieces / word_bursts)
        self.v_row = self.v_words * word_bursts          # bursts per V row

    def run_bursts(self, slots: int) -> int:
        """Bursts of one request's K and V in a layer for ``slots`` token slots."""
        return self.heads * slots * self.pieces + self.v_groups * slots * self.v_row

    def k(self, request: int, layer: int, head: int, chunk: int = 0, dim: int = 0) -> int:
        """Byte address of dimension ``dim``'s burst of ``head``'s K token chunk ``chunk``."""
        start, slots = self._runs[request, layer]
        chunks = slots // self.per
        if not 0 <= chunk < chunks:
            raise ValueError(f"chunk {chunk} is past the {slots} slots of request {request}")
        return start + ((head * chunks + chunk) * self.d_head + dim) * self.burst

    def v_group(self, request: int, layer: int, group: int, token: int = 0) -> int:
        """Byte address of V group ``group``'s row of token slot ``token``."""
        start, slots = self._runs[request, layer]
        at = self.heads * slots * self.pieces + (group * slots + token) * self.v_row
        return start + at * self.burst

    def v(self, request: int, layer: int, head: int, piece: int, token: int = 0) -> int:
        """Byte address of ``token``'s burst of V piece ``piece`` of ``head``."""
        group, m = divmod(head, self.v_heads)
        return (self.v_group(request, layer, group, token)
                + (m * self.pieces + piece) * self.burst)

    def writes(self, request: int, layer: int, keys, values) -> dict[int, int]:
        """{byte address: burst} that store cached tokens ``keys``/``values`` (T x heads x
        d_head FP16 bits) of ``request`` in ``layer``."""
        keys, values = self._checked(request, layer, keys, values)
        out, tokens, per = {}, len(keys), self.per
        for h in range(self.heads):
            out.update(_bursts(self.k(request, layer, h), self._chunk_rows(keys, h), self.burst))
            v_rows = values[:, h, :].reshape(tokens, self.pieces, per)
            for t in range(tokens):
                out.update(_bursts(self.v(request, layer, h, 0, t), v_rows[t], self.burst))
        return out



class NpuKVStream(_Runs):
    """The ``stream`` form's cache (``K . q^T`` and ``V^T . s^T``: K and V^T stream
    through the array as its rows, the query and the scores are its one column), per
    request and layer, head after head:

    - **K**: ``d_head / E`` pieces, each ``slots`` bursts: burst t of piece j holds token
      t's elements [E j, E j + E). A piece is loaded one burst per scratchpad word, so
      the words are the rows of ``K`` for the logit GEMM.
    - **V**: ``slots / E`` token chunks, each ``d_head`` bursts: burst d of chunk c holds
      dimension d of tokens [E c, E c + E) (zeros past the last token). A chunk's words
      are the rows of ``V^T`` for the output GEMM.

    A new token is a burst per K piece and, in its V chunk, a lane of ``d_head`` bursts."""

    form = "stream"

    def run_bursts(self, slots: int) -> int:
        return self.heads * self.head_bursts(slots)

    def head_bursts(self, slots: int) -> int:
        """Bursts of one head's K and V for ``slots`` token slots."""
        return 2 * self.pieces * slots

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
        keys, values = self._checked(request, layer, keys, values)
        out, tokens, per = {}, len(keys), self.per
        for h in range(self.heads):
            k_rows = keys[:, h, :].reshape(tokens, self.pieces, per)
            for j in range(self.pieces):
                out.update(_bursts(self.k(request, layer, h, j), k_rows[:, j, :], self.burst))
            out.update(_bursts(self.v(request, layer, h, 0), self._chunk_rows(values, h),
                               self.burst))
        return out


def _bursts(address: int, rows: np.ndarray, burst: int) -> dict[int, int]:
    """Consecutive bursts from ``address``: one per row of FP16 (element 0 low)."""
    data = np.ascontiguousarray(rows, dtype="<u2").tobytes()
    return {address + i * burst: int.from_bytes(data[i * burst:(i + 1) * burst], "little")
            for i in range(len(rows))}
