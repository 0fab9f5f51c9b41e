"""KV-cache layout on a PIM channel and the PIM work of attention (NEUPIMS.md 4).

Generalised from the paper's numbers (32 banks, 512 FP16 per row, d_head 128) to any
configuration: B = ``config.geometry.banks``, E = ``row_elements`` (FP16 per row),
L = ``config.pim.lanes``, on the heads of one device (``ModelShape.*_per_device``).

Placement. A request's whole K and V (every layer) live in one channel. Storage comes in
*pages* of one row set: the same DRAM row in all B banks (the unit a PIM_HEADER opens).
A per-channel free list hands out pages (vLLM-like, lowest row first); row 0 is reserved
as the *staging* row set (query in bank 0, softmax scores in bank B // 2, each loaded
into the global buffer with GWRITE).

- **K** (token-per-bank): token t of K tile ``t // B`` lives in bank ``t mod B``; one bank
  row holds E consecutive embedding elements of that token: ``heads_per_row = E // d_head``
  KV heads side by side (head slot i at elements [i d_head, (i+1) d_head)). KV heads
  beyond one row go to further *K groups*: page ``k[tile][group]``.
- **V** (transposed): dimension j of a KV head lives in bank ``j mod B`` (V tile
  ``j // B``; with d_head not a multiple of B the last tile leaves banks unused); one bank
  row holds E consecutive tokens of that dimension (token chunk ``t // E``): page
  ``v[chunk][kv_head][v_tile]``.

Decode appends one token per layer and step: K writes the bursts of the token's row (one
row per K group); V writes one burst per dimension (the burst holding the token, with
the earlier tokens of that burst and zeros after it: writes are whole bursts).

Attention as PIM transactions (what the controller's PIM queue takes: ``GWrite``,
``Header``, ``Gemv``; plus the normal ``MemWrite`` bursts that place the query and the
scores in the staging row, which must be written before the GWRITE that follows them):

- logits (K^T q): per K group and per query round s (grouped-query attention: round s
  serves query head ``g x group + s`` of every KV head g of the group; one round for
  multi-head attention): write the queries into their head slots, GWRITE, then per K
  tile one HEADER and per head one GEMV(column = slot x d_head / L, comps = d_head / L)
  giving B logits, one per token (bank).
- attend (s V): per query head and token chunk: write the chunk's FP16 scores (zeros
  after the last token), GWRITE, then per V tile one HEADER and one
  GEMV(column 0, comps = ceil(valid tokens / L)) giving B partial outputs (one per
  dimension). The NPU adds the chunks' partial outputs: acc = +0.0 (FP32), then
  acc = fp32_add(acc, fp32(partial_c)) for c = 0, 1, ... in order; the output is acc
  rounded to FP16.

The query is used as given (the NPU scales it, or the logits, by 1 / sqrt(d_head)).
Result banks past the last token of a K tile (or past d_head in a V tile) are not
meaningful: stale rows of a recycled page may sit there; compare only valid banks.

Golden: :func:`golden_logits` and :func:`golden_attention` compute, directly from K, V and
the query / scores, what that PIM work returns, in the PIM unit's order of operations
(``sim.golden.pim.gemv``: FP16 products, FP32 pairwise tree and accumulator, one FP16
per readout), so an RTL run can be compared bit for bit. :class:`ChannelImage` and
:func:`execute` replay the transactions functionally (sparse memory, global buffer,
header protocol) to tie the layout to the golden.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from math import ceil
from typing import Sequence, Union

import numpy as np

from rtl.config import DeviceConfig

from .golden.fp import fp32_add, fp32_to_fp16
from .golden.fp32 import fp16_to_fp32
from .golden.pim import gemv
from .models import ModelShape

__all__ = ["LayoutError", "CapacityError", "ProgramError", "KVLayout", "ChannelAllocator",
           "LayerPages", "RequestKV", "ChannelKV", "ChannelCapacity", "MemWrite", "GWrite",
           "Header", "Gemv", "Transaction", "PimWork", "pim_work", "token_writes",
           "logit_program", "attend_program", "ChannelImage", "execute", "collect_logits",
           "collect_attention", "npu_chunk_sum", "golden_logits", "golden_attention",
           "STAGING_ROW"]

STAGING_ROW = 0


class LayoutError(ValueError):
    """A model that cannot be laid out on a configuration; names the field."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


class CapacityError(ValueError):
    """A channel without the free rows a request needs."""

    def __init__(self, channel: int, needed: int, free: int, what: str = ""):
        self.channel, self.needed, self.free = channel, needed, free
        super().__init__(f"channel {channel}: {what + ' ' if what else ''}needs {needed} free "
                         f"row set(s), {free} left")


class ProgramError(ValueError):
    """A transaction sequence the PIM queue cannot run; names the transaction's index."""


# ----------------------------------------------------------------------------- geometry

@dataclass(frozen=True)
class KVLayout:
    """The mapping of one model's KV cache onto one channel of ``config``."""
    config: DeviceConfig
    shape: ModelShape

    def __post_init__(self):
        d, lanes, row = self.shape.d_head, self.config.pim.lanes, self.row_elements
        if d % lanes:
            raise LayoutError("ModelShape.d_head", f"{d} is not a multiple of the "
                              f"{lanes} PIM lanes (PimUnit.lanes): a head must fill whole COMPs")
        if d > row:
            raise LayoutError("ModelShape.d_head", f"{d} exceeds a row of {row} FP16 values")

    # -- sizes --
    @property
    def banks(self) -> int:
        return self.config.geometry.banks

    @property
    def row_elements(self) -> int:
        return self.config.geometry.row_elements

    @property
    def lanes(self) -> int:
        return self.config.pim.lanes

    @property
    def burst_elements(self) -> int:
        return self.config.geometry.burst_bytes // 2

    @property
    def d_head(self) -> int:
        return self.shape.d_head

    @property
    def heads(self) -> int:
        return self.shape.heads_per_device

    @property
    def kv_heads(self) -> int:
        return self.shape.kv_heads_per_device

    @property
    def group(self) -> int:
        return self.shape.group_size

    @property
    def head_comps(self) -> int:
        """COMPs of one head's logit: d_head / L."""
        return self.d_head // self.lanes

    @property
    def heads_per_row(self) -> int:
        return self.row_elements // self.d_head

    @property
    def k_groups(self) -> int:
        return ceil(self.kv_heads / self.heads_per_row)

    def group_heads(self, k_group: int) -> range:
        """KV heads stored in K group ``k_group`` (slot i holds the i-th of them)."""
        first = k_group * self.heads_per_row
        return range(first, min(first + self.heads_per_row, self.kv_heads))

    @property
    def v_tiles(self) -> int:
        """V tiles per KV head: ceil(d_head / B)."""
        return ceil(self.d_head / self.banks)

    # -- pages --
    def k_tiles(self, tokens: int) -> int:
        return ceil(tokens / self.banks)

    def v_chunks(self, tokens: int) -> int:
        return ceil(tokens / self.row_elements)

    @property
    def rows_per_k_tile(self) -> int:
        return self.k_groups

    @property
    def rows_per_v_chunk(self) -> int:
        return self.kv_heads * self.v_tiles

    def rows_per_layer(self, tokens: int) -> int:
        """Row sets (pages) one layer of a request with ``tokens`` cached tokens uses."""
        return (self.k_tiles(tokens) * self.rows_per_k_tile
                + self.v_chunks(tokens) * self.rows_per_v_chunk)

    def bank_coords(self, bank: int) -> dict:
        rank, bankgroup, in_group = self.config.geometry.bank_coords(bank)
        return {"rank": rank, "bankgroup": bankgroup, "bank": in_group}

    @property
    def query_bank(self) -> int:
        return 0

    @property
    def score_bank(self) -> int:
        return self.banks // 2


# ----------------------------------------------------------------------------- allocation

class ChannelAllocator:
    """Free list of a channel's row sets (pages); rows below ``reserved`` are never given."""

    def __init__(self, rows: int, reserved: int = 1, channel: int = 0):
        if not 0 <= reserved < rows:
            raise ValueError(f"channel {channel}: {reserved} reserved row(s) leave none of {rows}")
        self.rows, self.reserved, self.channel = rows, reserved, channel
        self._free = list(range(reserved, rows))      # sorted: a valid heap

    @property
    def free_rows(self) -> int:
        return len(self._free)

    @property
    def used_rows(self) -> int:
        return self.rows - self.reserved - len(self._free)

    def allocate(self, count: int, what: str = "") -> list[int]:
        """``count`` rows, lowest first; :class:`CapacityError` (nothing taken) if short."""
        if count > len(self._free):
            raise CapacityError(self.channel, count, len(self._free), what)
        return [heapq.heappop(self._free) for _ in range(count)]

    def release(self, rows: Sequence[int]) -> None:
        for row in rows:
            if not self.reserved <= row < self.rows:
                raise ValueError(f"channel {self.channel}: row {row} is not a page")
            heapq.heappush(self._free, row)


@dataclass
class LayerPages:
    """Pages of one layer of one request: ``k[tile][k_group]``, ``v[chunk][kv_head][v_tile]``."""
    k: list = field(default_factory=list)
    v: list = field(default_factory=list)

    def rows(self) -> list[int]:
        return ([r for tile in self.k for r in tile]
                + [r for chunk in self.v for head in chunk for r in head])


@dataclass
class RequestKV:
    request_id: int
    channel: int
    layers: list            # LayerPages per layer
    capacity_tokens: int = 0


class ChannelKV:
    """The KV caches of the requests pinned to one channel (page tables and free list).

    ``rows`` (default ``geometry.rows``) limits the rows used, e.g. to the RTL's
    ``stored_rows``; ``layers`` (default the model's layers per device) how many layers
    each request stores. ``admit`` counts the requests it turns away (``rejected``)."""

    def __init__(self, layout: KVLayout, channel: int = 0, rows: int | None = None,
                 layers: int | None = None):
        self.layout, self.channel = layout, channel
        self.layers = layout.shape.layers_per_device if layers is None else layers
        total = layout.config.geometry.rows if rows is None else rows
        if not 0 < total <= layout.config.geometry.rows:
            raise ValueError(f"rows must be in 1..{layout.config.geometry.rows}, got {total}")
        self.allocator = ChannelAllocator(total, STAGING_ROW + 1, channel)
        self.requests: dict[int, RequestKV] = {}
        self.rejected = 0
        self.rejected_ids: list[int] = []

    def rows_needed(self, tokens: int, request_id: int | None = None) -> int:
        """New rows to hold ``tokens`` tokens (all layers), beyond the request's pages."""
        held = self.requests[request_id].capacity_tokens if request_id in self.requests else 0
        lay = self.layout
        k = max(lay.k_tiles(tokens) - lay.k_tiles(held), 0) * lay.rows_per_k_tile
        v = max(lay.v_chunks(tokens) - lay.v_chunks(held), 0) * lay.rows_per_v_chunk
        return (k + v) * self.layers

    def fits(self, tokens: int, request_id: int | None = None) -> bool:
        return self.rows_needed(tokens, request_id) <= self.allocator.free_rows

    def add(self, request_id: int, tokens: int) -> RequestKV:
        """A new request with pages for ``tokens`` tokens; :class:`CapacityError` if short."""
        if request_id in self.requests:
            raise ValueError(f"channel {self.channel}: request {request_id} is already here")
        self.reserve_check(request_id, tokens)
        self.requests[request_id] = RequestKV(request_id, self.channel,
                                              [LayerPages() for _ in range(self.layers)])
        self.reserve(request_id, tokens)
        return self.requests[request_id]

    def admit(self, request_id: int, tokens: int) -> bool:
        """``add`` if it fits; otherwise count the rejection and return False."""
        if request_id in self.requests:
            raise ValueError(f"channel {self.channel}: request {request_id} is already here")
        if self.fits(tokens):
            self.add(request_id, tokens)
            return True
        self.rejected += 1
        self.rejected_ids.append(request_id)
        return False

    def reserve_check(self, request_id: int, tokens: int) -> None:
        needed = self.rows_needed(tokens, request_id)
        if needed > self.allocator.free_rows:
            raise CapacityError(self.channel, needed, self.allocator.free_rows,
                                f"request {request_id} ({tokens} tokens)")

    def reserve(self, request_id: int, tokens: int) -> RequestKV:
        """Grow the request's pages to hold ``tokens`` tokens (all or nothing)."""
        self.reserve_check(request_id, tokens)
        req, lay = self.requests[request_id], self.layout
        for pages in req.layers:
            while len(pages.k) < lay.k_tiles(tokens):
                pages.k.append(self.allocator.allocate(lay.rows_per_k_tile))
            while len(pages.v) < lay.v_chunks(tokens):
                rows = iter(self.allocator.allocate(lay.rows_per_v_chunk))
                pages.v.append([[next(rows) for _ in range(lay.v_tiles)]
                                for _ in range(lay.kv_heads)])
        req.capacity_tokens = max(req.capacity_tokens, tokens)
        return req

    def remove(self, request_id: int) -> None:
        """Free every page of the request."""
        req = self.requests.pop(request_id)
        for pages in req.layers:
            self.allocator.release(pages.rows())


class ChannelCapacity:
    """A capacity check for :func:`sim.workloads.apply_limits` / ``snapshot``: a request
    needs pages for its total length (all layers) in one channel; ``limit`` is the longest
    total that fits the channel with the most free rows, ``admit`` reserves it there."""

    def __init__(self, layout: KVLayout, channels: int | None = None, rows: int | None = None,
                 layers: int | None = None):
        count = layout.config.geometry.channels if channels is None else channels
        self.channels = [ChannelKV(layout, c, rows, layers) for c in range(count)]

    def _roomiest(self) -> ChannelKV:
        return max(self.channels, key=lambda kv: kv.allocator.free_rows)

    def limit(self, request) -> int:
        kv = self._roomiest()
        if not kv.fits(1):
            return 0
        low, high = 1, 2
        while kv.fits(high):
            low, high = high, high * 2
        while high - low > 1:               # fits(low), not fits(high)
            mid = (low + high) // 2
            low, high = (mid, high) if kv.fits(mid) else (low, mid)
        return low

    def admit(self, request) -> None:
        self._roomiest().add(request.id, request.total_tokens)


# ----------------------------------------------------------------------------- transactions

@dataclass(frozen=True)
class MemWrite:
    """A normal 64-byte write: ``elements`` are the burst's FP16 bit patterns in order."""
    rank: int
    bankgroup: int
    bank: int
    row: int
    column: int
    elements: tuple

    op = "WRITE"

    def fields(self) -> dict:
        """The request's fields (``write`` = 1; ``column`` counts bursts in the row)."""
        return {"write": 1, "rank": self.rank, "bankgroup": self.bankgroup, "bank": self.bank,
                "row": self.row, "column": self.column, "data": self.data}

    @property
    def data(self) -> int:
        """The burst as the request's ``data`` field: element 0 in the low 16 bits."""
        return int.from_bytes(np.asarray(self.elements, dtype=np.uint16).tobytes(), "little")


@dataclass(frozen=True)
class GWrite:
    """GWRITE: copy the bank's ``row`` into the channel's global buffer."""
    rank: int
    bankgroup: int
    bank: int
    row: int

    op = "GWRITE"

    def fields(self) -> dict:
        return {"op": self.op, "rank": self.rank, "bankgroup": self.bankgroup,
                "bank": self.bank, "row": self.row}


@dataclass(frozen=True)
class Header:
    """PIM_HEADER: open ``row`` in every bank's PIM buffer for ``gemvs`` GEMVs of
    ``comps`` COMPs in all."""
    row: int
    gemvs: int
    comps: int

    op = "HEADER"

    def fields(self) -> dict:
        return {"op": self.op, "row": self.row, "gemvs": self.gemvs, "comps": self.comps}


@dataclass(frozen=True)
class Gemv:
    """PIM_GEMV(``comps``) from COMP chunk ``column`` of the open row set.

    Meaning of its B results (not sent to the RTL): ``kind="logit"``: bank b = logit of
    query head ``head`` for token ``tile x B + b``; ``kind="attend"``: bank b = partial
    output of query head ``head``, dimension ``tile x B + b``, over token chunk ``chunk``."""
    column: int
    comps: int
    kind: str
    head: int
    tile: int
    chunk: int = 0

    op = "GEMV"

    def fields(self) -> dict:
        return {"op": self.op, "column": self.column, "comps": self.comps}


Transaction = Union[MemWrite, GWrite, Header, Gemv]


def _bursts(layout: KVLayout, bank: int, row: int, elements: np.ndarray, first_column: int = 0):
    """MemWrites of consecutive bursts of ``elements`` (a multiple of a burst) from
    ``first_column`` of (bank, row)."""
    per = layout.burst_elements
    coords = layout.bank_coords(bank)
    return [MemWrite(row=row, column=first_column + i,
                     elements=tuple(int(x) for x in elements[i * per:(i + 1) * per]), **coords)
            for i in range(len(elements) // per)]


def _padded(values: np.ndarray, size: int) -> np.ndarray:
    out = np.zeros(size, dtype=np.uint16)
    out[:len(values)] = values
    return out


def _burst_span(layout: KVLayout, count: int) -> int:
    """Elements of the whole bursts that hold ``count`` elements from a row's start."""
    return ceil(count / layout.burst_elements) * layout.burst_elements


# ----------------------------------------------------------------------------- KV writes

def _fp16(array, shape_hint: str) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype != np.uint16:
        raise TypeError(f"{shape_hint} must be FP16 bit patterns (uint16), got {array.dtype}")
    return array


def _check_kv(layout: KVLayout, keys, values) -> tuple[np.ndarray, np.ndarray]:
    keys, values = _fp16(keys, "keys"), _fp16(values, "values")
    want = (layout.kv_heads, layout.d_head)
    for name, array in (("keys", keys), ("values", values)):
        if array.ndim != 3 or array.shape[1:] != want:
            raise ValueError(f"{name} must be tokens x {want[0]} KV heads x {want[1]}, "
                             f"got {array.shape}")
    if keys.shape != values.shape:
        raise ValueError(f"keys {keys.shape} and values {values.shape} differ")
    return keys, values


def token_writes(layout: KVLayout, pages: LayerPages, keys, values, first: int) -> list[MemWrite]:
    """The bursts that store tokens ``first .. T-1`` of one layer (``keys``/``values``: all
    T cached tokens, T x kv_heads x d_head FP16 bits; earlier tokens fill the V bursts).
    ``first = T - 1`` is one decode step's append; ``first = 0`` writes a prompt.
    K bursts first (token by token, K group by group), then V (row by row, bank by bank)."""
    keys, values = _check_kv(layout, keys, values)
    total = len(keys)
    if not 0 <= first < total:
        raise ValueError(f"first token {first} is outside the {total} cached tokens")
    if len(pages.k) < layout.k_tiles(total) or len(pages.v) < layout.v_chunks(total):
        raise ValueError(f"pages hold fewer than {total} tokens: reserve them first")
    return _k_writes(layout, pages, keys, first) + _v_writes(layout, pages, values, first)


def _k_writes(layout, pages, keys, first):
    writes, B = [], layout.banks
    for t in range(first, len(keys)):
        for group in range(layout.k_groups):
            heads = layout.group_heads(group)
            row_data = keys[t, heads.start:heads.stop, :].reshape(-1)
            span = _burst_span(layout, len(row_data))
            writes += _bursts(layout, t % B, pages.k[t // B][group], _padded(row_data, span))
    return writes


def _v_writes(layout, pages, values, first):
    writes, B, E, per = [], layout.banks, layout.row_elements, layout.burst_elements
    total = len(values)
    for chunk in range(first // E, layout.v_chunks(total)):
        start = chunk * E
        tokens = values[start:min(start + E, total)]            # tokens of this chunk
        lo = max(first - start, 0) // per                       # first burst touched
        hi = ceil(len(tokens) / per)                            # bursts up to the last token
        for g in range(layout.kv_heads):
            for tile in range(layout.v_tiles):
                row = pages.v[chunk][g][tile]
                for bank in range(min(B, layout.d_head - tile * B)):
                    column_data = _padded(tokens[:, g, tile * B + bank], hi * per)
                    writes += _bursts(layout, bank, row, column_data[lo * per:], lo)
    return writes


# ----------------------------------------------------------------------------- programs

def _staging_writes(layout: KVLayout, bank: int, vector: np.ndarray, count: int) -> list[MemWrite]:
    """Bursts placing the first ``count`` elements of ``vector`` (E long) in the staging row."""
    return _bursts(layout, bank, STAGING_ROW, vector[:_burst_span(layout, count)])


def _check_query(layout, query) -> np.ndarray:
    query = _fp16(query, "query")
    if query.shape != (layout.heads, layout.d_head):
        raise ValueError(f"query must be {layout.heads} heads x {layout.d_head}, got {query.shape}")
    return query


def logit_program(layout: KVLayout, pages: LayerPages, tokens: int, query) -> list[Transaction]:
    """Writes, GWRITEs, HEADERs and GEMVs computing K^T q of one layer over ``tokens``
    cached tokens (``query``: heads x d_head FP16 bits)."""
    query = _check_query(layout, query)
    program, hc = [], layout.head_comps
    for group in range(layout.k_groups):
        heads = layout.group_heads(group)
        for s in range(layout.group):
            buffer = np.zeros(layout.row_elements, dtype=np.uint16)
            for slot, g in enumerate(heads):
                d = layout.d_head
                buffer[slot * d:(slot + 1) * d] = query[g * layout.group + s]
            program += _staging_writes(layout, layout.query_bank, buffer,
                                       len(heads) * layout.d_head)
            program.append(GWrite(row=STAGING_ROW, **layout.bank_coords(layout.query_bank)))
            for tile in range(layout.k_tiles(tokens)):
                program.append(Header(pages.k[tile][group], len(heads), len(heads) * hc))
                program += [Gemv(slot * hc, hc, "logit", g * layout.group + s, tile)
                            for slot, g in enumerate(heads)]
    return program


def attend_program(layout: KVLayout, pages: LayerPages, tokens: int, scores) -> list[Transaction]:
    """Writes, GWRITEs, HEADERs and GEMVs computing the chunks' partial s V of one layer
    (``scores``: heads x tokens FP16 bits, the softmax output)."""
    scores = _fp16(scores, "scores")
    if scores.shape != (layout.heads, tokens):
        raise ValueError(f"scores must be {layout.heads} heads x {tokens} tokens, "
                         f"got {scores.shape}")
    program, E = [], layout.row_elements
    for head in range(layout.heads):
        g = head // layout.group
        for chunk in range(layout.v_chunks(tokens)):
            valid = min(E, tokens - chunk * E)
            comps = ceil(valid / layout.lanes)
            buffer = _padded(scores[head, chunk * E:chunk * E + valid], E)
            program += _staging_writes(layout, layout.score_bank, buffer, valid)
            program.append(GWrite(row=STAGING_ROW, **layout.bank_coords(layout.score_bank)))
            for tile in range(layout.v_tiles):
                program += [Header(pages.v[chunk][g][tile], 1, comps),
                            Gemv(0, comps, "attend", head, tile, chunk)]
    return program


@dataclass(frozen=True)
class PimWork:
    """Counts of one request's attention in one layer: staging ``writes`` (bursts),
    ``gwrites``, ``headers`` (row sets opened) and ``gemvs`` as ((comps, count), ...)."""
    writes: int
    gwrites: int
    headers: int
    gemvs: tuple

    @property
    def gemv_count(self) -> int:
        return sum(n for _, n in self.gemvs)

    @property
    def comps(self) -> int:
        return sum(k * n for k, n in self.gemvs)

    def cycles(self, config: DeviceConfig) -> int:
        """A latency estimate (a scheduling heuristic, not a timing model): GWRITE busy
        time, a row set opened per header (all bank groups' G_ACTs, tFAW-paced) and each
        PIM_GEMV's busy time, back to back; normal writes and refresh are ignored."""
        bus = config.bus
        return (self.gwrites * bus.gwrite_busy
                + self.headers * bus.row_set_open(config.geometry.bankgroups)
                + sum(n * bus.gemv_busy(k) for k, n in self.gemvs))


def pim_work(layout: KVLayout, tokens: int) -> PimWork:
    """What :func:`logit_program` + :func:`attend_program` issue for ``tokens`` cached
    tokens, counted in closed form (no transactions built)."""
    if tokens < 1:
        raise ValueError(f"attention needs at least one token, got {tokens}")
    lay, E, per = layout, layout.row_elements, layout.burst_elements
    tiles = lay.k_tiles(tokens)
    writes = lay.group * sum(ceil(len(lay.group_heads(g)) * lay.d_head / per)
                             for g in range(lay.k_groups))
    gwrites = lay.k_groups * lay.group
    headers = gwrites * tiles
    gemvs = {lay.head_comps: lay.heads * tiles}
    for chunk in range(lay.v_chunks(tokens)):
        valid = min(E, tokens - chunk * E)
        writes += lay.heads * ceil(valid / per)
        gwrites += lay.heads
        headers += lay.heads * lay.v_tiles
        comps = ceil(valid / lay.lanes)
        gemvs[comps] = gemvs.get(comps, 0) + lay.heads * lay.v_tiles
    return PimWork(writes, gwrites, headers, tuple(sorted(gemvs.items())))


# ----------------------------------------------------------------------------- functional replay

class ChannelImage:
    """Sparse contents of one channel: rows created as zeros when first touched."""

    def __init__(self, config: DeviceConfig):
        self.config = config
        self.rows: dict[int, np.ndarray] = {}

    def row(self, row: int) -> np.ndarray:
        """banks x row_elements FP16 bits of ``row`` (a live view)."""
        g = self.config.geometry
        if not 0 <= row < g.rows:
            raise ValueError(f"row {row} is outside the {g.rows} rows of a bank")
        if row not in self.rows:
            self.rows[row] = np.zeros((g.banks, g.row_elements), dtype=np.uint16)
        return self.rows[row]

    def write(self, w: MemWrite) -> None:
        g = self.config.geometry
        per = g.burst_bytes // 2
        if not 0 <= w.column < g.bursts_per_row or len(w.elements) != per:
            raise ValueError(f"{w}: column or burst size does not fit the row")
        bank = g.bank_index(w.rank, w.bankgroup, w.bank)
        self.row(w.row)[bank, w.column * per:(w.column + 1) * per] = w.elements


class _PimQueue:
    """Functional model of the PIM queue's semantics: global buffer and open header."""

    def __init__(self, image: ChannelImage):
        self.image, self.config = image, image.config
        self.buffer = np.zeros(self.config.geometry.row_elements, dtype=np.uint16)
        self.header, self.left, self.comps_left = None, 0, 0

    def _idle(self) -> None:
        if self.left:
            raise ValueError(f"{self.left} GEMV(s) of the header on row {self.header.row} "
                             f"still to come")

    def gwrite(self, t: GWrite) -> None:
        self._idle()
        bank = self.config.geometry.bank_index(t.rank, t.bankgroup, t.bank)
        self.buffer = self.image.row(t.row)[bank].copy()

    def open(self, t: Header) -> None:
        self._idle()
        if t.gemvs < 1:
            raise ValueError("a header needs at least one GEMV")
        self.header, self.left, self.comps_left = t, t.gemvs, t.comps

    def gemv(self, t: Gemv) -> np.ndarray:
        per_row = self.config.bus.comps_per_row
        if not self.left:
            raise ValueError("no header announced this GEMV")
        if not (1 <= t.comps and 0 <= t.column and t.column + t.comps <= per_row):
            raise ValueError(f"chunks {t.column}..{t.column + t.comps - 1} outside the row's "
                             f"{per_row}")
        self.left, self.comps_left = self.left - 1, self.comps_left - t.comps
        if self.comps_left < 0 or (self.left == 0 and self.comps_left != 0):
            raise ValueError(f"COMPs do not add up to the header's {self.header.comps}")
        rows = self.image.row(self.header.row)
        return gemv(rows, self.buffer, self.config.pim.lanes, t.column, t.comps)


def execute(image: ChannelImage, program: Sequence[Transaction]) -> list[tuple[Gemv, np.ndarray]]:
    """Run ``program`` in order on ``image``: writes update it, GWRITE loads the global
    buffer, HEADER opens a row set for its GEMVs, GEMV returns one FP16 per bank
    (``sim.golden.pim.gemv``). Checks the header protocol (GEMV count and COMP total,
    chunks inside the row); :class:`ProgramError` names the transaction's index."""
    queue, results = _PimQueue(image), []
    for index, t in enumerate(program):
        try:
            if isinstance(t, MemWrite):
                image.write(t)
            elif isinstance(t, GWrite):
                queue.gwrite(t)
            elif isinstance(t, Header):
                queue.open(t)
            elif isinstance(t, Gemv):
                results.append((t, queue.gemv(t)))
            else:
                raise ValueError(f"unknown transaction {t!r}")
        except ValueError as error:
            raise ProgramError(f"transaction {index} ({getattr(t, 'op', '?')}): {error}") from None
    if queue.left:
        raise ProgramError(f"end of program: {queue.left} GEMV(s) of the header on row "
                           f"{queue.header.row} missing")
    return results


def collect_logits(layout: KVLayout, results, tokens: int) -> np.ndarray:
    """heads x tokens FP16 logits from the ``logit`` GEMV results."""
    out = np.zeros((layout.heads, layout.k_tiles(tokens) * layout.banks), dtype=np.uint16)
    for g, values in results:
        if g.kind == "logit":
            out[g.head, g.tile * layout.banks:(g.tile + 1) * layout.banks] = values
    return out[:, :tokens]


def npu_chunk_sum(partials: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The NPU's sum of per-chunk partial outputs (chunks x n FP16 bits): FP32 accumulator
    from +0.0, ``fp32_add(acc, fp32(partial_c))`` in chunk order. Returns (FP32 bits,
    FP16 bits rounded to nearest even)."""
    partials = np.asarray(partials, dtype=np.uint16)
    acc = np.zeros(partials.shape[1:], dtype=np.uint32)
    for partial in partials:
        acc = fp32_add(acc, fp16_to_fp32(partial))
    return acc, fp32_to_fp16(acc)


def collect_attention(layout: KVLayout, results, tokens: int) -> np.ndarray:
    """heads x d_head FP16 attention outputs from the ``attend`` GEMV results, chunks
    summed by :func:`npu_chunk_sum`."""
    width = layout.v_tiles * layout.banks
    partials = np.zeros((layout.heads, layout.v_chunks(tokens), width), dtype=np.uint16)
    for g, values in results:
        if g.kind == "attend":
            partials[g.head, g.chunk, g.tile * layout.banks:(g.tile + 1) * layout.banks] = values
    out = np.stack([npu_chunk_sum(p)[1] for p in partials])
    return out[:, :layout.d_head]


# ----------------------------------------------------------------------------- golden

def golden_logits(layout: KVLayout, keys, query) -> np.ndarray:
    """heads x T FP16 logits as the PIM computes them: for each head and K tile, the
    tile's B tokens (one per bank) dot the query over d_head / L COMPs."""
    query = _check_query(layout, query)
    keys = _fp16(keys, "keys")
    tokens, B = len(keys), layout.banks
    out = np.zeros((layout.heads, tokens), dtype=np.uint16)
    for head in range(layout.heads):
        g = head // layout.group
        for tile in range(layout.k_tiles(tokens)):
            rows = keys[tile * B:(tile + 1) * B, g, :]
            out[head, tile * B:tile * B + len(rows)] = gemv(rows, query[head], layout.lanes)
    return out


def golden_attention(layout: KVLayout, values, scores) -> tuple[np.ndarray, np.ndarray]:
    """heads x d_head attention outputs as PIM + NPU compute them: per token chunk, each
    dimension (bank) dots the chunk's scores over ceil(valid / L) COMPs (FP16 readout);
    chunks added by :func:`npu_chunk_sum`. Returns (FP32 bits, FP16 bits)."""
    values, scores = _fp16(values, "values"), _fp16(scores, "scores")
    tokens, E = len(values), layout.row_elements
    if scores.shape != (layout.heads, tokens):
        raise ValueError(f"scores must be {layout.heads} heads x {tokens} tokens, "
                         f"got {scores.shape}")
    acc32 = np.zeros((layout.heads, layout.d_head), dtype=np.uint32)
    acc16 = np.zeros((layout.heads, layout.d_head), dtype=np.uint16)
    for head in range(layout.heads):
        g, partials = head // layout.group, []
        for chunk in range(layout.v_chunks(tokens)):
            span = slice(chunk * E, min((chunk + 1) * E, tokens))
            valid = span.stop - span.start
            rows = _pad_columns(values[span, g, :].T, E)         # d_head x E, one row per bank
            vector = _padded(scores[head, span], E)
            partials.append(gemv(rows, vector, layout.lanes, 0, ceil(valid / layout.lanes)))
        acc32[head], acc16[head] = npu_chunk_sum(np.stack(partials))
    return acc32, acc16


def _pad_columns(rows: np.ndarray, width: int) -> np.ndarray:
    out = np.zeros((rows.shape[0], width), dtype=np.uint16)
    out[:, :rows.shape[1]] = rows
    return out
