"""The decode compiler: one decode step of every layer -> one NPU program per step (DMA,
GEMM, VECTOR and PIM instructions, ``rtl.isa.npu``) for each mode.

Modes (the same compiler code; they differ only where stated):

- ``npu-only``: attention on the NPU. The KV cache is laid out for the DMA
  (``sim.decode.npu_kv``: each request's K and V in runs of bursts that the address map
  spreads over every channel and bank, not the PIM's pages), in one of two forms that
  :func:`npu_attention_form` picks by estimated array clocks. ``stream``: per request
  and head a DMA per 32-element K piece and one for V, the array computing ``K . q^T``
  (q as a column: a strided VECTOR scatter) and ``V^T . s^T`` (32-token chunks chained
  in FP32; a head wider than one word: one logit GEMM per 32 elements chained in FP32,
  rounded by the vector unit). ``weights``: per request a block of k heads (k bursts per
  scratchpad word), a DMA per head's K and one for the block's V, the array computing
  ``q . K^T`` per 32-token chunk for the whole block and ``s . V`` per group of heads in
  a V row, with K and V as its weights. Either way the next request-head or block loads
  one ahead of the compute (double buffers),
  the vector unit the softmax. No PIM: the channels run in ``dual`` mode (no PIM command
  is ever issued, so it is the plain DRAM); the greedy channel assignment only deals the
  requests' attention out to the cores.
- ``npu+pim``: attention on the PIM, ``blocked`` row buffers (Newton-like), round-robin
  channel assignment, no sub-batching: per layer QKV (all) -> MHA (all) -> Proj/FFN (all).
- ``neupims``: attention on the PIM with ``dual`` row buffers, greedy min-load channel
  assignment and two sub-batches interleaved in stages A-F (NEUPIMS.md 5): the NPU work of
  one sub-batch and the MHA of the other are woven into one instruction stream by a
  list scheduler (:func:`weave`) with cost estimates, so the GEMMs run while the PIM
  works; each stage ends with a WAIT on every unit (the barrier).

Attention on the PIM (per request: K/V appended, then all requests' logits, softmax,
attend). The new token's K is stored burst by burst (a head is d_head / 32 bursts); V is
read-modify-written: the bursts holding the token are loaded, the new values scattered
into lane ``t mod 32`` (strided VECTOR), stored. The query is stored into the
request's staging row (bank 0, head h in the columns of its K slot; heads past one K row
in further K groups: a staging row, a GWRITE and the K rows of each group), GWRITE, then
per K tile (and K group) a HEADER and one GEMV per head, each result (one logit per bank) into its own scratchpad word; the
logits are gathered (strided VECTOR, 8 per word) and softmaxed; each head's FP16 scores
go, V token chunk by chunk (``row_elements`` tokens each), to staging rows of bank
``B/2 + head``; per chunk a GWRITE, then per V tile a HEADER and a GEMV over the chunk's
tokens into the page ``v[chunk][head][tile]``. The chunks' partial outputs are gathered
and summed in FP32 from +0.0 in chunk order (the NPU's chunk sum of ``sim.kv_layout``),
then rounded into the attention output. Staging rows: with S request slots in a channel
(its most requests), slot i uses row i for its query and row ``chunk x S + i`` for the
scores of a V chunk (so chunk 0 is row i); the PIM queue is waited for before a staging
row is rewritten.

Several cores (``config.npu.arrays``, :func:`with_cores`): every core runs its own program
of the same shape. A GEMM is split by output columns (:func:`columns`: whole FP16 words,
as even as they allow), each core's share of a weight matrix laid out by itself in the
HBM; the attention of a request runs on the core of its channel (``c mod cores``, so
each channel's PIM has one master); LayerNorms and residuals run on every core over
whole rows. After each split GEMM and after the attention the cores exchange through the
HBM (:data:`EXCHANGES`): stores of their parts, ``sync dma``, loads of the whole rows.
Stage barriers are SYNCs. The golden decode is unchanged: the same operations in the
same order. One core: no SYNC, no exchange, the programs of a single-core NPU.

Data layout: rows of the activation matrices are the requests in ``row_order`` (for
``neupims`` sub-batch 1 first). HBM: the KV pages (``sim.kv_layout``; npu-only its runs) in rows below
``weight_row``; from ``weight_row`` on, the weights (per layer one block: LayerNorm
parameters, W_qkv, W_o, W_1, W_2; then LayerNorm_f and W_lm) and the inputs of every
step, laid out linearly (one DMA per block spreads over all channels).

Scratchpad words of k bursts (``NpuConfig.word_bytes``, :class:`Words`): every matrix row
is whole words (E16 = 32 k FP16 or 16 k FP32 each), HBM transfers of data in words are k
bursts per word; what the DRAM layout cuts into bursts (a head's K and query, 32 scores)
is stored burst by burst from its slice (``slice`` of DMA_STORE), and a K tile's token
slots or a V tile's dimensions are loaded one burst per word (``spread``), so the GEMMs
and gathers over them are those of one-burst words. Several heads in one word (d_head <
E16) are gathered and scattered from their lanes (strided VECTOR, first lane h d_head);
npu-only copies a head's output column out before scattering it. The golden decode does
not depend on the word size.

Limits (clear errors): d_head a multiple of 32 and a multiple or a divisor of E16 (a head
in whole words or a whole fraction of one), d_model, heads x d_head, FFN and vocabulary
multiples of E16, heads <= banks / 2, scratchpad and
instruction memory sizes (attention buffers grow with the longest L), KV capacity of the
stored rows (the pages and the staging rows, per slot one per V chunk of the longest L or
per K group, whichever is more; npu-only: the runs). (The NPU's logit GEMM is cut
into pieces of ``accumulator_rows`` tokens.)
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from rtl.config import RowBufferMode, preset
from rtl.isa.npu import (DIM_BITS, Instruction, NpuOp, dma_load, dma_store, gemm, halt, pim,
                         sync, vector, wait)
from rtl.npu.scratchpad import word_bursts, word_lanes
from rtl.npu.systolic import SystolicArray
from rtl.npu.vector import VectorOp
from rtl.npu.vector_engine import (FLAG_IMM_B, FLAG_SCALAR_B, FLAG_STRIDED_A,
                                   FLAG_STRIDED_D, strided_imm)

from ..kv_layout import ChannelKV, KVLayout, CapacityError, token_writes
from ..npu_programs import HbmImage, matrix_words
from ..npu_vector_programs import layernorm_ops
from ..scheduling import assign_channels, split_sub_batches
from .npu_kv import NpuKV, NpuKVStream
from .golden import MODES, golden_decode, softmax_scale_bits
from .run import CoreProgram, DecodeRun, StepProgram, check_dispatch
from .workload import EPS, DecodeData, DecodeError, DecodeWorkload, random_data, shape_data

__all__ = ["compile_decode", "mode_config", "with_cores", "weave", "Plan", "ALL_UNITS"]

ALL_UNITS = ("dma", "gemm", "vector", "pim")
BURST16 = 32                               # FP16 per 64-byte burst (a K piece, a V burst)
PIM_QUEUE = 16
WEIGHTS_AFTER_GEMM = 2
MAX_VECTOR_LENGTH = (1 << DIM_BITS) - 1    # the VECTOR length field
VECTOR_PIECE = 1 << 15                     # whole FP16 and FP32 words
VECTOR_COPY = 12                           # vop: copy a to d as FP32 (strided operands)
ELEMENTWISE = {VectorOp.ADD, VectorOp.SUB, VectorOp.MUL, VectorOp.MAX, VectorOp.EXP,
               VectorOp.RECIP, VectorOp.RSQRT, VectorOp.GELU, VectorOp.CVT16TO32,
               VectorOp.CVT32TO16}


def mode_config(mode: str, config=None):
    """The device configuration of ``mode``: ``decode`` preset, blocked buffers for
    ``npu+pim``, dual otherwise."""
    if mode not in MODES:
        raise DecodeError("mode", f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    config = config or preset("decode")
    return config.replace(mode=RowBufferMode.BLOCKED if mode == "npu+pim" else RowBufferMode.DUAL)


@dataclass(frozen=True)
class Words:
    """The scratchpad word of ``config``: ``bytes``, ``k`` bursts, ``e16`` FP16 or
    ``e32`` FP32 elements."""
    bytes: int
    k: int
    e16: int
    e32: int

    @classmethod
    def of(cls, config) -> "Words":
        lanes = word_lanes(config)
        return cls(config.npu.word_bytes, word_bursts(config), lanes, lanes // 2)

    def f16(self, cols: int) -> int:
        return cols // self.e16

    def f32(self, cols: int) -> int:
        return cols // self.e32


def with_cores(config, cores: int):
    """``config`` with ``cores`` NPU cores (``NpuConfig.arrays``), each core's DMA limited
    to its share of the controllers' tags (``dma_in_flight``: at most tags / cores)."""
    if cores < 1:
        raise DecodeError("cores", f"must be >= 1, got {cores}")
    npu = config.npu
    share = 1 << max(0, (config.controller.tags // cores).bit_length() - 1)
    return config.replace(npu=dataclasses.replace(npu, arrays=cores,
                                                  dma_in_flight=min(npu.dma_in_flight, share)))


# ----------------------------------------------------------------------------- streams

@dataclass
class Op:
    """An instruction with what the scheduler needs: its unit, estimated clocks, and for
    PIM its channel."""
    ins: Instruction
    unit: str | None
    cost: int = 2
    channel: int = 0
    mark: str | None = None          # a barrier that ends this stage


class Stream:
    """Instructions of one thread of work, with cost estimates (``Costs``)."""

    def __init__(self, costs: "Costs"):
        self.ops: list[Op] = []
        self.costs = costs
        self.words = Words.of(costs.config)

    def __iadd__(self, other: "Stream"):
        self.ops += other.ops
        return self

    def load(self, hbm: int, sp: int, count: int, channels: int = 1, slice: int = 0,
             spread: bool = False):
        """``count`` bursts (``rtl.isa.npu.dma_load``); ``spread`` only with wide words
        (one burst per word is the plain layout of one-burst words)."""
        self.ops.append(Op(dma_load(hbm, sp, count, slice, spread and self.words.k > 1), "dma",
                           self.costs.dma(count, channels)))

    def store(self, hbm: int, sp: int, count: int, channels: int = 1, slice: int = 0,
              spread: bool = False):
        self.ops.append(Op(dma_store(hbm, sp, count, slice, spread and self.words.k > 1),
                           "dma", self.costs.dma(count, channels)))

    def load_words(self, hbm: int, sp: int, words: int, channels: int = 1):
        """``words`` whole scratchpad words (``k`` bursts each)."""
        self.load(hbm, sp, words * self.words.k, channels)

    def store_words(self, hbm: int, sp: int, words: int, channels: int = 1):
        self.store(hbm, sp, words * self.words.k, channels)

    def gemm(self, a, b, c, m, k, n, a_pitch, b_pitch, c_pitch, fp32=False, acc=False):
        """C = A . B (+ C); when K spans several array tiles, rows in pieces of
        ``accumulator_rows`` (the GEMM engine keeps a K chain's partial sums there: more
        rows are a BAD_SHAPE), each piece the same rows' results bit for bit."""
        npu = self.costs.config.npu
        piece = npu.accumulator_rows if k > npu.array_rows else max(m, 1)
        for m0 in range(0, m, piece):
            rows = min(piece, m - m0)
            self.ops.append(Op(gemm(a + m0 * a_pitch, b, c + m0 * c_pitch, rows, k, n,
                                    a_pitch, b_pitch, c_pitch, fp32, acc), "gemm",
                               self.costs.gemm(rows, k, n)))

    def vec(self, op, a=0, b=0, d=0, length=0, imm=0, flags=0):
        """One VECTOR (``op``: a VectorOp or a vop number, e.g. :data:`VECTOR_COPY`); a
        dense element-wise op longer than the ``length`` field (16 bits) is cut into
        pieces of ``VECTOR_PIECE`` elements (whole words of either width)."""
        pieces = [(0, length)]
        if length > MAX_VECTOR_LENGTH and op in ELEMENTWISE and not flags & ~FLAG_IMM_B:
            pieces = [(i, min(VECTOR_PIECE, length - i))
                      for i in range(0, length, VECTOR_PIECE)]
        e16, e32 = self.words.e16, self.words.e32
        width_a = e16 if op is VectorOp.CVT16TO32 else e32
        width_d = e16 if op is VectorOp.CVT32TO16 else e32
        for i, n in pieces:
            self.vec_ins(vector(getattr(op, "value", op), a=a + i // width_a, b=b + i // e32,
                                d=d + i // width_d, length=n, imm=imm, flags=flags))

    def vec_ins(self, ins: Instruction):
        self.ops.append(Op(ins, "vector", self.costs.vector(ins)))

    def pim(self, op: str, channel: int, **fields):
        self.ops.append(Op(pim(op, channel, **fields), "pim", self.costs.pim(op, fields),
                           channel))

    def wait(self, *units):
        self.ops.append(Op(wait(*units), None))

    def sync(self, *units):
        self.ops.append(Op(sync(*units), None))

    def barrier(self, name: str, cores: int = 1):
        """The end of stage ``name``: every unit idle (a WAIT), and with several cores
        every core there too (a SYNC on every unit)."""
        ins = wait(*ALL_UNITS) if cores == 1 else sync(*ALL_UNITS)
        self.ops.append(Op(ins, None, mark=name))


class Costs:
    """Clock estimates for the list scheduler only (never reported)."""

    def __init__(self, config):
        self.config = config
        npu = config.npu
        self.H, self.W, self.lanes = npu.array_rows, npu.array_cols, npu.vector_lanes

    def dma(self, count, channels=1):
        return 40 + math.ceil(count / (0.45 * channels))

    def gemm(self, m, k, n):
        k_tiles, n_tiles = math.ceil(k / self.H), math.ceil(n / self.W)
        passes = k_tiles * n_tiles
        npu = self.config.npu
        if npu.weight_buffers == 1:     # preload, stream, drain, one pass after the other
            return passes * (2 * self.H + self.W - 1 + m) + 2
        # two buffers (``rtl.npu.gemm_engine``): a preload hidden under the pass before; a
        # K pass starts a latency after the pass it continues, two passes back when N
        # tiles go in pairs
        latency = SystolicArray.latency_for(self.H, self.W)
        pass_clocks = max(m, self.H + 1)
        if k_tiles > 1:
            paired = n_tiles > 1 and m <= npu.accumulator_rows // 2
            pass_clocks = max(pass_clocks, (latency + 4) // 2 if paired else latency + 3)
        return self.H + passes * pass_clocks + latency + 2

    #: VectorUnit micro-steps of the multi-step element-wise ops
    STEPS = {VectorOp.EXP: 22, VectorOp.RECIP: 12, VectorOp.RSQRT: 15, VectorOp.GELU: 41}

    def vector(self, ins):
        """The pipelined engine (``rtl.npu.vector_engine``): about one clock per chunk
        for simple ops (two with a vector b), the unit's steps per chunk otherwise; a
        g = 1 strided operand makes every element a chunk."""
        n, flags = ins["length"], ins["flags"]
        try:
            op = VectorOp(ins["vop"])
        except ValueError:
            op = None
        chunks = n if flags & (FLAG_STRIDED_A | FLAG_STRIDED_D) else math.ceil(n / self.lanes)
        chunks = max(chunks, 1)
        if op in self.STEPS:
            return self.STEPS[op] * chunks + 5
        binary = op in (VectorOp.ADD, VectorOp.SUB, VectorOp.MUL, VectorOp.MAX)
        if op in (VectorOp.SUM, VectorOp.RMAX) or (binary and not flags & (FLAG_IMM_B | FLAG_SCALAR_B)):
            return 2 * chunks + 8
        return chunks + 5

    def pim(self, op, fields):
        bus = self.config.bus
        if op == "gwrite":
            return bus.gwrite_busy + 30
        if op == "header":
            return bus.row_set_open(self.config.geometry.bankgroups)
        return bus.gemv_busy(fields.get("comps", 1))


def weave(first: list[Op], second: list[Op], config) -> list[Op]:
    """Merge two instruction streams into one program order.

    A small model of the core: one instruction dispatched per 2 clocks, in order; GEMM
    and VECTOR run one instruction at a time; DMA accepts the next transfer when the
    previous one's requests are out; each channel's PIM queue holds 16 transactions and
    runs them in order; WAIT blocks until its units are idle. Each time, the stream whose
    next instruction could start first is taken; ties go to one stream, and of the two
    merges (ties to either stream) the one with the earlier estimated end is kept. Every
    stream keeps its own order and its own WAITs, so the merge is correct whatever the
    estimates; they only decide how well the two overlap."""
    best = None
    for prefer in (1, 0):
        order, end = _weave(first, second, config, prefer)
        if best is None or end < best[1]:
            best = (order, end)
    return best[0]


def _weave(first, second, config, prefer):
    C = config.geometry.channels
    state = {"t": 0, "gemm": 0, "vector": 0, "dma": 0, "dma_accept": 0,
             "pim": [0] * C, "pim_q": [[] for _ in range(C)]}

    def start(op: Op) -> int:
        t = state["t"]
        if op.unit is None:
            units = op.ins["units"] if op.ins.op in (NpuOp.WAIT, NpuOp.SYNC) else 15
            ready = t
            for bit, name in ((1, "dma"), (2, "gemm"), (4, "vector")):
                if units & bit:
                    ready = max(ready, state[name])
            if units & 8:
                ready = max([ready] + state["pim"])
            return ready
        if op.unit in ("gemm", "vector"):
            return max(t, state[op.unit])
        if op.unit == "dma":
            return max(t, state["dma_accept"])
        queue = [f for f in state["pim_q"][op.channel] if f > t]
        if len(queue) > PIM_QUEUE:
            return sorted(queue)[len(queue) - PIM_QUEUE - 1]
        return t

    def issue(op: Op, at: int) -> None:
        state["t"] = at + 2
        if op.unit in ("gemm", "vector"):
            state[op.unit] = at + op.cost
        elif op.unit == "dma":
            state["dma_accept"] = at + max(op.cost - 40, 1)
            state["dma"] = max(state["dma"], at + op.cost)
        elif op.unit == "pim":
            c = op.channel
            begin = max(at, state["pim"][c])
            state["pim"][c] = begin + op.cost
            state["pim_q"][c] = [f for f in state["pim_q"][c] if f > at] + [begin + op.cost]

    out, i, j = [], 0, 0
    while i < len(first) or j < len(second):
        if j >= len(second):
            pick = 0
        elif i >= len(first):
            pick = 1
        else:
            a, b = start(first[i]), start(second[j])
            pick = prefer if a == b else (0 if a < b else 1)
        op = first[i] if pick == 0 else second[j]
        issue(op, start(op))
        out.append(op)
        if pick == 0:
            i += 1
        else:
            j += 1
    end = max([state["t"], state["gemm"], state["vector"], state["dma"]] + state["pim"])
    return out, end


# ----------------------------------------------------------------------------- layout

class Scratchpad:
    def __init__(self, words: int):
        self.words, self.next, self.regions = words, 0, {}

    def take(self, name: str, words: int) -> int:
        if self.next + words > self.words:
            raise DecodeError("scratchpad", f"{name} needs {words} words at {self.next}: the "
                              f"NPU scratchpad has {self.words} (NpuConfig.scratchpad_words); "
                              f"use a smaller batch or model")
        base = self.next
        self.next += words
        self.regions[name] = (base, words)
        return base


@dataclass
class Plan:
    """Where everything lives; built once per run."""
    config: object
    workload: DecodeWorkload
    mode: str
    channel_of: list                 # request -> channel
    slot_of: list                    # request -> staging slot (row) in its channel
    row_order: list                  # scratchpad row -> request
    sub_batches: list                # [rows of sub-batch 1, rows of sub-batch 2] (neupims)
    kv: list                         # ChannelKV per channel (PIM modes: the KV pages)
    slots: int = 1                   # staging slots per channel (its most requests)
    cores: int = 1                   # NPU cores (config.npu.arrays)
    sp: dict = field(default_factory=dict)
    hbm: dict = field(default_factory=dict)
    npu_kv: NpuKV | NpuKVStream | None = None   # npu-only: the KV cache over all channels

    @property
    def layout(self) -> KVLayout:
        return self.kv[0].layout

    @property
    def words(self) -> Words:
        return Words.of(self.config)

    def columns(self, n: int, core: int) -> tuple[int, int]:
        """Output columns [c0, c1) of ``core`` in a GEMM of ``n`` columns: the FP16 words
        of a row dealt out as evenly as whole words allow (one core: all of them)."""
        return columns(n, core, self.cores, self.words.e16)

    def core_of(self, row: int) -> int:
        """The core that runs the attention of scratchpad row ``row``: channel c's
        requests belong to core ``c mod cores`` (one core per channel's PIM)."""
        return self.channel_of[self.row_order[row]] % self.cores

    def staging_row(self, request: int, chunk: int = 0) -> int:
        """The staging row of ``request`` for V token chunk ``chunk`` (chunk-major, so
        chunk 0 is the request's slot); in the query bank, for K group ``chunk``."""
        return chunk * self.slots + self.slot_of[request]


def _address(config, channel, bank, row, column) -> int:
    g = config.geometry
    rank, bankgroup, b = g.bank_coords(bank)
    return config.address_map.encode(g, row=row, rank=rank, bankgroup=bankgroup, bank=b,
                                     channel=channel, column=column, offset=0)


def _check_map(config) -> None:
    order = config.address_map.order
    if order[:2] != ("row", "column") or order.index("channel") > order.index("rank"):
        raise DecodeError("config.address_map", "the compiler needs the order (row, column, "
                          "channel, rank, bankgroup, bank, offset) of the 'decode' preset: a "
                          f"K tile / V tile must be contiguous bursts, got {order}")


def _plan(workload: DecodeWorkload, mode: str, config) -> Plan:
    m, g = workload.model, config.geometry
    _check_map(config)
    layout = KVLayout(config, m)
    B = layout.banks
    heads = workload.heads
    if heads > B // 2:
        raise DecodeError("model.heads", f"{heads} heads{_per_device(m)} need a staging bank "
                          f"each among the upper {B // 2} banks")
    cores = config.npu.arrays
    _check_words(workload, config)
    _check_split(workload, cores, Words.of(config).e16)
    C = g.channels
    policy = "round-robin" if mode == "npu+pim" else "greedy"
    lengths = [n + 1 for n in workload.kv_lens]
    assignment = assign_channels(lengths, C, layout, policy)
    channel_of = assignment.channel_of()
    if mode == "neupims":
        sb = split_sub_batches(assignment, cores)
        first, second = sb.members(1), sb.members(2)
        row_order = first + second
        sub_batches = [list(range(len(first))), list(range(len(first), len(row_order)))]
    else:
        row_order = list(range(workload.batch))
        sub_batches = [row_order[:], []]
    slot_of = [0] * workload.batch
    for members in assignment.channels:
        for slot, r in enumerate(members):
            slot_of[r] = slot
    slots = max(len(ms) for ms in assignment.channels)
    # staging rows per slot: one per V chunk (scores), one per K group (queries)
    staging = slots * max(_score_chunks(workload, layout), layout.k_groups)
    weight_row = _weight_row(workload, config)
    kv = [ChannelKV(layout, c, rows=weight_row, layers=workload.layers) for c in range(C)]
    npu_kv = _npu_kv(workload, config, layout, weight_row) if mode == "npu-only" else None
    for c, channel in enumerate(kv if npu_kv is None else ()):
        try:
            if staging > 1:
                channel.allocator.allocate(staging - 1, "staging rows")
            for r in assignment.channels[c]:
                channel.add(r, workload.kv_lens[r] + workload.steps)
        except CapacityError as error:
            raise DecodeError("batch", f"the KV cache does not fit: {error} ({staging} "
                              f"staging rows; rows below {weight_row} of "
                              f"{config.stored_rows} stored)") from None
    return Plan(config, workload, mode, channel_of, slot_of, row_order, sub_batches, kv,
                slots=slots, cores=cores, npu_kv=npu_kv)


def npu_attention_form(workload: DecodeWorkload, config) -> str:
    """How npu-only runs attention on the array (``sim.decode.npu_kv``): the workload's
    ``npu_attention``, or with ``"auto"`` the form with fewer estimated array clocks
    (``Costs``) over the batch's requests at step 0: ``stream`` (K and V^T streamed, a
    GEMM per 32-element K piece and per 32-token V chunk and head) or ``weights`` (K^T
    and V as weights, a GEMM per 32-token chunk and per V row group for a block of k
    heads). Small arrays favour ``stream`` (its GEMMs stream many rows), large ones
    ``weights`` (one preload of K^T serves k heads)."""
    if workload.npu_attention != "auto":
        return workload.npu_attention
    costs, npu, wd = Costs(config), config.npu, Words.of(config)
    dh, heads, E = workload.model.d_head, workload.heads, BURST16
    pieces, block = dh // E, min(heads, wd.k)
    vh = max(1, wd.k // pieces)
    stream = weights = 0
    for n in workload.kv_lens:
        L = n + 1
        rows = [min(npu.accumulator_rows, L - m0) for m0 in range(0, L, npu.accumulator_rows)]
        logits = sum(costs.gemm(m, dh if pieces == 1 else E, 1) * (1 if pieces == 1 else pieces)
                     for m in rows)
        out = sum(costs.gemm(dh, min(E, L - c * E), 1) for c in range(math.ceil(L / E)))
        stream += heads * (logits + out)
        per_block = (math.ceil(L / E) * costs.gemm(block, dh, block * E)
                     + math.ceil(block / vh) * costs.gemm(vh, L, vh * dh))
        weights += math.ceil(heads / block) * per_block
    return "weights" if weights < stream else "stream"


def _npu_kv(workload: DecodeWorkload, config, layout: KVLayout, weight_row: int):
    """npu-only: every request's K and V in runs that span all channels
    (``sim.decode.npu_kv``, in the form :func:`npu_attention_form` picks), below the
    weights."""
    if npu_attention_form(workload, config) == "weights":
        npu_kv = NpuKV(layout.kv_heads, layout.d_head, config.geometry.burst_bytes,
                       word_bursts(config))
    else:
        npu_kv = NpuKVStream(layout.kv_heads, layout.d_head, config.geometry.burst_bytes)
    for layer in range(workload.layers):
        for r, n in enumerate(workload.kv_lens):
            npu_kv.add(r, layer, n + workload.steps)
    limit = _address(config, 0, 0, weight_row, 0)
    if npu_kv.end > limit:
        raise DecodeError("batch", f"the KV cache does not fit: {npu_kv.end} bytes, the rows "
                          f"below {weight_row} of {config.stored_rows} stored hold {limit}")
    return npu_kv


def _per_device(model) -> str:
    """" per device (of tp)" for a tensor-parallel model's messages."""
    return f" per device (of tp {model.tp})" if model.tp > 1 else ""


def columns(n: int, core: int, cores: int, e16: int = BURST16) -> tuple[int, int]:
    """Output columns [c0, c1) of ``core`` of ``cores`` in a GEMM of ``n`` columns (a
    multiple of ``e16``, the FP16 of a word): whole FP16 words, core i the words
    [W i / cores, W (i + 1) / cores) of the W = n / e16."""
    words = n // e16
    return (e16 * (words * core // cores), e16 * (words * (core + 1) // cores))


def _check_words(workload: DecodeWorkload, config) -> None:
    """Every activation and weight row is whole scratchpad words: d_model, the attention
    and FFN widths per device and the vocabulary multiples of the FP16 of a word
    (``NpuConfig.word_bytes`` / 2; 32 with one-burst words); a head is whole words or a
    whole fraction of one (d_head a multiple or a divisor of it)."""
    e16, m = Words.of(config).e16, workload.model
    if e16 == BURST16:
        return                  # the workload's own checks (multiples of 32)
    where = f"{e16} FP16 per {config.npu.word_bytes}-byte scratchpad word (NpuConfig.word_bytes)"
    if m.d_head % e16 and e16 % m.d_head:
        raise DecodeError("model.d_head", f"{m.name}: the compiler lays a head in whole "
                          f"scratchpad words or in a whole fraction of one: d_head "
                          f"{m.d_head} is neither a multiple nor a divisor of {where}")
    for field_name, what, value in (
            ("model.d_model", "d_model", m.d_model),
            ("model.heads", "heads x d_head per device", workload.d_attn),
            ("model.ffn", "the FFN width per device", workload.ffn),
            ("vocab", "vocab", workload.vocab)):
        if value % e16:
            raise DecodeError(field_name, f"{m.name}: {what} {value} is not a multiple of "
                              f"{where}")


def _split_widths(workload: DecodeWorkload) -> dict:
    """The output columns of each split GEMM (a weight matrix's columns)."""
    d = workload.model.d_model
    return {"w_qkv": 3 * workload.d_attn, "w_o": d, "w_1": workload.ffn, "w_2": d,
            "w_lm": workload.vocab}


def _check_split(workload: DecodeWorkload, cores: int, e16: int) -> None:
    """Several cores split every GEMM by output columns in whole FP16 words: every core
    needs at least one word of every matrix."""
    if cores == 1:
        return
    for name, n in _split_widths(workload).items():
        if n // e16 < cores:
            raise DecodeError("config.npu.arrays",
                              f"{cores} cores split the GEMMs by output columns in whole "
                              f"words of {e16} FP16: {name} has {n} columns, "
                              f"{n // e16} word(s)")


def _head_bursts(model) -> int:
    """Bursts (K pieces, K row columns) of one head's FP16 vector: d_head / 32."""
    return model.d_head // BURST16


def _thread(work: Stream, dmas: Stream) -> Stream:
    """``work`` with the ops of ``dmas`` threaded in, one after each instruction (not a
    WAIT) of ``work``, the rest at the end: in-order dispatch holds an instruction until
    its unit takes it, so a run of DMAs would hold ``work`` behind them."""
    out, queue = Stream(work.costs), list(dmas.ops)
    for op in work.ops:
        out.ops.append(op)
        if op.unit is not None and queue:
            out.ops.append(queue.pop(0))
    out.ops += queue
    return out


def _k_span(layout: KVLayout, tokens: int) -> int:
    """Words of one 32-element piece of the K cache in an npu-only ``stream`` K buffer (a
    word per token slot of every K tile)."""
    return layout.k_tiles(tokens) * layout.banks


def _npu_attention_dims(workload: DecodeWorkload, layout: KVLayout, words: Words) -> dict:
    """npu-only attention buffers (words): ``chunks`` of 32 tokens of the longest request
    (a logit row's words), ``score_words`` (a score row), ``q_words`` (a query row),
    ``out_words`` (an output row of an ``s . V`` GEMM, FP32)."""
    Lmax = max(workload.kv_lens) + workload.steps
    dh, v_heads = workload.model.d_head, max(1, words.k // _head_bursts(workload.model))
    return {"chunks": math.ceil(Lmax / layout.burst_elements),
            "score_words": math.ceil(Lmax / words.e16), "q_words": math.ceil(dh / words.e16),
            "out_words": math.ceil(v_heads * dh / words.e32)}


def _score_chunks(workload: DecodeWorkload, layout: KVLayout) -> int:
    """V token chunks of the longest request: each has its own score staging rows."""
    return layout.v_chunks(max(workload.kv_lens) + workload.steps)


def _linear_words(workload: DecodeWorkload, words: Words) -> dict:
    d, a, f, V = workload.model.d_model, workload.d_attn, workload.ffn, workload.vocab
    f16, f32 = words.f16, words.f32
    layer = {"ln": f32(4 * d), "w_qkv": d * f16(3 * a), "w_o": a * f16(d),
             "w_1": d * f16(f), "w_2": f * f16(d)}
    head = {"ln_f": f32(2 * d), "w_lm": d * f16(V)}
    return {"layer": layer, "head": head, "input": workload.batch * f32(d)}


#: What several cores exchange through the HBM after a split GEMM (or the attention):
#: name -> (columns of a row, given the workload; FP32?)
EXCHANGES = {"qkv": (lambda w: 3 * w.d_attn, False), "attn": (lambda w: w.d_attn, False),
             "o": (lambda w: w.model.d_model, True), "g16": (lambda w: w.ffn, False),
             "f2": (lambda w: w.model.d_model, True)}


def _exchange_words(workload, name: str, words: Words) -> int:
    """Scratchpad words of the HBM region of one exchange: every row of the batch."""
    cols, fp32 = EXCHANGES[name]
    return workload.batch * (words.f32 if fp32 else words.f16)(cols(workload))


def _core_words(workload: DecodeWorkload, cores: int, core: int, words: Words) -> dict:
    """Words of ``core``'s weight block per layer and of its LM head: the LayerNorm
    parameters whole, its share of each matrix's output columns (all K rows)."""
    d = workload.model.d_model
    rows = {"w_qkv": d, "w_o": workload.d_attn, "w_1": d, "w_2": workload.ffn, "w_lm": d}
    share = {}
    for name, n in _split_widths(workload).items():
        c0, c1 = columns(n, core, cores, words.e16)
        share[name] = rows[name] * words.f16(c1 - c0)
    sizes = _linear_words(workload, words)
    layer = {"ln": sizes["layer"]["ln"], **{k: share[k] for k in ("w_qkv", "w_o", "w_1", "w_2")}}
    head = {"ln_f": sizes["head"]["ln_f"], "w_lm": share["w_lm"]}
    return {"layer": layer, "head": head}


def _largest_core_words(workload: DecodeWorkload, cores: int, words: Words) -> dict:
    """The largest core's block sizes (what every core's buffers hold)."""
    blocks = [_core_words(workload, cores, core, words) for core in range(cores)]
    return {part: max(sum(b[part].values()) for b in blocks) for part in ("layer", "head")}


class CoreBlocks:
    """Where the cores' shares of one weight block (in scratchpad words) lie in the HBM.
    One core: its block right after ``base``. Several: from the first row set (one row
    in every bank of every channel) at or after ``base``, the cores' blocks dealt out in
    pieces of a row set / cores, piece j of core i in slot j x cores + i; so the cores,
    streaming their shares at once, read the same DRAM rows (different columns) instead
    of thrashing each bank between two rows."""

    def __init__(self, config, base: int, words: list):
        g, unit = config.geometry, config.npu.word_bytes
        self.cores, self.unit = len(words), unit
        if self.cores == 1:
            self.start, self.piece, self.slots = base, max(words[0], 1), 1
        else:
            row_set = g.channels * g.banks * g.bursts_per_row * g.burst_bytes
            self.start = -(-base // row_set) * row_set
            self.piece = max(row_set // unit // self.cores, 1)
            self.slots = self.cores * max(-(-w // self.piece) for w in words)
        self.end = self.start + self.slots * self.piece * unit if self.cores > 1 \
            else base + words[0] * unit

    def address(self, core: int, word: int) -> int:
        """HBM address of word ``word`` of ``core``'s block."""
        piece, rest = divmod(word, self.piece)
        return self.start + ((piece * self.cores + core) * self.piece + rest) * self.unit

    def runs(self, core: int, first: int, end: int) -> list:
        """(HBM address, first word, words) of the contiguous runs of words [first, end)."""
        out, word = [], first
        while word < end:
            n = min(end, (word // self.piece + 1) * self.piece) - word
            out.append((self.address(core, word), word, n))
            word += n
        return out


def _weight_bursts(workload, config) -> int:
    """Bursts from the first weight row to the end of the inputs and exchange regions
    (the layout of :func:`_image`, padding included)."""
    words = Words.of(config)
    sizes = _linear_words(workload, words)
    P = config.npu.arrays
    at = 0
    for part in ("layer",) * workload.layers + ("head",):
        at += sizes[part]["ln" if part == "layer" else "ln_f"] * words.bytes
        shares = [sum(v for k, v in _core_words(workload, P, c, words)[part].items()
                      if k not in ("ln", "ln_f")) for c in range(P)]
        at = CoreBlocks(config, at, shares).end
    at += workload.steps * sizes["input"] * words.bytes
    if P > 1:
        at += workload.layers * sum(_exchange_words(workload, n, words)
                                    for n in EXCHANGES) * words.bytes
    return at // config.geometry.burst_bytes


def _weight_row(workload, config) -> int:
    bursts = _weight_bursts(workload, config)
    g = config.geometry
    row_bursts = g.channels * g.banks * g.bursts_per_row
    rows = math.ceil(bursts / row_bursts)
    first = config.stored_rows - rows
    if first < 2:
        raise DecodeError("model", f"weights and inputs need {rows} rows, the RTL stores "
                          f"{config.stored_rows} (DeviceConfig.stored_rows)")
    return first


# ----------------------------------------------------------------------------- the image

def _image(plan: Plan, data: DecodeData, contents: bool = True) -> HbmImage:
    """The HBM image of ``data`` and its addresses in ``plan.hbm``; ``contents`` False: the
    addresses only (an empty image: ``compile_decode(..., values=False)``)."""
    config, w = plan.config, plan.workload
    image = HbmImage(config)
    wd = plan.words
    base = _address(config, 0, 0, _weight_row(w, config), 0)
    sizes = _linear_words(w, wd)
    P = plan.cores
    at = base

    def pitch(values, bits):
        return values.shape[1] * bits // (8 * wd.bytes)

    def matrix(values, bits):
        """The scratchpad words of ``values``, rows of whole words."""
        return matrix_words(values, bits, pitch(values, bits), wd.bytes)

    def put(values, bits):
        nonlocal at
        if contents:
            image.write_words(at, matrix(values, bits))
        at += values.shape[0] * pitch(values, bits) * wd.bytes

    def share(values, core):
        c0, c1 = plan.columns(values.shape[1], core)
        return values[:, c0:c1]

    def blocks(matrices) -> CoreBlocks:
        """Each core's column shares of ``matrices``, one block per core (CoreBlocks)."""
        nonlocal at
        if not contents:
            placed = CoreBlocks(config, at, [sum(v.shape[0] * pitch(share(v, core), 16)
                                                 for v in matrices) for core in range(P)])
            at = placed.end
            return placed
        per_core = [[w for values in matrices for w in matrix(share(values, core), 16)]
                    for core in range(P)]
        placed = CoreBlocks(config, at, [len(words) for words in per_core])
        for core, words in enumerate(per_core):
            for address, first, n in placed.runs(core, 0, len(words)):
                image.write_words(address, words[first:first + n])
        at = placed.end
        return placed

    # per layer: the LayerNorm parameters, then each core's column share of W_qkv, W_o,
    # W_1, W_2 (one core: the whole matrices, in that order)
    plan.hbm["layers"] = []
    for lw in data.layers:
        ln = at
        put(lw.ln, 32)
        plan.hbm["layers"].append({"ln": ln, "core": blocks((lw.w_qkv, lw.w_o, lw.w_1,
                                                             lw.w_2))})
    plan.hbm["head"] = at
    put(data.ln_f, 32)
    plan.hbm["head_core"] = blocks((data.w_lm,))
    if P == 1:
        assert at - base == (w.layers * sum(sizes["layer"].values())
                             + sum(sizes["head"].values())) * wd.bytes
    plan.hbm["inputs"] = []
    for step in range(w.steps):
        if contents:
            image.write_words(at, matrix(data.inputs[step][plan.row_order], 32))
        plan.hbm["inputs"].append(at)
        at += sizes["input"] * wd.bytes
    plan.hbm["exchange"] = {}
    if P > 1:
        for layer in range(w.layers):
            for name in EXCHANGES:
                plan.hbm["exchange"][name, layer] = at
                at += _exchange_words(w, name, wd) * wd.bytes
    # the cached tokens
    layout = plan.layout
    for r in range(w.batch if contents else 0):
        n = w.kv_lens[r]
        if n == 0:
            continue
        c = plan.channel_of[r]
        for layer in range(w.layers):
            if plan.npu_kv is not None:
                image.words.update(plan.npu_kv.writes(r, layer, data.keys[r][layer],
                                                      data.values[r][layer]))
                continue
            pages = plan.kv[c].requests[r].layers[layer]
            for write in token_writes(layout, pages, data.keys[r][layer], data.values[r][layer], 0):
                bank = config.geometry.bank_index(write.rank, write.bankgroup, write.bank)
                image.words[_address(config, c, bank, write.row, write.column)] = write.data
    return image


def _scratchpad(plan: Plan) -> dict:
    cfg, w = plan.config, plan.workload
    m = w.model
    Bt, d, f, V, dh, heads = w.batch, m.d_model, w.ffn, w.vocab, m.d_head, w.heads
    a = w.d_attn
    layout = plan.layout
    Lmax = max(w.kv_lens) + w.steps
    sp = Scratchpad(cfg.npu.scratchpad_words)
    s = {}
    wd = plan.words
    f32, f16 = wd.f32, wd.f16
    # vector operands first: the VECTOR range check counts `length` in words
    for name, words in (("x", Bt * f32(d)), ("h", Bt * f32(d)), ("h16", Bt * f16(d)),
                        ("qkv", Bt * f16(3 * a)), ("attn", Bt * f16(a)), ("o", Bt * f32(d)),
                        ("r1", Bt * f32(d)), ("h2", Bt * f32(d)), ("h2_16", Bt * f16(d)),
                        ("f1", Bt * f32(f)), ("g16", Bt * f16(f)), ("f2", Bt * f32(d)),
                        ("logits", Bt * f32(V)), ("t", 1), ("dv", f32(d)), ("sq", f32(d)),
                        # attention scratch shared in vector-engine order
                        ("l32", math.ceil(Lmax / wd.e32)), ("e", math.ceil(Lmax / wd.e32)),
                        ("p", math.ceil(Lmax / wd.e32)), ("mx", 1), ("sm", 1), ("rc", 1),
                        ("v32", f32(a)), ("o32", math.ceil(dh / wd.e32)),
                        ("vrmw", min(Bt, vrmw_rows(heads, dh)) * heads * dh)):
        if name == "logits":                    # each core's share of the vocabulary
            words = Bt * f32(_largest_share(plan, V))
        s[name] = sp.take(name, words)
    if plan.cores > 1:      # each core's share of a split GEMM's output, before the exchange
        for name, words in (("qkv_p", f16(_largest_share(plan, 3 * a))),
                            ("o_p", f32(_largest_share(plan, d))),
                            ("f1_p", f32(_largest_share(plan, f))),
                            ("g16_p", f16(_largest_share(plan, f))),
                            ("f2_p", f32(_largest_share(plan, d)))):
            s[name] = sp.take(name, Bt * words)
    if plan.mode == "npu-only" and plan.npu_kv.form == "stream":
        chunks = math.ceil(Lmax / layout.burst_elements)
        for i in range(2):
            s[f"kbuf{i}"] = sp.take(f"kbuf{i}", _head_bursts(m) * _k_span(layout, Lmax))
            s[f"vbuf{i}"] = sp.take(f"vbuf{i}", chunks * dh)
            s[f"qcol{i}"] = sp.take(f"qcol{i}", dh)
        s["lcol"] = sp.take("lcol", Lmax)
        s["scol"] = sp.take("scol", chunks * layout.burst_elements)
        s["ocol"] = sp.take("ocol", dh)
        s["q32"] = sp.take("q32", f32(dh))
        if _head_bursts(m) > 1:
            s["l16"] = sp.take("l16", math.ceil(Lmax / wd.e16))
    elif plan.mode == "npu-only":     # a block of k heads: K^T rows per chunk, V rows per token
        kv, dims = plan.npu_kv, _npu_attention_dims(w, layout, wd)
        cmax, block = dims["chunks"], min(heads, wd.k)
        v_groups = math.ceil(block / kv.v_heads)
        for i in range(2):
            s[f"kbuf{i}"] = sp.take(f"kbuf{i}", cmax * dh)
            s[f"vbuf{i}"] = sp.take(f"vbuf{i}", v_groups * cmax * layout.burst_elements
                                    * kv.v_words)
            s[f"qrow{i}"] = sp.take(f"qrow{i}", block * dims["q_words"])
        s["l16"] = sp.take("l16", block * cmax)
        s["srow"] = sp.take("srow", block * dims["score_words"])
        s["vout"] = sp.take("vout", v_groups * kv.v_heads * dims["out_words"])
        s["q32"] = sp.take("q32", math.ceil(dh / wd.e32))
    else:
        chunks = _score_chunks(w, layout)
        s["lres"] = sp.take("lres", Bt * heads * layout.k_tiles(Lmax))
        s["ares"] = sp.take("ares", Bt * heads * chunks * layout.v_tiles)
        s["s16"] = sp.take("s16", Bt * heads * math.ceil(Lmax / wd.e16))
        if chunks > 1:
            s["c32"] = sp.take("c32", f32(dh))      # a chunk's partial output in FP32
    sizes = _largest_core_words(w, plan.cores, wd)
    for i in range(min(2, w.layers)):
        s[f"wbuf{i}"] = sp.take(f"wbuf{i}", sizes["layer"])
    s["head"] = sp.take("head", sizes["head"])
    s["end"] = sp.next
    plan.sp = s
    return s


#: Scratchpad words of the V append's read-modify-write buffer (a word per V burst): the
#: requests of a batch go through it this many words' worth at a time
VRMW_WORDS = 16384


def vrmw_rows(heads: int, d_head: int) -> int:
    """Requests whose V bursts the append reads, modifies and writes back at once."""
    return max(1, VRMW_WORDS // (heads * d_head))


def _largest_share(plan: Plan, n: int) -> int:
    return max(c1 - c0 for c0, c1 in (plan.columns(n, core) for core in range(plan.cores)))


# ----------------------------------------------------------------------------- pieces

class Builder:
    """Emits the streams of one step for one core (``core`` of ``plan.cores``)."""

    def __init__(self, plan: Plan, step: int, core: int = 0):
        self.plan, self.step, self.core = plan, step, core
        self.cores = plan.cores
        self.config = plan.config
        self.w = plan.workload
        m = self.w.model
        self.d, self.f, self.dh, self.heads = m.d_model, self.w.ffn, m.d_head, self.w.heads
        self.wd = wd = plan.words
        self.a = self.w.d_attn             # this device's q width (d at tensor parallel 1)
        self.pa = wd.f16(self.a)           # ... in scratchpad words
        self.hb = _head_bursts(m)          # a head's bursts (K pieces of 32)
        self.costs = Costs(self.config)
        self.sp = plan.sp
        self.layout = plan.layout
        self.chunks = _score_chunks(self.w, self.layout)
        sizes = _core_words(self.w, self.cores, core, wd)["layer"]
        self.offsets, at = {}, 0
        for name in ("ln", "w_qkv", "w_o", "w_1", "w_2"):
            self.offsets[name] = at
            at += sizes[name]
        self.layer_words = at

    def stream(self) -> Stream:
        return Stream(self.costs)

    def wbuf(self, layer: int, name: str) -> int:
        return self.sp[f"wbuf{layer % 2}"] + self.offsets[name]

    def _load_pieces(self, pieces) -> Stream:
        """DMA loads of (HBM address, scratchpad word, words), neighbours in both merged."""
        s, unit = self.stream(), self.wd.bytes
        merged = []
        for hbm, sp, words in pieces:
            if words and merged and merged[-1][0] + merged[-1][2] * unit == hbm \
                    and merged[-1][1] + merged[-1][2] == sp:
                merged[-1][2] += words
            elif words:
                merged.append([hbm, sp, words])
        for hbm, sp, words in merged:
            s.load_words(hbm, sp, words, self.config.geometry.channels)
        return s

    def load_layer(self, layer: int, part: str = "all") -> Stream:
        """DMA of a layer's weights into its buffer: ``all``, ``qkv`` (LayerNorm
        parameters and W_qkv) or ``rest`` (W_o, W_1, W_2); this core's share of each
        matrix (all of it with one core)."""
        first, last = {"all": ("ln", None), "qkv": ("ln", "w_o"), "rest": ("w_o", None)}[part]
        start = self.offsets[first]
        end = self.offsets[last] if last else self.layer_words
        block = self.plan.hbm["layers"][layer]
        buf, ln = self.sp[f"wbuf{layer % 2}"], self.offsets["w_qkv"]
        pieces = []
        if start < ln:
            pieces.append((block["ln"], buf, ln))
        lo = max(start, ln)
        pieces += [(address, buf + ln + first, n)
                   for address, first, n in block["core"].runs(self.core, lo - ln, end - ln)]
        return self._load_pieces(pieces)

    def load_head(self) -> Stream:
        words = _core_words(self.w, self.cores, self.core, self.wd)["head"]
        lm = self.sp["head"] + words["ln_f"]
        return self._load_pieces(
            [(self.plan.hbm["head"], self.sp["head"], words["ln_f"])]
            + [(address, lm + first, n) for address, first, n
               in self.plan.hbm["head_core"].runs(self.core, 0, words["w_lm"])])

    # -- several cores: split GEMMs and exchanges through the HBM --
    def _linear(self, s: Stream, a, a_pitch, w, k, n, out, out_pitch, part, r0, rows_n,
                fp32=False) -> None:
        """out[r0 .. r0 + rows_n) = A . W (``n`` columns). One core: the whole GEMM into
        ``out``. Several: this core's columns (``Plan.columns``; its share of W, laid out
        by itself) into ``part``, whose rows are that share (the exchange assembles
        ``out``)."""
        wd = self.wd
        if self.cores == 1:
            s.gemm(a + r0 * a_pitch, w, out + r0 * out_pitch, rows_n, k, n, a_pitch,
                   wd.f16(n), out_pitch, fp32=fp32)
            return
        c0, c1 = self.plan.columns(n, self.core)
        pitch = (wd.f32 if fp32 else wd.f16)(c1 - c0)
        s.gemm(a + r0 * a_pitch, w, part + r0 * pitch, rows_n, k, c1 - c0, a_pitch,
               wd.f16(c1 - c0), pitch, fp32=fp32)

    def _part_words(self, n: int, fp32: bool) -> tuple[int, int]:
        """(first word in a full row, words) of this core's columns of an ``n``-column
        output."""
        c0, c1 = self.plan.columns(n, self.core)
        width = self.wd.e32 if fp32 else self.wd.e16
        return c0 // width, (c1 - c0) // width

    def exchange(self, name: str, layer: int, rows: list, full: int, full_pitch: int,
                 part: int | None = None, mine=None) -> Stream:
        """Several cores: each stores its part of ``rows`` into the HBM region of
        (``name``, ``layer``), a SYNC (every core's stores acknowledged), then every core
        loads all the rows into ``full``. ``part`` (a split GEMM's share of the
        columns: :meth:`_part_words` per row) or, without it, this core's whole rows of
        ``full`` (those ``mine`` accepts: the attention). One core: nothing."""
        s = self.stream()
        if self.cores == 1 or not rows:
            return s
        unit = self.wd.bytes
        base = self.plan.hbm["exchange"][name, layer]
        r0, n = rows[0], len(rows)
        cols, fp32 = EXCHANGES[name]
        s.wait("gemm", "vector")        # the DMA reads what they wrote
        first, pitch = self._part_words(cols(self.w), fp32)
        for row in rows:
            if part is not None:
                s.store_words(base + (row * full_pitch + first) * unit, part + row * pitch,
                              pitch)
            elif mine(row):
                s.store_words(base + row * full_pitch * unit, full + row * full_pitch,
                              full_pitch)
        s.sync("dma")
        s.load_words(base + r0 * full_pitch * unit, full + r0 * full_pitch, n * full_pitch,
                     self.config.geometry.channels)
        s.wait("dma")
        return s

    def mine(self, row: int) -> bool:
        return self.plan.core_of(row) == self.core

    def attn_exchange(self, layer: int, rows: list) -> tuple[Stream, Stream]:
        """The attention outputs of ``rows`` from the cores that ran them to every core:
        (the stores, the SYNC and loads): a stage barrier goes between the two."""
        s = self.exchange("attn", layer, rows, self.sp["attn"], self.pa,
                          mine=self.mine)
        sync_at = next((i for i, op in enumerate(s.ops) if op.ins.op is NpuOp.SYNC), len(s.ops))
        stores, rest = self.stream(), self.stream()
        stores.ops, rest.ops = s.ops[:sync_at], s.ops[sync_at + 1:]
        return stores, rest

    def load_inputs(self) -> Stream:
        s = self.stream()
        s.load_words(self.plan.hbm["inputs"][self.step], self.sp["x"],
                     _linear_words(self.w, self.wd)["input"], self.config.geometry.channels)
        return s

    # -- NPU pieces over a range of rows --
    def _layernorm(self, s: Stream, x, gamma, beta, y, rows) -> None:
        pd = self.wd.f32(self.d)
        for r in rows:
            for ins in layernorm_ops(x + r * pd, gamma, beta, y + r * pd, self.sp["t"],
                                     self.sp["dv"], self.sp["sq"], self.d, EPS):
                s.vec_ins(ins)

    def qkv(self, layer: int, rows: list, weights_pending: bool = False) -> Stream:
        s, sp, d = self.stream(), self.sp, self.d
        if not rows:
            return s
        r0, n = rows[0], len(rows)
        pd, ph = self.wd.f32(d), self.wd.f16(d)
        g1 = self.wbuf(layer, "ln")
        if weights_pending:         # the LayerNorm parameters come with the weights
            s.wait("dma")
        self._layernorm(s, sp["x"], g1, g1 + pd, sp["h"], rows)
        s.vec(VectorOp.CVT32TO16, a=sp["h"] + r0 * pd, d=sp["h16"] + r0 * ph, length=n * d)
        s.wait("vector")
        self._linear(s, sp["h16"], ph, self.wbuf(layer, "w_qkv"), d, 3 * self.a, sp["qkv"],
                     3 * self.pa, sp.get("qkv_p"), r0, n)
        if self.cores > 1:
            s.wait("gemm")
            s += self.exchange("qkv", layer, rows, sp["qkv"], 3 * self.pa, sp["qkv_p"])
        return s

    def proj_ffn(self, layer: int, rows: list) -> Stream:
        s, sp, d, f = self.stream(), self.sp, self.d, self.f
        if not rows:
            return s
        r0, n = rows[0], len(rows)
        wd = self.wd
        pd, ph, pf, pfh = wd.f32(d), wd.f16(d), wd.f32(f), wd.f16(f)
        g2 = self.wbuf(layer, "ln") + 2 * pd
        P = self.cores
        self._linear(s, sp["attn"], self.pa, self.wbuf(layer, "w_o"), self.a, d,
                     sp["o"], pd, sp.get("o_p"), r0, n, fp32=True)
        s.wait("gemm")
        s += self.exchange("o", layer, rows, sp["o"], pd, sp.get("o_p"))
        s.vec(VectorOp.ADD, a=sp["x"] + r0 * pd, b=sp["o"] + r0 * pd, d=sp["r1"] + r0 * pd,
              length=n * d)
        self._layernorm(s, sp["r1"], g2, g2 + pd, sp["h2"], rows)
        s.vec(VectorOp.CVT32TO16, a=sp["h2"] + r0 * pd, d=sp["h2_16"] + r0 * ph, length=n * d)
        s.wait("vector")
        self._linear(s, sp["h2_16"], ph, self.wbuf(layer, "w_1"), d, f, sp["f1"], pf,
                     sp.get("f1_p"), r0, n, fp32=True)
        s.wait("gemm")
        # GELU on this core's columns only (several cores: its share, then the exchange)
        f1, g16 = (sp["f1"], sp["g16"]) if P == 1 else (sp["f1_p"], sp["g16_p"])
        fc = f if P == 1 else self._part_words(f, False)[1] * wd.e16    # this core's
        s.vec(VectorOp.GELU, a=f1 + r0 * wd.f32(fc), d=f1 + r0 * wd.f32(fc),
              length=n * fc)
        s.vec(VectorOp.CVT32TO16, a=f1 + r0 * wd.f32(fc), d=g16 + r0 * wd.f16(fc),
              length=n * fc)
        s.wait("vector")
        s += self.exchange("g16", layer, rows, sp["g16"], pfh, sp.get("g16_p"))
        self._linear(s, sp["g16"], pfh, self.wbuf(layer, "w_2"), f, d, sp["f2"], pd,
                     sp.get("f2_p"), r0, n, fp32=True)
        s.wait("gemm")
        s += self.exchange("f2", layer, rows, sp["f2"], pd, sp.get("f2_p"))
        s.vec(VectorOp.ADD, a=sp["r1"] + r0 * pd, b=sp["f2"] + r0 * pd, d=sp["x"] + r0 * pd,
              length=n * d)
        return s

    def lm_head(self) -> Stream:
        s, sp, d = self.stream(), self.sp, self.d
        Bt, V = self.w.batch, self.w.vocab
        pd, ph = self.wd.f32(d), self.wd.f16(d)
        ln = sp["head"]
        w_lm = ln + 2 * pd
        self._layernorm(s, sp["x"], ln, ln + pd, sp["h"], range(Bt))
        s.vec(VectorOp.CVT32TO16, a=sp["h"], d=sp["h16"], length=Bt * d)
        s.wait("vector", "dma")
        # several cores: each its share of the vocabulary, kept (checked) in its scratchpad
        self._linear(s, sp["h16"], ph, w_lm, d, V, sp["logits"], self.wd.f32(V), sp["logits"],
                     0, Bt, fp32=True)
        return s

    # -- attention --
    def _token(self, r: int) -> int:
        return self.w.kv_lens[r] + self.step          # index of the new token

    def _pages(self, r: int, layer: int):
        return self.plan.kv[self.plan.channel_of[r]].requests[r].layers[layer]

    def _head_at(self, row_word: int, head: int) -> tuple[int, int]:
        """(word, first FP16 lane) of ``head`` in the FP16 row at ``row_word``: heads side
        by side, whole words each or several to a word (``_check_words``)."""
        word, lane = divmod(head * self.dh, self.wd.e16)
        return row_word + word, lane

    def _qkv_at(self, row: int, part: int, head: int) -> tuple[int, int]:
        return self._head_at(self.sp["qkv"] + (3 * row + part) * self.pa, head)

    def _attn_at(self, row: int, head: int) -> tuple[int, int]:
        return self._head_at(self.sp["attn"] + row * self.pa, head)

    def _head_operand(self, at: tuple[int, int], flag: int) -> dict:
        """VECTOR fields for a head's FP16 vector at ``at`` as operand ``a`` or ``d``
        (``flag``): dense from a word's start, or strided (group d_head, its first lane)
        in a word holding several heads."""
        word, lane = at
        key = "a" if flag == FLAG_STRIDED_A else "d"
        if self.dh >= self.wd.e16:
            return {key: word}
        return {key: word, "flags": flag, "imm": strided_imm(self.dh, lane)}

    def _v_burst(self, channel: int, pages, head: int, v_tile: int, burst: int) -> int:
        """HBM address of V burst ``burst`` (32 tokens, counted over all chunks) of one
        dimension tile of ``head``: chunk ``burst // bursts per row``, bank 0 (the tile's
        B banks follow)."""
        per_row = self.layout.row_elements // self.layout.burst_elements
        return _address(self.config, channel, 0, pages.v[burst // per_row][head][v_tile],
                        burst % per_row)

    def _k_place(self, head: int) -> tuple[int, int]:
        """(K group, first column) of ``head``'s K bursts in its K row: a row holds
        ``heads_per_row`` heads side by side, further heads go to further K groups."""
        group, slot = divmod(head, self.layout.heads_per_row)
        return group, slot * self.hb

    def _store_bursts(self, s: Stream, addresses, at) -> None:
        """One DMA store per burst: burst j of the FP16 vector at ``at`` (a word, or
        (word, first lane: a multiple of 32)) to ``addresses[j]``."""
        k = self.wd.k
        word, lane = at if isinstance(at, tuple) else (at, 0)
        for j, address in enumerate(addresses):
            piece = lane // BURST16 + j
            s.store(address, word + piece // k, 1, slice=piece % k)

    def append(self, layer: int, rows: list) -> Stream:
        """Store the new token's K and V of every request in ``rows``: the one a burst per
        piece, the other by read-modify-write of its token chunk (:func:`vrmw_rows`
        requests at a time through the ``vrmw`` buffer). PIM layout: K by bursts (a
        column of its K row), V by chunks, and so the npu-only ``stream`` form; its
        ``weights`` form (``sim.decode.npu_kv``): V by bursts, K by chunks."""
        s, sp, dh, plan = self.stream(), self.sp, self.dh, self.plan
        group = vrmw_rows(self.heads, dh)
        weights = plan.npu_kv is not None and plan.npu_kv.form == "weights"
        burst_part, chunk_part = (2, 1) if weights else (1, 2)

        def at(i, h):                           # request i of a group, head h: dh words
            return sp["vrmw"] + (i * self.heads + h) * dh

        def chunk_moves(i, row):    # a word per chunk burst (a dimension)
            r = plan.row_order[row]
            return [(address, at(i, h) + word, count) for h in range(self.heads)
                    for address, count, word in self._token_chunk(r, layer, h, self._token(r))]

        def chunks(batch, move):
            per_row = [chunk_moves(i, row) for i, row in enumerate(batch)]
            for address, word, count in self._channel_turns(batch, per_row):
                move(address, word, count, spread=True)

        def bursts(row):
            r = plan.row_order[row]
            for h in range(self.heads):
                self._store_bursts(s, self._token_bursts(r, layer, h, self._token(r)),
                                   self._qkv_at(row, burst_part, h))
        for first in range(0, len(rows), group):
            if first:
                s.wait("dma")                   # the stores have read the buffer
            batch = rows[first:first + group]
            if self.config.npu.dma_overlap and plan.npu_kv is None:  # stores, loads by channel
                for row in batch:
                    bursts(row)
                chunks(batch, s.load)
            else:                               # each request's stores, then its loads
                for i, row in enumerate(batch):
                    bursts(row)
                    for address, word, count in chunk_moves(i, row):
                        s.load(address, word, count, spread=True)
            s.wait("dma")
            for i, row in enumerate(batch):
                t = self._token(plan.row_order[row])
                s.vec(VectorOp.CVT16TO32, a=self._qkv_at(row, chunk_part, 0)[0], d=sp["v32"],
                      length=self.a)
                s.vec(VectorOp.CVT32TO16, a=sp["v32"], d=at(i, 0), length=self.a,
                      flags=FLAG_STRIDED_D, imm=strided_imm(1, t % self.layout.burst_elements))
            s.wait("vector")
            chunks(batch, s.store)
        return s

    def _channel_turns(self, batch: list, per_row: list) -> list:
        """The transfers of ``per_row`` (one list per row of ``batch``) in the order the
        DMA runs them: one list after the other, or, with ``NpuConfig.dma_overlap``, in
        turns over the rows' channels (a transfer to each channel before the next to any),
        so that transfers to different channels issue at once. npu-only's KV runs span
        every channel, so its order stays."""
        if not self.config.npu.dma_overlap or self.plan.npu_kv is not None:
            return [move for moves in per_row for move in moves]
        by_channel = {}
        for row, moves in zip(batch, per_row):
            by_channel.setdefault(self.plan.channel_of[self.plan.row_order[row]], []).extend(moves)
        queues = list(by_channel.values())
        return [q[j] for j in range(max((len(q) for q in queues), default=0))
                for q in queues if j < len(q)]

    def _token_bursts(self, r: int, layer: int, h: int, t: int) -> list:
        """HBM addresses of token ``t``'s bursts of head ``h`` (a burst per piece of 32
        elements): K, a column each of the token's K row (PIM layout), or V, one burst
        of each piece's run (npu-only)."""
        kv = self.plan.npu_kv
        if kv is not None:
            return [kv.v(r, layer, h, j, t) if kv.form == "weights" else kv.k(r, layer, h, j, t)
                    for j in range(self.hb)]
        c, pages, B = self.plan.channel_of[r], self._pages(r, layer), self.layout.banks
        group, column = self._k_place(h)
        return [_address(self.config, c, t % B, pages.k[t // B][group], column + j)
                for j in range(self.hb)]

    def _token_chunk(self, r: int, layer: int, h: int, t: int) -> list:
        """(HBM address, bursts, first word) of the bursts that hold token ``t`` of head
        ``h`` among 32 tokens, a word per dimension: V, per V tile ``banks`` bursts (PIM
        layout), or K, the token's chunk, ``d_head`` bursts in a row (npu-only)."""
        chunk = t // self.layout.burst_elements
        kv = self.plan.npu_kv
        if kv is not None:
            at = kv.k(r, layer, h, chunk) if kv.form == "weights" else kv.v(r, layer, h, chunk)
            return [(at, self.dh, 0)]
        c, pages, B = self.plan.channel_of[r], self._pages(r, layer), self.layout.banks
        return [(self._v_burst(c, pages, h, vt, chunk), B, vt * B)
                for vt in range(self.layout.v_tiles)]

    def _softmax(self, s: Stream, logits: int, n: int, flags: int, imm: int, out16: int,
                 out_flags: int = 0, out_imm: int = 0) -> None:
        """FP16 logits (strided by ``flags``/``imm``) -> FP16 scores at ``out16``."""
        sp = self.sp
        s.vec(VectorOp.CVT16TO32, a=logits, d=sp["l32"], length=n, flags=flags, imm=imm)
        s.vec(VectorOp.MUL, a=sp["l32"], d=sp["l32"], length=n, imm=softmax_scale_bits(self.dh),
              flags=FLAG_IMM_B)
        s.vec(VectorOp.RMAX, a=sp["l32"], d=sp["mx"], length=n)
        s.vec(VectorOp.SUB, a=sp["l32"], b=sp["mx"], d=sp["e"], length=n, flags=FLAG_SCALAR_B)
        s.vec(VectorOp.EXP, a=sp["e"], d=sp["e"], length=n)
        s.vec(VectorOp.SUM, a=sp["e"], d=sp["sm"], length=n)
        s.vec(VectorOp.RECIP, a=sp["sm"], d=sp["rc"], length=1)
        s.vec(VectorOp.MUL, a=sp["e"], b=sp["rc"], d=sp["p"], length=n, flags=FLAG_SCALAR_B)
        s.vec(VectorOp.CVT32TO16, a=sp["p"], d=out16, length=n, flags=out_flags, imm=out_imm)

    def _by_channel(self, rows: list) -> list:
        """Rows ordered round-robin over channels (the PIM port is in order)."""
        per = {}
        for row in rows:
            per.setdefault(self.plan.channel_of[self.plan.row_order[row]], []).append(row)
        out, lists = [], list(per.values())
        for i in range(max((len(v) for v in lists), default=0)):
            out += [v[i] for v in lists if i < len(v)]
        return out

    def mha_pim(self, layer: int, rows: list) -> Stream:
        s, sp, lay, cfg, plan = self.stream(), self.sp, self.layout, self.config, self.plan
        if not rows:
            return s
        B, heads = lay.banks, self.heads
        Lmax = max(self.w.kv_lens) + self.w.steps
        per = lay.burst_elements
        kt_max, ch = lay.k_tiles(Lmax), math.ceil(Lmax / self.wd.e16)
        s += self.append(layer, rows)
        for row in rows:           # queries into the staging rows: bank 0, a row per K group
            r = plan.row_order[row]
            for h in range(heads):
                group, column = self._k_place(h)
                self._store_bursts(s, [_address(cfg, plan.channel_of[r], lay.query_bank,
                                                plan.staging_row(r, group), column + j)
                                       for j in range(self.hb)], self._qkv_at(row, 0, h))
        s.wait("dma")
        order = self._by_channel(rows)
        for row in order:
            r = plan.row_order[row]
            c, pages, L = plan.channel_of[r], self._pages(r, layer), self._token(r) + 1
            for group in range(lay.k_groups):
                members = lay.group_heads(group)
                s.pim("gwrite", c, row=plan.staging_row(r, group),
                      **lay.bank_coords(lay.query_bank))
                for kt in range(lay.k_tiles(L)):
                    s.pim("header", c, row=pages.k[kt][group], gemvs=len(members),
                          comps=len(members) * lay.head_comps)
                    for slot, h in enumerate(members):
                        s.pim("gemv", c, column=slot * lay.head_comps, comps=lay.head_comps,
                              sp=sp["lres"] + (row * heads + h) * kt_max + kt)
        s.wait("pim")
        for row in rows:
            r = plan.row_order[row]
            L = self._token(r) + 1
            for h in range(heads):
                self._softmax(s, sp["lres"] + (row * heads + h) * kt_max, L, FLAG_STRIDED_A,
                              strided_imm(B, 0), sp["s16"] + (row * heads + h) * ch)
        s.wait("vector")
        for row in rows:
            r = plan.row_order[row]
            c, L = plan.channel_of[r], self._token(r) + 1
            for h in range(heads):          # burst b: 32 scores, column b of its chunk's row
                self._store_bursts(s, [_address(cfg, c, lay.score_bank + h,
                                                plan.staging_row(r, chunk), column)
                                       for chunk, column in (divmod(b, lay.row_elements // per)
                                                             for b in range(math.ceil(L / per)))],
                                   sp["s16"] + (row * heads + h) * ch)
        s.wait("dma")
        for row in order:
            self._attend_pim(s, layer, row)
        s.wait("pim")
        for row in rows:
            for h in range(heads):
                self._chunk_sum(s, row, h)
        return s

    def _ares(self, row: int, head: int, chunk: int) -> int:
        """First scratchpad word of the partial outputs of V chunk ``chunk`` (a word per
        V tile, a dimension per bank)."""
        index = (row * self.heads + head) * self.chunks + chunk
        return self.sp["ares"] + index * self.layout.v_tiles

    def _attend_pim(self, s: Stream, layer: int, row: int) -> None:
        """Per head and V chunk: GWRITE of the chunk's scores, then per V tile a HEADER
        and a GEMV over the chunk's tokens."""
        lay, plan = self.layout, self.plan
        r = plan.row_order[row]
        c, pages, L = plan.channel_of[r], self._pages(r, layer), self._token(r) + 1
        for h in range(self.heads):
            for chunk in range(lay.v_chunks(L)):
                comps = math.ceil(min(lay.row_elements, L - chunk * lay.row_elements) / lay.lanes)
                s.pim("gwrite", c, row=plan.staging_row(r, chunk),
                      **lay.bank_coords(lay.score_bank + h))
                for vt in range(lay.v_tiles):
                    s.pim("header", c, row=pages.v[chunk][h][vt], gemvs=1, comps=comps)
                    s.pim("gemv", c, column=0, comps=comps, sp=self._ares(row, h, chunk) + vt)

    def _chunk_sum(self, s: Stream, row: int, head: int) -> None:
        """The NPU's chunk sum (``sim.kv_layout.npu_chunk_sum``): +0.0 + fp32(partial 0),
        then + fp32(partial c) in chunk order, rounded into the attention output."""
        sp, B, dh = self.sp, self.layout.banks, self.dh
        gather = {"length": dh, "flags": FLAG_STRIDED_A, "imm": strided_imm(B, 0)}
        s.vec(VectorOp.CVT16TO32, a=self._ares(row, head, 0), d=sp["o32"], **gather)
        s.vec(VectorOp.ADD, a=sp["o32"], d=sp["o32"], length=dh, imm=0, flags=FLAG_IMM_B)
        for chunk in range(1, self.layout.v_chunks(self._token(self.plan.row_order[row]) + 1)):
            s.vec(VectorOp.CVT16TO32, a=self._ares(row, head, chunk), d=sp["c32"], **gather)
            s.vec(VectorOp.ADD, a=sp["o32"], b=sp["c32"], d=sp["o32"], length=dh)
        s.vec(VectorOp.CVT32TO16, a=sp["o32"], length=dh,
              **self._head_operand(self._attn_at(row, head), FLAG_STRIDED_D))

    def _mha_npu_weights(self, layer: int, rows: list) -> Stream:
        """npu-only attention on the array with K and V as its weights
        (``sim.decode.npu_kv``), per request a block of ``k`` heads at a time (k bursts
        per scratchpad word): ``q . K^T`` per 32-token chunk for the whole block (a head
        per burst slice of K^T's rows; the heads' queries as the GEMM's rows, each row's
        own block of columns kept), the softmax per head, ``s . V`` per group of heads
        side by side in a V row. The next block's K and V load into the other buffers
        meanwhile, their DMAs threaded between the compute's instructions (the sequencer
        dispatches in order, and a DMA waits there until the one before it is issued)."""
        s, sp, plan, wd = self.stream(), self.sp, self.plan, self.wd
        if not rows:
            return s
        kv, channels = plan.npu_kv, self.config.geometry.channels
        dh, heads, k, E = self.dh, self.heads, wd.k, self.layout.burst_elements
        dims = _npu_attention_dims(self.w, self.layout, wd)
        cmax, sw, qp, op = dims["chunks"], dims["score_words"], dims["q_words"], dims["out_words"]
        vh = kv.v_heads
        s += self.append(layer, rows)
        s.wait("vector", "dma")
        items = [(row, h0, min(heads, h0 + k)) for row in rows for h0 in range(0, heads, k)]

        def load(i) -> Stream:      # a DMA per head's K (its word slice), one for the block's V
            t = self.stream()
            row, h0, h1 = items[i]
            r = plan.row_order[row]
            L = self._token(r) + 1
            kbuf, vbuf = sp[f"kbuf{i % 2}"], sp[f"vbuf{i % 2}"]
            for h in range(h0, h1):     # word c d_head + d: K^T row d of chunk c, slice h % k
                t.load(kv.k(r, layer, h), kbuf, math.ceil(L / E) * dh, channels, slice=h % k,
                       spread=True)
            groups = math.ceil((h1 - h0) / vh)
            t.load(kv.v_group(r, layer, h0 // vh), vbuf,
                   ((groups - 1) * kv.slots(r, layer) + L) * kv.v_row, channels)
            return t

        s += load(0)
        for i, (row, h0, h1) in enumerate(items):
            r = plan.row_order[row]
            L, slots, block = self._token(r) + 1, kv.slots(r, layer), h1 - h0
            kbuf, vbuf, qrow = sp[f"kbuf{i % 2}"], sp[f"vbuf{i % 2}"], sp[f"qrow{i % 2}"]
            for m in range(block):         # the queries as dense FP16 rows
                s.vec(VectorOp.CVT16TO32, d=sp["q32"], length=dh,
                      **self._head_operand(self._qkv_at(row, 0, h0 + m), FLAG_STRIDED_A))
                s.vec(VectorOp.CVT32TO16, a=sp["q32"], d=qrow + m * qp, length=dh)
            s.wait("vector", "dma")        # the queries, and this block's K and V, are in
            work = self.stream()
            for c in range(math.ceil(L / E)):     # row m: head h0 + m, chunk c in word c
                work.gemm(qrow, kbuf + c * dh, sp["l16"] + c, block, dh, block * E, qp, 1, cmax)
            work.wait("gemm")
            for m in range(block):         # head m's block of its row: lanes E m on
                flags, imm = (FLAG_STRIDED_A, strided_imm(E, E * m)) if k > 1 else (0, 0)
                self._softmax(work, sp["l16"] + m * cmax, L, flags, imm, sp["srow"] + m * sw)
            work.wait("vector")
            for g in range(math.ceil(block / vh)):
                n = min(vh, block - g * vh)
                work.gemm(sp["srow"] + g * vh * sw, vbuf + g * slots * kv.v_words,
                          sp["vout"] + g * vh * op, n, L, n * dh, sw, kv.v_words, op, fp32=True)
            work.wait("gemm")
            for m in range(block):
                self._npu_head_out(work, sp["vout"] + m * op, (m % vh) * dh, row, h0 + m)
            s += _thread(work, load(i + 1) if i + 1 < len(items) else self.stream())
        return s

    def _npu_head_out(self, s: Stream, word: int, column: int, row: int, h: int) -> None:
        """Head ``h``'s FP32 output, columns [column, column + d_head) of an output row
        at ``word``, rounded into its place in the attention row."""
        e32, dh, sp = self.wd.e32, self.dh, self.sp
        at = word + column // e32
        if column % e32 or dh % e32:       # part of a word: copied out first
            s.vec(VECTOR_COPY, a=at, d=sp["o32"], length=dh, flags=FLAG_STRIDED_A,
                  imm=strided_imm(dh, column % e32))
            at = sp["o32"]
        s.vec(VectorOp.CVT32TO16, a=at, length=dh,
              **self._head_operand(self._attn_at(row, h), FLAG_STRIDED_D))

    def _mha_npu_stream(self, layer: int, rows: list) -> Stream:
        """npu-only attention with K and V^T streamed through the array (``stream``:
        ``K . q^T`` per 32-element piece, ``V^T . s^T`` per 32-token chunk), head by head,
        the next head's K and V loading meanwhile."""
        s, sp, lay, plan = self.stream(), self.sp, self.layout, self.plan
        if not rows:
            return s
        kv, channels = plan.npu_kv, self.config.geometry.channels
        dh, heads = self.dh, self.heads
        span = _k_span(lay, max(self.w.kv_lens) + self.w.steps)
        s += self.append(layer, rows)
        s.wait("vector", "dma")
        items = [(row, h) for row in rows for h in range(heads)]

        def load(i):        # a DMA per K piece and one for V, each over every channel
            row, h = items[i]
            r = plan.row_order[row]
            L = self._token(r) + 1
            for j in range(self.hb):           # piece j: the tokens' elements 32j .. 32j + 31
                s.load(kv.k(r, layer, h, j), sp[f"kbuf{i % 2}"] + j * span, L, channels,
                       spread=True)            # a word per token
            s.load(kv.v(r, layer, h, 0), sp[f"vbuf{i % 2}"],
                   math.ceil(L / lay.burst_elements) * dh, channels, spread=True)

        def query(i):
            row, h = items[i]
            s.vec(VectorOp.CVT16TO32, d=sp["q32"], length=dh,
                  **self._head_operand(self._qkv_at(row, 0, h), FLAG_STRIDED_A))
            s.vec(VectorOp.CVT32TO16, a=sp["q32"], d=sp[f"qcol{i % 2}"], length=dh,
                  flags=FLAG_STRIDED_D, imm=strided_imm(1, 0))

        load(0)
        s.wait("dma")
        query(0)
        if len(items) > 1:
            load(1)
        for i, (row, h) in enumerate(items):
            r = plan.row_order[row]
            L = self._token(r) + 1
            kbuf, vbuf = sp[f"kbuf{i % 2}"], sp[f"vbuf{i % 2}"]
            s.wait("vector")
            self._logits_npu(s, kbuf, sp[f"qcol{i % 2}"], L, span)
            s.wait("vector")
            per = lay.burst_elements
            for chunk in range(math.ceil(L / per)):
                k = min(per, L - per * chunk)
                s.gemm(vbuf + chunk * dh, sp["scol"] + per * chunk, sp["ocol"], dh, k, 1, 1, 1, 1,
                       fp32=True, acc=chunk > 0)
            if i + 1 < len(items):
                s.wait("dma")
                query(i + 1)
            s.wait("gemm")
            if i + 2 < len(items):
                load(i + 2)
            column = {"flags": FLAG_STRIDED_A, "imm": strided_imm(1, 0)}
            if dh >= self.wd.e16:
                s.vec(VectorOp.CVT32TO16, a=sp["ocol"], d=self._attn_at(row, h)[0], length=dh,
                      **column)
            else:       # a head in part of a word: the column copied out first
                s.vec(VECTOR_COPY, a=sp["ocol"], d=sp["o32"], length=dh, **column)
                s.vec(VectorOp.CVT32TO16, a=sp["o32"], length=dh,
                      **self._head_operand(self._attn_at(row, h), FLAG_STRIDED_D))
        return s

    def _logits_npu(self, s: Stream, kbuf: int, qcol: int, L: int, span: int) -> None:
        """K . q^T on the array (in pieces of ``accumulator_rows`` tokens), then the
        softmax into ``scol``. A head of one word is one GEMM with FP16 logits; a longer
        head is one GEMM per 32-element piece, chained in FP32 (``acc``), then rounded by
        the vector unit (``sim.decode.golden``: the same order)."""
        sp, acc_rows = self.sp, self.config.npu.accumulator_rows
        for m0 in range(0, L, acc_rows):
            rows_m = min(acc_rows, L - m0)
            if self.hb == 1:
                s.gemm(kbuf + m0, qcol, sp["lcol"] + m0, rows_m, self.dh, 1, 1, 1, 1)
                continue
            for j in range(self.hb):
                s.gemm(kbuf + j * span + m0, qcol + j * BURST16, sp["lcol"] + m0, rows_m,
                       BURST16, 1, 1, 1, 1, fp32=True, acc=j > 0)
        s.wait("gemm")
        logits, flags, imm = sp["lcol"], FLAG_STRIDED_A, strided_imm(1, 0)
        if self.hb > 1:
            s.vec(VectorOp.CVT32TO16, a=logits, d=sp["l16"], length=L, flags=flags, imm=imm)
            logits, flags, imm = sp["l16"], 0, 0
        self._softmax(s, logits, L, flags, imm, sp["scol"], FLAG_STRIDED_D, strided_imm(1, 0))

    def mha_npu(self, layer: int, rows: list) -> Stream:
        """npu-only attention, in the KV cache's form (``sim.decode.npu_kv``)."""
        if self.plan.npu_kv.form == "weights":
            return self._mha_npu_weights(layer, rows)
        return self._mha_npu_stream(layer, rows)

    def mha(self, layer: int, rows: list) -> Stream:
        """The attention of this core's requests among ``rows``."""
        rows = [row for row in rows if self.mine(row)]
        return self.mha_npu(layer, rows) if self.plan.mode == "npu-only" else self.mha_pim(layer, rows)


# ----------------------------------------------------------------------------- programs

def _serial_step(b: Builder) -> list[Op]:
    """npu-only and npu+pim: per layer QKV -> MHA -> Proj/FFN over the whole batch."""
    rows, P = list(range(b.w.batch)), b.cores
    s = b.stream()
    s += b.load_inputs()
    s += b.load_layer(0)
    s.barrier("load", P)
    for layer in range(b.w.layers):
        if layer + 1 < b.w.layers:
            s += b.load_layer(layer + 1)
        else:
            s += b.load_head()
        s += b.qkv(layer, rows)
        s.barrier("QKV", P)
        s += b.mha(layer, rows)
        stores, loads = b.attn_exchange(layer, rows)
        s += stores
        s.barrier("MHA", P)
        s += loads
        s += b.proj_ffn(layer, rows)
        s.barrier("Proj/FFN", P)
    s += b.lm_head()
    s.barrier("head", P)
    return s.ops


def _neupims_step(b: Builder) -> list[Op]:
    """Stages A-F (NEUPIMS.md 5) with the NPU and PIM streams of each stage woven."""
    sb1, sb2 = b.plan.sub_batches
    N = b.w.layers
    P = b.cores
    s = b.stream()
    s += b.load_inputs()
    s += b.load_layer(0)
    s.barrier("load", P)
    out = list(s.ops)

    def stage(name, npu: Stream, pim: Stream, attention=None):
        """The two streams woven, then (several cores, ``attention`` = (layer, rows) of
        the MHA in ``pim``) the attention outputs exchanged around the barrier."""
        merged = weave(npu.ops, pim.ops, b.config)
        out.extend(merged)
        stores, loads = b.attn_exchange(*attention) if attention else (b.stream(), b.stream())
        out.extend(stores.ops)
        end = b.stream()
        end.barrier(name, P)
        out.extend(end.ops + loads.ops)

    def after_first_gemm(work: Stream, load: Stream) -> Stream:
        """``load`` placed behind the stream's GEMM number ``WEIGHTS_AFTER_GEMM`` (or its
        last), so the weight reads overlap the other sub-batch's PIM work instead of
        opening the stage."""
        gemms = [i + 1 for i, op in enumerate(work.ops) if op.unit == "gemm"] or [0]
        at = gemms[min(WEIGHTS_AFTER_GEMM, len(gemms)) - 1]
        work.ops[at:at] = load.ops
        return work

    stage("A", b.qkv(0, sb1), b.stream())
    stage("B", b.qkv(0, sb2), b.mha(0, sb1), (0, sb1))
    for layer in range(N - 1):
        npu = b.proj_ffn(layer, sb1)
        after_first_gemm(npu, b.load_layer(layer + 1, "qkv"))
        npu += b.qkv(layer + 1, sb1, weights_pending=True)
        stage("C", npu, b.mha(layer, sb2), (layer, sb2))
        npu = b.proj_ffn(layer, sb2)
        after_first_gemm(npu, b.load_layer(layer + 1, "rest"))
        npu += b.qkv(layer + 1, sb2)
        stage("D", npu, b.mha(layer + 1, sb1), (layer + 1, sb1))
    npu = after_first_gemm(b.proj_ffn(N - 1, sb1), b.load_head())
    stage("E", npu, b.mha(N - 1, sb2), (N - 1, sb2))
    stage("F", b.proj_ffn(N - 1, sb2), b.stream())
    tail = b.lm_head()
    tail.barrier("head", P)
    out.extend(tail.ops)
    return out


def _checks(plan: Plan, golden, core: int = 0) -> dict:
    """Scratchpad words to compare: the hidden state and the logits of every row (several
    cores: every core's hidden state, and its share of the logits). ``golden`` None (a
    compile without values): the same words, each 0."""
    sp, w, wd = plan.sp, plan.workload, plan.words
    c0, c1 = plan.columns(w.vocab, core)
    checks = {}
    for base, cols, values in (
            (sp["x"], w.model.d_model, golden and golden.hidden[plan.row_order]),
            (sp["logits"], c1 - c0, golden and golden.logits[plan.row_order][:, c0:c1])):
        words = [0] * (w.batch * wd.f32(cols)) if values is None else \
            matrix_words(values, 32, wd.f32(cols), wd.bytes)
        checks.update({base + i: word for i, word in enumerate(words)})
    return checks


def _step_programs(plan: Plan, step: int) -> tuple[list, list]:
    """Every core's program of ``step`` and core 0's stage marks (name, instruction)."""
    config, programs, marks = plan.config, [], []
    for core in range(plan.cores):
        b = Builder(plan, step, core)
        ops = _neupims_step(b) if plan.mode == "neupims" else _serial_step(b)
        program = [op.ins for op in ops] + [halt()]
        if len(program) > config.npu.instruction_words:
            raise DecodeError("batch", f"step {step}: {len(program)} instructions for "
                              f"core {core}, the NPU holds "
                              f"{config.npu.instruction_words} "
                              f"(NpuConfig.instruction_words): use a smaller batch")
        try:
            check_dispatch(config, program, f"step {step}, core {core}")
        except ValueError as error:     # the compiler's own fault, caught before any run
            raise DecodeError("program", f"{error} (a compiler bug)") from error
        if core == 0:
            marks = [(op.mark, i) for i, op in enumerate(ops) if op.mark]
        programs.append(program)
    return programs, marks


def compile_decode(workload: DecodeWorkload, mode: str, config=None,
                   data: DecodeData | None = None, values: bool = True) -> DecodeRun:
    """Compile every step of ``workload`` for ``mode`` (see the module docstring).

    ``values`` False, for a timing-only device (``config.datapath`` False) whose run skips
    the image's load clocks (``run_on_rtl(..., image_clocks=False)``): the same programs,
    stage marks and check addresses, but no data, golden decode or image contents (the
    image is empty, the checks are zeros, ``run.golden`` is None): seconds and megabytes
    where the paper's models at full scale take minutes and gigabytes."""
    config = mode_config(mode, config)
    if not values and config.datapath:
        raise DecodeError("values", "a compile without values is for a timing-only device "
                          "(config.datapath False): this one compares the results")
    if data is None:
        data = random_data(workload) if values else shape_data(workload)
    plan = _plan(workload, mode, config)
    image = _image(plan, data, contents=values)
    _scratchpad(plan)
    golden = golden_decode(workload, data, mode, config) if values else None
    steps = []
    for step in range(workload.steps):
        programs, marks = _step_programs(plan, step)
        expected = golden and golden[step]
        steps.append(StepProgram(programs[0], marks, _checks(plan, expected),
                                 label=f"step {step}", tokens=workload.batch,
                                 cores=[CoreProgram(programs[c], _checks(plan, expected, c))
                                        for c in range(1, plan.cores)]))
    description = workload.describe()
    description.update({
        "mode": mode, "config": config.summary(),
        "channel_of": plan.channel_of, "row_order": plan.row_order,
        "sub_batches": [[plan.row_order[r] for r in rows] for rows in plan.sub_batches],
        "scratchpad_words_used": plan.sp["end"], "cores": plan.cores,
        "instructions": [len(s.program) for s in steps]})
    if plan.cores > 1:
        description["instructions_per_core"] = [
            [len(s.program)] + [len(c.program) for c in s.cores] for s in steps]
    run = DecodeRun(config=config, mode=mode, image=image, steps=steps, description=description)
    run.plan = plan
    run.golden = golden
    return run
