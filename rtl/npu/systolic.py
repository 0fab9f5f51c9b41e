"""The NPU's weight-stationary systolic array (NEUPIMS.md 3): FP16 x FP16 products
accumulated in FP32, round-to-nearest-even, bit for bit as :mod:`sim.golden.gemm`."""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ..arith import FP16Multiplier, FP32Adder, FP32ToFP16
from ..common import shared_instance

__all__ = ["SystolicArray", "ProcessingElement", "weight_layout", "activation_layout",
           "result_layout", "COUNTER_WIDTH", "PE_MODULE", "TO_FP16_MODULE"]

#: Verilog module names of the shared PE datapath and FP16 rounding (``shared_modules``).
PE_MODULE = "neupims_systolic_pe"
TO_FP16_MODULE = "neupims_systolic_to_fp16"

#: Width of the ``busy_cycles`` and ``macs`` counters (they wrap).
COUNTER_WIDTH = 48


def weight_layout(config) -> data.StructLayout:
    """One row of the weight tile: ``values[j]`` = B[i][j] (FP16), j = 0 .. W-1."""
    return data.StructLayout({"values": data.ArrayLayout(unsigned(16), config.npu.array_cols)})


def activation_layout(config) -> data.StructLayout:
    """One row of A (``values[i]``, FP16, i = 0 .. H-1), its incoming partial sums
    (``psums[j]``, FP32, j = 0 .. W-1), ``accumulate`` (start column j from ``psums[j]``;
    when 0, from +0.0 and ``psums`` is ignored) and ``last`` (passed through to the result).
    With two weight buffers (``NpuConfig.weight_buffers``) also ``flip``: this row is the
    first of a pass on the weights preloaded last."""
    npu = config.npu
    fields = {
        "values": data.ArrayLayout(unsigned(16), npu.array_rows),
        "psums": data.ArrayLayout(unsigned(32), npu.array_cols),
        "accumulate": 1,
        "last": 1,
    }
    if npu.weight_buffers == 2:
        fields["flip"] = 1
    return data.StructLayout(fields)


def result_layout(config) -> data.StructLayout:
    """One row of C: ``fp32[j]`` (FP32), ``fp16[j]`` (the same rounded RNE to FP16), ``last``."""
    cols = config.npu.array_cols
    return data.StructLayout({
        "fp32": data.ArrayLayout(unsigned(32), cols),
        "fp16": data.ArrayLayout(unsigned(16), cols),
        "last": 1,
    })


class ProcessingElement(wiring.Component):
    """The datapath of one PE (combinational): ``psum_out = FP32Adder(psum_in,
    FP16Multiplier(a, w))``; the exact FP16 x FP16 product, one RNE add. Its registers
    (the activation passed right, the partial sum passed down) are in the array."""

    a: In(16)
    w: In(16)
    psum_in: In(32)
    psum_out: Out(32)

    def elaborate(self, platform):
        m = Module()
        m.submodules.mul = mul = FP16Multiplier()
        m.submodules.add = add = FP32Adder()
        m.d.comb += [mul.a.eq(self.a), mul.b.eq(self.w),
                     add.a.eq(self.psum_in), add.b.eq(mul.p), self.psum_out.eq(add.s)]
        return m


def _delayed(m, value, cycles, enable, name):
    """``value`` delayed by ``cycles`` registers that advance only when ``enable``."""
    for stage in range(cycles):
        reg = Signal(len(value), name=f"{name}_d{stage}")
        with m.If(enable):
            m.d.sync += reg.eq(value)
        value = reg
    return value


class SystolicArray(wiring.Component):
    """H x W weight-stationary systolic array: C[M x W] = P + A[M x H] . B[H x W].

    H = ``config.npu.array_rows``, W = ``config.npu.array_cols``. PE(i, j) holds the FP16
    weight B[i][j] and computes ``psum_out = FP32Adder(psum_in, FP16Multiplier(a_i, B[i][j]))``
    (the product is exact, the add rounds RNE); activations move right along the rows,
    partial sums move down the columns, one register per PE each. Column j of a result row
    is therefore ``((P_j + a_0 b_0j) + a_1 b_1j) + ... + a_{H-1} b_{H-1,j}``, added in the
    order i = 0 .. H-1, each add rounded. P_j is ``psums[j]`` when ``accumulate`` is set
    and +0.0 otherwise (so a column of products that are all -0 sums to +0). K > H is done
    by chaining passes through the partial sums (``sim.golden.gemm.plan_gemm``).

    Ports (``lib.stream``; no valid depends on a ready):
      ``weights`` (In, ``weight_layout``): a preload is H transfers, row i of B in the
        i-th (transfers are counted modulo H), H cycles at full rate. ``weights.ready`` is
        high while no activation row is inside the PEs (rows that are finished, waiting on
        ``results``, do not matter); it does not depend on ``results.ready``. Preloading
        overlaps no computation: the driver preloads, streams rows, and preloads again
        once the rows it needs have been accepted; the array drains by itself.
      ``activations`` (In, ``activation_layout``): one row of A per transfer, up to one per
        clock. ``activations.ready`` is low while a preload is incomplete (1 .. H-1 rows
        transferred), while ``weights.valid`` is high (a waiting preload has priority: the
        array drains, then loads), and while the array is held by back-pressure.
      ``results`` (Out, ``result_layout``): one row of C per accepted activation row, in
        order, aligned (the input skew and output de-skew are internal), ``last`` copied.
      ``busy_cycles`` (Out): clocks during which a row is in flight, from the clock it is
        accepted up to and including the clock its result is taken (stalls included).
        Rows streamed back to back with ``results.ready`` high: M rows are busy for
        M + LATENCY clocks.
      ``macs`` (Out): H * W per accepted activation row.

    Latency: an activation row accepted in clock t has its result on ``results`` (valid)
    in clock t + LATENCY, LATENCY = H + W - 1, when ``results.ready`` stayed high. PE(0, 0)
    works on the row in the clock it is accepted (no input register); every column has
    H + W - 1 registers from the port to ``results`` (j skew, H PEs, W - 1 - j de-skew).
    A pass of R rows streamed back to back therefore has its last result R - 1 + H + W - 1
    = H + W - 2 + R clocks after its first row was accepted: the reference model's tile
    latency H + W - 2 + max(K, 4) (``NpuConfig.tile_latency``, K there = the rows streamed
    through the tile) for R >= 4, and 4 - R clocks less for R < 4 (the reference charges at
    least 4 rows per tile). Weight preload: H clocks, as in the reference; the array must
    drain before the next preload is taken: ``weights.ready`` rises in the clock the last
    row's result reaches the output, LATENCY clocks after that row was accepted when
    not back-pressured.

    ``shared_modules``: build every PE datapath and FP16 rounder as an instance of one
    Verilog module each (``PE_MODULE``, ``TO_FP16_MODULE``, listed by
    :meth:`verilog_modules`): a Verilog text many times smaller (12 x for 8 x 8; Verilator
    still inlines the instances: its builds get only somewhat faster). Amaranth's
    simulator cannot run instances: leave it False there (the default).

    Timing-only (``config.datapath`` False): the same valid/last pipeline, preload counter,
    handshakes, skid control and counters (so every cycle and counter is unchanged), but no
    weight registers, skew, PEs, de-skew or FP16 rounding: ``results`` carries zeros.

    Two weight buffers (``NpuConfig.weight_buffers`` = 2): every PE holds two weights, the
    active one and a spare. A preload fills the spare while rows stream on the active one;
    an activation row with ``flip`` set switches to the spare (the preload must be
    complete: ``activations.ready`` is low for a ``flip`` row until it is), and every row
    carries its buffer down the pipeline, so the rows of two passes can be inside the array
    together. ``weights.ready`` is high while the spare is not yet fully loaded and, for a
    preload's first row, no row on the spare is within W - 1 clocks of the port (the
    preload's row i is then written after that pass's rows have left PE row i); it is low
    under back-pressure. A pass therefore costs max(M, H + 1) clocks at the port when the
    weights keep up (the reference model's hidden preload; a clock or two more when M is
    near H, as a preload also waits for the pass before the last), against 2 H + W - 1 +
    M with one buffer; results, latency and counters are as above.

    Back-pressure: one global clock enable, ``en = not skid_full``, holds every register of
    the array (skew, PEs, de-skew, control). A one-row skid register catches the row that
    leaves the array in a clock where ``results.ready`` is low; while it is full the array
    holds. ``en`` comes from a register, so no path runs from ``results.ready`` into the
    array or to ``activations.ready``; no result is lost, and after a stall the output
    stream resumes without a bubble.
    """

    def __init__(self, config, counter_width: int = COUNTER_WIDTH, shared_modules: bool = False):
        self.config = config
        # timing-only (``config.datapath`` False): no PEs, so no shared PE modules either
        shared_modules = shared_modules and config.datapath
        self.shared_modules = shared_modules
        self.pe_prototype = ProcessingElement() if shared_modules else None
        self.to_fp16_prototype = FP32ToFP16() if shared_modules else None
        self.rows = config.npu.array_rows
        self.cols = config.npu.array_cols
        self.latency = self.latency_for(self.rows, self.cols)
        super().__init__({
            "weights": In(stream.Signature(weight_layout(config))),
            "activations": In(stream.Signature(activation_layout(config))),
            "results": Out(stream.Signature(result_layout(config))),
            "busy_cycles": Out(counter_width),
            "macs": Out(counter_width),
        })

    def verilog_modules(self):
        """Extra Verilog modules this component instantiates: (component, module name)."""
        if not self.shared_modules:
            return []
        return [(self.pe_prototype, PE_MODULE), (self.to_fp16_prototype, TO_FP16_MODULE)]

    def _pe(self, m, name):
        if self.shared_modules:
            return shared_instance(m, name, PE_MODULE, self.pe_prototype, clocked=False)
        pe = m.submodules[name] = ProcessingElement()
        return pe

    def _to_fp16(self, m, name):
        if self.shared_modules:
            return shared_instance(m, name, TO_FP16_MODULE, self.to_fp16_prototype,
                                   clocked=False)
        cvt = m.submodules[name] = FP32ToFP16()
        return cvt

    @staticmethod
    def latency_for(rows: int, cols: int) -> int:
        """Clocks from accepting an activation row to its result row being valid."""
        return rows + cols - 1

    def elaborate(self, platform):
        m = Module()
        H, W, L = self.rows, self.cols, self.latency
        act, res, wts = self.activations, self.results, self.weights

        en = Signal()
        skid_valid = Signal()
        m.d.comb += en.eq(~skid_valid)

        # -- control: one valid/last bit per pipeline stage (stage k = k clocks after accept)
        valid = [Signal(name=f"valid{k + 1}") for k in range(L)]
        last = [Signal(name=f"last{k + 1}") for k in range(L)]
        inflight = Cat(*valid[:L - 1]).any()   # rows still needing a PE (not the output stage)

        preload_row = Signal(range(max(H, 2)))
        loading = Signal()
        m.d.comb += loading.eq(preload_row != 0)
        if self.config.npu.weight_buffers == 2:
            buffers = self._buffer_control(m, en, valid, loading, preload_row)
        else:
            buffers = None
            m.d.comb += [wts.ready.eq(~inflight), act.ready.eq(en & ~loading & ~wts.valid)]
        accept = Signal()
        m.d.comb += accept.eq(act.valid & act.ready)
        out_valid, out_last = valid[L - 1], last[L - 1]
        skid_last = Signal()

        with m.If(en):
            m.d.sync += [valid[0].eq(accept), last[0].eq(act.payload.last)]
            for k in range(1, L):
                m.d.sync += [valid[k].eq(valid[k - 1]), last[k].eq(last[k - 1])]

        with m.If(wts.valid & wts.ready):   # a preload: row ``preload_row`` of the tile
            m.d.sync += preload_row.eq(Mux(preload_row == H - 1, 0, preload_row + 1))

        # -- the values: weights, skew, PEs, de-skew, skid word, FP16 rounding; none in a
        #    timing-only elaboration (``results.payload`` then carries zeros and ``last``)
        if self.config.datapath:
            self._datapath(m, en, preload_row, skid_valid, out_valid, buffers)

        # -- skid register and the results port
        with m.If(skid_valid):
            with m.If(res.ready):
                m.d.sync += skid_valid.eq(0)
        with m.Elif(out_valid & ~res.ready):
            m.d.sync += [skid_valid.eq(1), skid_last.eq(out_last)]
        m.d.comb += [
            res.valid.eq(skid_valid | out_valid),
            res.payload.last.eq(Mux(skid_valid, skid_last, out_last)),
        ]

        # -- counters
        busy = Signal()
        m.d.comb += busy.eq(accept | Cat(*valid).any() | skid_valid)
        m.d.sync += [self.busy_cycles.eq(self.busy_cycles + busy),
                     self.macs.eq(self.macs + Mux(accept, Const(H * W), 0))]
        return m

    def _buffer_control(self, m, en, valid, loading, preload_row):
        """Two weight buffers: which one is active, whether the spare is loaded, and the
        buffer of the row on each anti-diagonal of PEs (``diagonal[d]``: PE(i, j), i + j =
        d). Drives ``weights.ready`` and ``activations.ready``; returns
        (the spare buffer's index, ``diagonal``)."""
        H, W, L = self.rows, self.cols, self.latency
        act, wts = self.activations, self.weights
        active, next_loaded = Signal(), Signal()
        tag = [Signal(name=f"tag{k + 1}") for k in range(L)]    # buffer of the row in valid[k]
        flip = act.payload.flip
        spare_recent = Cat(*(valid[k] & (tag[k] != active) for k in range(W - 1))).any()
        m.d.comb += [wts.ready.eq(en & ~next_loaded & (loading | ~spare_recent)),
                     act.ready.eq(en & (~flip | next_loaded))]
        with m.If(en):
            m.d.sync += tag[0].eq(active ^ flip)
            for k in range(1, L):
                m.d.sync += tag[k].eq(tag[k - 1])
        with m.If(wts.valid & wts.ready & (preload_row == H - 1)):
            m.d.sync += next_loaded.eq(1)
        with m.If(act.valid & act.ready & flip):
            m.d.sync += [active.eq(~active), next_loaded.eq(0)]
        return ~active, [active ^ flip] + tag

    def _datapath(self, m, en, preload_row, skid_valid, out_valid, buffers):
        """The values: weight registers, input skew, the PEs, output de-skew, the skid
        register's word and the FP16 rounding onto ``results.payload`` (``fp32``, ``fp16``).
        ``buffers``: None for one weight buffer, else ``_buffer_control``'s result."""
        H, W = self.rows, self.cols
        act, res, wts = self.activations, self.results, self.weights

        # -- weights: row ``preload_row`` of the tile per transfer (into the spare buffer)
        sets = 1 if buffers is None else 2
        weights = [[Signal(data.ArrayLayout(unsigned(16), W), name=f"w{i}" + (f"_{b}" if b else ""))
                    for i in range(H)] for b in range(sets)]
        with m.If(wts.valid & wts.ready):
            for i in range(H):
                with m.If(preload_row == i):
                    if buffers is None:
                        m.d.sync += weights[0][i].eq(wts.payload.values)
                    else:
                        for b in range(2):
                            with m.If(buffers[0] == b):
                                m.d.sync += weights[b][i].eq(wts.payload.values)

        def weight(i, j):
            w = [weights[b][i].as_value()[16 * j:16 * j + 16] for b in range(sets)]
            return w[0] if buffers is None else Mux(buffers[1][i + j], w[1], w[0])

        # -- input skew: a_i reaches PE(i, 0) after i clocks, P_j reaches PE(0, j) after j
        a_skew = [_delayed(m, act.payload.values[i], i, en, f"a{i}") for i in range(H)]
        p_skew = []
        for j in range(W):
            p_in = Signal(32, name=f"p_in{j}")
            m.d.comb += p_in.eq(Mux(act.payload.accumulate, act.payload.psums[j], 0))
            p_skew.append(_delayed(m, p_in, j, en, f"p{j}"))

        # -- the PEs
        a_reg = [[None] * W for _ in range(H)]
        p_reg = [[None] * W for _ in range(H)]
        for i in range(H):
            for j in range(W):
                a_in = a_skew[i] if j == 0 else a_reg[i][j - 1]
                p_in = p_skew[j] if i == 0 else p_reg[i - 1][j]
                pe = self._pe(m, f"pe_{i}_{j}")
                p_out = Signal(32, name=f"psum_{i}_{j}")
                m.d.comb += [pe.a.eq(a_in), pe.w.eq(weight(i, j)),
                             pe.psum_in.eq(p_in)]
                with m.If(en):
                    m.d.sync += p_out.eq(pe.psum_out)
                p_reg[i][j] = p_out
                if j < W - 1:
                    a_out = Signal(16, name=f"act_{i}_{j}")
                    with m.If(en):
                        m.d.sync += a_out.eq(a_in)
                    a_reg[i][j] = a_out

        # -- output de-skew: column j waits W - 1 - j clocks
        out_fp32 = Cat(*[_delayed(m, p_reg[H - 1][j], W - 1 - j, en, f"o{j}") for j in range(W)])

        # -- the skid register's word (its control is in ``elaborate``) and the FP16 rounding
        skid_fp32 = Signal(32 * W)
        with m.If(~skid_valid & out_valid & ~res.ready):
            m.d.sync += skid_fp32.eq(out_fp32)
        fp32 = Signal(32 * W)
        m.d.comb += fp32.eq(Mux(skid_valid, skid_fp32, out_fp32))
        for j in range(W):
            cvt = self._to_fp16(m, f"to_fp16_{j}")
            m.d.comb += [cvt.a.eq(fp32[32 * j:32 * j + 32]),
                         res.payload.fp32[j].eq(fp32[32 * j:32 * j + 32]),
                         res.payload.fp16[j].eq(cvt.h)]
