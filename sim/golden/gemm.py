"""Golden model of a GEMM on the weight-stationary systolic array (``rtl.npu.systolic``),
bit for bit, and the plan that turns a GEMM into array operations.

Order of operations (the RTL's): C = P + A . B with A [M x K] and B [K x N] FP16, P FP32.
N is cut into tiles of W columns and K into tiles of H rows. For every N tile, the K tiles
run in order kt = 0, 1, ...; each is one *pass*: preload the H x W weight tile, stream the
M activation rows. Within a pass, column j of row m is
``acc = p; for i in 0 .. H-1: acc = fp32_add(acc, fp16_mul(a[m, i], w[i, j]))``
with every product exact and every add rounded to nearest even. The starting ``p`` of a
pass is: pass kt > 0: the FP32 result of pass kt - 1 (``accumulate`` = 1); pass 0: the
caller's FP32 partial sums when given (``accumulate`` = 1), else +0.0 (``accumulate`` = 0,
the array starts from +0.0). The FP16 result is the final FP32 rounded RNE.

Padding (what the driver sends outside the GEMM): weight rows i >= the K tile's height and
columns j >= the N tile's width are +0; activation values i >= the K tile's height are +0;
partial sums of padded columns are +0. Padded columns are computed and thrown away.
Padded rows add fp16_mul(+0, +0) = +0 to every column, which changes nothing except a
signed zero: (-0) + (+0) = +0. A running sum is -0 only when it started from a -0 partial
sum and every product so far was -0 (the array's +0.0 start never gives -0); such a
column comes out +0 instead of -0 when its last K tile has padded rows. The golden runs
the padded rows too, so it does the same. Infinities and NaN in A meet +0 weights only in
padded columns (NaN there, thrown away), never in padded rows (their activations are +0).

Versus exact arithmetic: each column is a recursive sum of at most n = K + 1 terms (P and
K exact products), so |golden - exact| <= gamma_n * (|P| + sum_i |a_i b_i|), gamma_n =
n u / (1 - n u), u = 2^-24, as long as nothing overflows or underflows (subnormal results
add at most 2^-149 per add); the FP16 result adds half an FP16 ulp (``error_bound``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .fp import fp16_mul, fp32_add, fp32_to_fp16

__all__ = ["ArrayPass", "GemmPlan", "plan_gemm", "array_pass", "gemm", "error_bound",
           "pack_payload", "unpack_payload", "GemmStreamDriver"]


@dataclass
class ArrayPass:
    """One weight tile loaded into the array and the M activation rows streamed through it.

    ``weights`` [H, W] uint16 (send row i as the i-th ``weights`` transfer);
    ``activations`` [M, H] uint16 (row m as the m-th ``activations`` transfer, ``last`` on
    row M - 1); ``accumulate``: the rows carry partial sums; ``psum_source``: where they
    come from, ``"zero"`` (none, start +0.0), ``"input"`` (the caller's P) or
    ``"previous"`` (the FP32 results of the previous pass of the same N tile).
    """
    n_tile: int
    k_tile: int
    n0: int
    n_cols: int
    k0: int
    k_rows: int
    weights: np.ndarray
    activations: np.ndarray
    accumulate: bool
    psum_source: str

    @property
    def rows(self) -> int:
        return self.activations.shape[0]


@dataclass
class GemmPlan:
    """The passes of a GEMM on an H x W array, in the order the array runs them."""
    m: int
    k: int
    n: int
    array_rows: int
    array_cols: int
    passes: list[ArrayPass] = field(default_factory=list)
    psum: np.ndarray | None = None

    def psum_rows(self, p: ArrayPass, previous: np.ndarray | None) -> np.ndarray:
        """[M, W] uint32 partial sums to send with the rows of pass ``p`` (zeros when
        ``accumulate`` is 0: the array ignores them); ``previous``: FP32 results of the pass
        before ``p`` (needed when ``p.psum_source == "previous"``)."""
        out = np.zeros((self.m, self.array_cols), dtype=np.uint32)
        if p.psum_source == "previous":
            out[:] = previous
        elif p.psum_source == "input":
            out[:, :p.n_cols] = self.psum[:, p.n0:p.n0 + p.n_cols]
        return out

    def is_final(self, p: ArrayPass) -> bool:
        """The pass whose results are the N tile's final results (its last K tile)."""
        return p.k0 + p.k_rows == self.k

    def execute(self, run_pass):
        """Run every pass with ``run_pass(pass, psum_rows) -> [M, W] uint32 FP32 results``;
        return (fp32 [M, N] uint32, fp16 [M, N] uint16)."""
        fp32 = np.zeros((self.m, self.n), dtype=np.uint32)
        previous = None
        for p in self.passes:
            previous = np.asarray(run_pass(p, self.psum_rows(p, previous)), dtype=np.uint32)
            if self.is_final(p):
                fp32[:, p.n0:p.n0 + p.n_cols] = previous[:, :p.n_cols]
        return fp32, fp32_to_fp16(fp32)

    @property
    def activation_rows(self) -> int:
        return self.m * len(self.passes)


def plan_gemm(a_bits, b_bits, array_rows: int, array_cols: int, psum=None) -> GemmPlan:
    """Cut C = P + A . B into array passes (see the module docstring for the order and the
    padding). ``a_bits`` [M, K] and ``b_bits`` [K, N] FP16 bit patterns, ``psum`` None or
    [M, N] FP32 bit patterns."""
    a = np.asarray(a_bits, dtype=np.uint16)
    b = np.asarray(b_bits, dtype=np.uint16)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0] or 0 in a.shape + b.shape:
        raise ValueError(f"GEMM shapes do not match: A {a.shape}, B {b.shape}")
    m, k = a.shape
    n = b.shape[1]
    if psum is not None:
        psum = np.asarray(psum, dtype=np.uint32)
        if psum.shape != (m, n):
            raise ValueError(f"partial sums {psum.shape} do not match C ({m}, {n})")
    H, W = array_rows, array_cols
    plan = GemmPlan(m, k, n, H, W, psum=psum)
    for nt, n0 in enumerate(range(0, n, W)):
        n_cols = min(W, n - n0)
        for kt, k0 in enumerate(range(0, k, H)):
            k_rows = min(H, k - k0)
            weights = np.zeros((H, W), dtype=np.uint16)
            weights[:k_rows, :n_cols] = b[k0:k0 + k_rows, n0:n0 + n_cols]
            acts = np.zeros((m, H), dtype=np.uint16)
            acts[:, :k_rows] = a[:, k0:k0 + k_rows]
            source = "previous" if kt > 0 else ("input" if psum is not None else "zero")
            plan.passes.append(ArrayPass(nt, kt, n0, n_cols, k0, k_rows, weights, acts,
                                         accumulate=source != "zero", psum_source=source))
    return plan


def array_pass(weights, activations, psum_rows=None):
    """FP32 results [M, W] of one pass: ``weights`` [H, W] uint16, ``activations`` [M, H]
    uint16, ``psum_rows`` [M, W] uint32 or None (start from +0.0), in the PEs' order."""
    w = np.asarray(weights, dtype=np.uint16)
    x = np.asarray(activations, dtype=np.uint16)
    H, W = w.shape
    acc = (np.zeros((x.shape[0], W), dtype=np.uint32) if psum_rows is None
           else np.array(psum_rows, dtype=np.uint32))
    for i in range(H):
        acc = fp32_add(acc, fp16_mul(x[:, i:i + 1], w[i:i + 1, :]))
    return acc


def gemm(a_bits, b_bits, array_rows: int, array_cols: int, psum=None):
    """(fp32_bits [M, N] uint32, fp16_bits [M, N] uint16) of C = P + A . B as the
    ``array_rows`` x ``array_cols`` systolic array computes it, bit for bit."""
    plan = plan_gemm(a_bits, b_bits, array_rows, array_cols, psum)
    return plan.execute(lambda p, rows: array_pass(p.weights, p.activations,
                                                   rows if p.accumulate else None))


def error_bound(a_bits, b_bits, psum=None):
    """(fp32 bound, fp16 bound) [M, N] on |result - exact| (module docstring), float64."""
    a = np.asarray(a_bits, dtype=np.uint16).view(np.float16).astype(np.float64)
    b = np.asarray(b_bits, dtype=np.uint16).view(np.float16).astype(np.float64)
    magnitude = np.abs(a) @ np.abs(b)
    if psum is not None:
        magnitude = magnitude + np.abs(np.asarray(psum, np.uint32).view(np.float32).astype(np.float64))
    n = a.shape[1] + 1
    u = 2.0 ** -24
    bound32 = n * u / (1 - n * u) * magnitude + n * 2.0 ** -149
    exact = a @ b + (0 if psum is None else np.asarray(psum, np.uint32).view(np.float32))
    ulp16 = np.maximum(2.0 ** np.floor(np.log2(np.maximum(np.abs(exact) + bound32, 2.0 ** -14))),
                       2.0 ** -14) * 2.0 ** -10
    return bound32, bound32 + ulp16 / 2


# -- driver encoding: stream payloads as packed integers (field offsets of the layouts) --

def pack_payload(layout, values: dict) -> int:
    """Pack ``values`` (field name -> int, or a sequence for an ``ArrayLayout`` field of
    unsigned elements, element 0 lowest; a scalar fills the array; missing fields are 0)
    into an integer by the layout's field offsets."""
    word = 0
    for name, fld in layout:
        value = values.get(name, 0)
        shape = fld.shape
        if hasattr(shape, "elem_shape"):
            width = shape.elem_shape.width
            arr = np.asarray(value, dtype={16: "<u2", 32: "<u4"}[width])
            arr = np.broadcast_to(arr, (shape.length,)) if arr.ndim == 0 else arr.reshape(-1)
            if len(arr) != shape.length:
                raise ValueError(f"field {name}: {len(arr)} elements, layout has {shape.length}")
            word |= int.from_bytes(arr.tobytes(), "little") << fld.offset
        else:
            word |= (int(value) & ((1 << fld.width) - 1)) << fld.offset
    return word


def unpack_payload(layout, word: int) -> dict:
    """The inverse of :func:`pack_payload`: array fields as numpy arrays, others as ints."""
    word = int(word)
    out = {}
    for name, fld in layout:
        bits = (word >> fld.offset) & ((1 << fld.width) - 1)
        shape = fld.shape
        if hasattr(shape, "elem_shape"):
            dtype = {16: "<u2", 32: "<u4"}[shape.elem_shape.width]
            out[name] = np.frombuffer(bits.to_bytes(fld.width // 8, "little"), dtype=dtype).copy()
        else:
            out[name] = bits
    return out


class GemmStreamDriver:
    """Drives a :class:`GemmPlan` through the array's streams, one clock at a time, and
    collects the results; no I/O of its own (an Amaranth or cocotb testbench moves the
    bits, a later NPU sequencer does the same in hardware).

    Order: per pass, the H weight rows, then the M activation rows (``last`` on row M - 1).
    A pass's weights are offered once every row of the previous pass was accepted (the
    array takes them when it has drained); row m of a chained pass is offered once
    result m of the previous pass is back (it carries it as partial sums). Each clock:
    :meth:`offer` gives (weights payload or None, activations payload or None); the
    testbench drives them, samples the handshakes before the edge and calls
    :meth:`commit`. Rows that do not accumulate carry random partial sums (the array must
    ignore them). ``valid_rate`` < 1 leaves random idle clocks before offers (an offer
    is never withdrawn). Records the clock of every accepted row and returned result.

    With two weight buffers (the activation layout has ``flip``) the next pass's weights
    are offered while the current pass streams (the array takes them into its spare
    buffer), and the first row of each pass carries ``flip``; a pass's rows are offered
    once all its weights were taken.
    """

    def __init__(self, plan: GemmPlan, layouts, rng=None, valid_rate: float = 1.0):
        self.plan = plan
        self.weight_layout, self.activation_layout, self.result_layout = layouts
        self.rng = rng if rng is not None else np.random.default_rng(0)
        self.valid_rate = valid_rate
        self.pass_index = 0
        self.weight_row = 0          # weight rows of the current pass sent
        self.act_row = 0             # activation rows of the current pass sent
        self.results = [np.zeros((plan.m, plan.array_cols), dtype=np.uint32) for _ in plan.passes]
        self.results16 = [np.zeros((plan.m, plan.array_cols), dtype=np.uint16) for _ in plan.passes]
        self.received = 0            # result rows received over all passes
        self.accept_cycles: list[int] = []
        self.result_cycles: list[int] = []
        self.cycle = 0
        self._offer = None
        self.double_buffered = any(name == "flip" for name, _ in self.activation_layout)
        self.w_pass = 0              # two buffers: the pass whose weights are offered
        self._held = [None, None]    # two buffers: (weights, activations) offered, not taken

    @property
    def done(self) -> bool:
        return self.received == self.plan.activation_rows

    def _received_in(self, index: int) -> int:
        return min(max(self.received - index * self.plan.m, 0), self.plan.m)

    def _activation_row(self):
        """The current pass's next activation row payload, or None while it waits for the
        previous pass's result (chained partial sums)."""
        plan = self.plan
        p, m = plan.passes[self.pass_index], self.act_row
        chained = p.psum_source == "previous"
        if chained and self._received_in(self.pass_index - 1) <= m:
            return None
        if chained:  # result m of the previous pass, just returned
            psums = self.results[self.pass_index - 1][m]
        elif p.accumulate:
            psums = plan.psum_rows(p, None)[m]
        else:  # ignored by the array: send noise
            psums = self.rng.integers(0, 1 << 32, plan.array_cols, dtype=np.uint32)
        return pack_payload(self.activation_layout, {
            "values": p.activations[m], "psums": psums, "accumulate": int(p.accumulate),
            "last": int(m == plan.m - 1), "flip": int(m == 0)})

    def _not_idle(self) -> bool:
        return self.valid_rate >= 1 or self.rng.random() < self.valid_rate

    def _offer_double(self):
        plan = self.plan
        if self._held[0] is None and self.w_pass < len(plan.passes) and self._not_idle():
            p = plan.passes[self.w_pass]
            self._held[0] = pack_payload(self.weight_layout, {"values": p.weights[self.weight_row]})
        if (self._held[1] is None and self.pass_index < len(plan.passes)
                and self.w_pass > self.pass_index and self._not_idle()):
            self._held[1] = self._activation_row()
        return tuple(self._held)

    def _commit_double(self, weights_taken, activations_taken):
        if weights_taken:
            assert self._held[0] is not None, "weights taken while not offered"
            self._held[0] = None
            self.weight_row += 1
            if self.weight_row == self.plan.array_rows:
                self.w_pass, self.weight_row = self.w_pass + 1, 0
        if activations_taken:
            assert self._held[1] is not None, "activations taken while not offered"
            self._held[1] = None
            self.accept_cycles.append(self.cycle)
            self.act_row += 1
            if self.act_row == self.plan.m:
                self.pass_index, self.act_row = self.pass_index + 1, 0

    def offer(self):
        """(weights payload or None, activations payload or None) for this clock."""
        if self.double_buffered:
            return self._offer_double()
        if self._offer is not None:
            return self._offer
        w = a = None
        plan = self.plan
        if self.pass_index < len(plan.passes):
            p = plan.passes[self.pass_index]
            if self.weight_row < plan.array_rows:
                w = pack_payload(self.weight_layout, {"values": p.weights[self.weight_row]})
            else:
                a = self._activation_row()
        if w is None and a is None:
            return None, None   # nothing to offer yet: look again next clock
        if self.valid_rate < 1 and self.rng.random() >= self.valid_rate:
            return None, None
        self._offer = (w, a)    # offered: held until taken
        return self._offer

    def commit(self, weights_taken: bool, activations_taken: bool, result=None):
        """After the clock edge: which offers were taken, and the result payload taken in
        this clock (an int) or None."""
        w, a = self._offer if self._offer is not None else (None, None)
        if self.double_buffered:
            self._commit_double(weights_taken, activations_taken)
            weights_taken = activations_taken = False
        if weights_taken:
            assert w is not None, "weights taken while not offered"
            self.weight_row += 1
            self._offer = None
        if activations_taken:
            assert a is not None, "activations taken while not offered"
            self.accept_cycles.append(self.cycle)
            self.act_row += 1
            self._offer = None
            if self.act_row == self.plan.m:
                self.pass_index, self.weight_row, self.act_row = self.pass_index + 1, 0, 0
        if result is not None:
            index, row = divmod(self.received, self.plan.m)
            assert index < len(self.plan.passes), "more results than rows sent"
            fields = unpack_payload(self.result_layout, result)
            self.results[index][row] = fields["fp32"]
            self.results16[index][row] = fields["fp16"]
            assert fields["last"] == int(row == self.plan.m - 1), \
                f"result row {row} of pass {index}: last = {fields['last']}"
            self.received += 1
            self.result_cycles.append(self.cycle)
        self.cycle += 1

    def outputs(self):
        """(fp32 [M, N], fp16 [M, N]) from the final pass of every N tile, and the FP16
        rows the array returned for them (must equal the rounded FP32)."""
        plan = self.plan
        fp32 = np.zeros((plan.m, plan.n), dtype=np.uint32)
        fp16 = np.zeros((plan.m, plan.n), dtype=np.uint16)
        for index, p in enumerate(plan.passes):
            if plan.is_final(p):
                fp32[:, p.n0:p.n0 + p.n_cols] = self.results[index][:, :p.n_cols]
                fp16[:, p.n0:p.n0 + p.n_cols] = self.results16[index][:, :p.n_cols]
        return fp32, fp16
