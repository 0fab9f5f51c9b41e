"""The GEMM engine: runs one GEMM instruction on the systolic array, operands and results in
the scratchpad, partial sums across K tiles in the FP32 accumulator (NEUPIMS.md 3)."""
from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.wiring import In, Out

from ..config import ConfigError
from ..isa.npu import ARGUMENTS, NpuOp
from .scratchpad import Accumulator, read_port_signature, word_lanes, write_port_signature
from .systolic import COUNTER_WIDTH, SystolicArray, activation_layout

__all__ = ["GemmEngine", "gemm_args_layout", "check_array_shape"]


def gemm_args_layout() -> data.StructLayout:
    """The GEMM instruction's arguments (``rtl.isa.npu.ARGUMENTS[NpuOp.GEMM]``)."""
    return data.StructLayout(ARGUMENTS[NpuOp.GEMM])


def check_array_shape(config) -> None:
    """The scratchpad datapath needs an array row of FP16 (H values, W weights) to sit in
    one aligned group of a word's lanes and a row of W FP32 too: H and W powers of two,
    H <= ``word_bytes / 2`` FP16 lanes and W <= ``word_bytes / 4`` FP32 lanes (32 x 16 for
    64-byte words, 256 x 128 for the ``neupims`` preset's 512-byte words)."""
    npu, lanes = config.npu, word_lanes(config)
    for name, value, most in (("array_rows", npu.array_rows, lanes),
                              ("array_cols", npu.array_cols, lanes // 2)):
        if value > most or most % value:
            raise ConfigError(f"NpuConfig.{name}",
                              f"{value} must divide {most} (the NPU core reads one array row "
                              f"from one {npu.word_bytes}-byte scratchpad word, "
                              f"NpuConfig.word_bytes)")


def _log2(value: int) -> int:
    return value.bit_length() - 1


class _PassWalker:
    """Loop state over the passes of a GEMM, in ``plan_gemm``'s order (N tiles outer, K
    tiles inner): ``k0``, ``n0``, ``last_k`` (this pass is its N tile's final one),
    ``last_n`` (this is the last N tile), ``first_k``; ``advance(m)`` (in an ``If``) moves
    to the next pass.

    With ``pair`` (a signal; two weight buffers only), while it is high the N tiles go two
    at a time: (n, k0), (n + W, k0), (n, k0 + H), (n + W, k0 + H), ...; ``slot`` is the
    tile's place in its pair (the last pair may hold one tile). Each column still sees
    its K tiles in order, so results are the same bits."""

    def __init__(self, m, args, H, W, name, pair=None):
        self.args = args
        self.k0 = Signal(17, name=f"{name}_k0")
        self.n0 = Signal(17, name=f"{name}_n0")
        self.H, self.W = H, W
        self.pair = pair
        self.slot = Signal(name=f"{name}_slot") if pair is not None else None
        self.last_k = Signal(name=f"{name}_last_k")
        self.last_n = Signal(name=f"{name}_last_n")
        self.first_k = Signal(name=f"{name}_first_k")
        m.d.comb += [self.last_k.eq(self.k0 + H >= args.k), self.last_n.eq(self.n0 + W >= args.n),
                     self.first_k.eq(self.k0 == 0)]

    def reset(self):
        return [self.k0.eq(0), self.n0.eq(0)] + ([self.slot.eq(0)] if self.pair is not None else [])

    def advance(self, m):
        H, W = self.H, self.W
        if self.pair is None:
            with m.If(self.last_k):
                m.d.sync += [self.k0.eq(0), self.n0.eq(self.n0 + W)]
            with m.Else():
                m.d.sync += self.k0.eq(self.k0 + H)
            return
        first = self.n0 - Mux(self.slot, W, 0)      # the pair's first tile
        with m.If(self.pair & ~self.slot & ~self.last_n):
            m.d.sync += [self.slot.eq(1), self.n0.eq(self.n0 + W)]
        with m.Elif(self.last_k):
            m.d.sync += [self.slot.eq(0), self.k0.eq(0),
                         self.n0.eq(first + Mux(self.pair, 2 * W, W))]
        with m.Else():
            m.d.sync += [self.slot.eq(0), self.k0.eq(self.k0 + H), self.n0.eq(first)]


class GemmEngine(wiring.Component):
    """C = A . B (+ C) of one GEMM instruction on an H x W ``SystolicArray``.

    The GEMM is cut into passes exactly as ``sim.golden.gemm.plan_gemm`` does (N tiles of W
    columns outer, K tiles of H rows inner; pass kt > 0 of an N tile starts from the FP32
    results of pass kt - 1, kept in the :class:`Accumulator`; pass 0 starts from +0.0, or
    from the FP32 C in the scratchpad with ``acc``), with its zero padding (weights and
    activations beyond K or N are +0), so results are bit-exact with
    ``sim.golden.gemm.gemm``. Final passes write C (FP16, or FP32 with ``fp32``) with lane
    enables, so words shared with neighbouring columns keep them.

    Three walkers run the same pass sequence:
      * weights: reads B row by row (``read_b``) into a FIFO of one tile (H rows); it runs
        up to one pass ahead, so the next tile is ready when the array has drained;
      * activations: reads A rows (``read_a``) with their partial sums (accumulator, or C
        through ``read_c``) into a 4-row FIFO, one row per clock; rows of a pass are read
        only once the array has taken the first weight row of that pass (the previous
        pass has then drained and its partial sums are written);
      * results: ``results.ready`` is always high; each row goes to the accumulator or, in
        a final pass, to C (``write_c``).
    A pass costs H clocks of preload + M rows + the array's drain (H + W - 1) before the
    next preload; with weights resident (one pass) M rows stream back to back. Latency:
    ``busy`` lasts about P (2 H + W - 1 + M) + 2 clocks for P passes (measured on 8 x 8:
    473 clocks for M = 448, one pass: 94.7 % of the clocks carry a row).

    Two weight buffers (``NpuConfig.weight_buffers`` = 2): the weight walker feeds the
    array whenever it takes weights (into its spare buffer, during the current pass), the
    first row of each pass carries ``flip``, and the activation walker no longer waits for
    the array to drain. A pass that starts from the accumulator waits, row by row, for the
    result of the pass it continues (the interlock); to keep that from serializing K
    chains, N tiles go in pairs when M <= ``accumulator_rows`` / 2 (each pair tile has its
    own half of the accumulator), so a K pass follows its predecessor by two passes. A
    pass then costs about max(M, H + 1) clocks when the weights keep up (the reference
    model hides the preload the same way); the results are the same bits.

    Ports: ``start`` (In stream, ``gemm_args_layout``): accepted when idle (``ready`` =
    not ``busy``); the core has checked the arguments (every operand inside the
    scratchpad, M <= ``accumulator_rows`` when K > H, ``acc`` only with ``fp32``).
    ``busy`` (Out): from the accepted start to the last result written. ``read_a``,
    ``read_b``, ``read_c`` (scratchpad read ports, exclusive: ``grant`` is assumed),
    ``write_c`` (scratchpad write port, exclusive). ``array_busy``, ``macs`` (Out): the
    array's counters.

    Timing-only (``config.datapath`` False): the walkers, FIFO handshakes and counters are
    unchanged; the weight FIFO holds no weights and the activation FIFO only each row's
    ``last`` (the array and the accumulator are timing-only too): C is written as zeros.
    """

    def __init__(self, config, shared_modules: bool = False):
        check_array_shape(config)
        self.config = config
        self.array = SystolicArray(config, shared_modules=shared_modules)
        super().__init__({
            "start": In(stream.Signature(gemm_args_layout())),
            "busy": Out(1),
            "read_a": Out(read_port_signature(config)),
            "read_b": Out(read_port_signature(config)),
            "read_c": Out(read_port_signature(config)),
            "write_c": Out(write_port_signature(config)),
            "array_busy": Out(COUNTER_WIDTH),
            "macs": Out(COUNTER_WIDTH),
        })

    def verilog_modules(self):
        return self.array.verilog_modules()

    def elaborate(self, platform):
        m = Module()
        cfg = self.config
        H, W = cfg.npu.array_rows, cfg.npu.array_cols
        lanes = word_lanes(cfg)            # FP16 lanes of a word
        lanes32 = lanes // 2               # FP32 lanes of a word
        sh16, sh32 = _log2(lanes), _log2(lanes32)
        arr = m.submodules.array = self.array
        acc = m.submodules.accumulator = Accumulator(cfg)
        m.d.comb += [self.array_busy.eq(arr.busy_cycles), self.macs.eq(arr.macs)]

        args = Signal(gemm_args_layout())
        busy = self.busy
        m.d.comb += self.start.ready.eq(~busy)
        begin = self.start.valid & ~busy
        with m.If(begin):
            m.d.sync += args.eq(self.start.payload)
        two = cfg.npu.weight_buffers == 2
        half = cfg.npu.accumulator_rows // 2
        pair = Signal() if two else None     # N tiles in pairs (two weight buffers)
        if two:
            with m.If(begin):
                m.d.sync += pair.eq(self.start.payload.m <= half)

        # -- the array side: preload, then stream the pass's rows --
        preload = Signal()          # the array takes this pass's weights
        first_taken = Signal()      # it has taken the first weight row of this pass
        array_parity = Signal()     # flips per pass (the activation walker compares)
        weights_taken = Signal(range(H + 1))
        rows_taken = Signal(16)
        passes_left = Signal(33)
        feeding = Signal()          # passes remain to be fed to the array
        n_tiles = (args.n + W - 1) >> _log2(W)
        k_tiles = (args.k + H - 1) >> _log2(H)

        # -- weight walker: B rows -> weight FIFO --
        dp = cfg.datapath     # timing-only: the FIFOs below carry no values
        wfifo = m.submodules.wfifo = SyncFIFO(width=16 * W if dp else 1, depth=max(H, 2))
        ww = _PassWalker(m, args, H, W, "ww", pair)
        w_active = Signal()
        w_i = Signal(range(H))
        w_row = Signal(33)          # b + (k0 + i) * b_pitch
        w_krow = Signal(33)         # b + k0 * b_pitch (two weight buffers)
        w_pend, w_valid_row, w_sel = Signal(), Signal(), Signal(range(max(lanes // W, 2)))
        w_cols = Signal(W)
        w_credit = (wfifo.level + w_pend) < wfifo.depth
        w_issue = w_active & w_credit
        w_row_ok = (ww.k0 + w_i) < args.k
        m.d.comb += [self.read_b.addr.eq(w_row + (ww.n0 >> sh16)),
                     self.read_b.en.eq(w_issue & w_row_ok)]
        m.d.sync += w_pend.eq(w_issue)
        with m.If(w_issue):
            if dp:
                m.d.sync += [w_valid_row.eq(w_row_ok),
                             w_sel.eq((ww.n0 & (lanes - 1)) >> _log2(W)),
                             w_cols.eq(Cat(*((ww.n0 + j) < args.n for j in range(W))))]
            m.d.sync += [w_i.eq(Mux(w_i == H - 1, 0, w_i + 1)), w_row.eq(w_row + args.b_pitch)]
            with m.If(w_i == H - 1):
                ww.advance(m)
                with m.If(ww.last_k):
                    m.d.sync += w_row.eq(args.b)
                    with m.If(ww.last_n):
                        m.d.sync += w_active.eq(0)
                if two:     # K tiles start at w_krow; a pair's second tile rereads its rows
                    with m.If(pair & ~ww.slot & ~ww.last_n):
                        m.d.sync += w_row.eq(w_krow)
                    with m.Elif(ww.last_k):
                        m.d.sync += w_krow.eq(args.b)
                    with m.Else():
                        m.d.sync += w_krow.eq(w_row + args.b_pitch)
        m.d.comb += wfifo.w_en.eq(w_pend)
        if dp:
            groups = [self.read_b.data[16 * W * g:16 * W * (g + 1)] for g in range(lanes // W)]
            w_word = Array(groups)[w_sel] if len(groups) > 1 else groups[0]
            w_mask = Cat(*(w_cols[j].replicate(16) for j in range(W)))
            m.d.comb += wfifo.w_data.eq(Mux(w_valid_row, w_word & w_mask, 0))

        # -- activation walker: A rows (+ partial sums) -> activation FIFO --
        act_layout = activation_layout(cfg)
        act_bits = data.Layout.cast(act_layout).size
        ctl_bits = 2 if two else 1          # last (and flip) of a row: its control
        afifo = m.submodules.afifo = SyncFIFO(width=act_bits if dp else ctl_bits, depth=4)
        aw = _PassWalker(m, args, H, W, "aw", pair)
        a_active = Signal()
        a_m = Signal(16)
        a_row = Signal(33)          # a + m * a_pitch
        c_row = Signal(33)          # c + m * c_pitch
        a_parity = Signal()
        a_pend = Signal()
        a_last, a_src_acc, a_src_c = Signal(), Signal(), Signal()
        a_sel = Signal(range(max(lanes // H, 2)))
        a_vals = Signal(H)
        c_sel = Signal(range(max(lanes32 // W, 2)))
        a_cols = Signal(W)
        a_flip = Signal()
        from_acc = ~aw.first_k
        from_c = aw.first_k & args.acc
        if two:     # the interlock: a row's partial sums are written before it is read
            a_seq, r_seq = Signal(32), Signal(32)   # passes the walkers have finished
            r_m_now = Signal(16)
            paired = pair & (aw.slot | ~aw.last_n)   # this tile has a pair partner
            back = Mux(paired, 2, 1)                 # the pass continued: ``back`` passes ago
            a_gate = ~from_acc | (r_seq + back > a_seq) | ((r_seq + back == a_seq) & (r_m_now > a_m))
        else:
            a_gate = (a_parity == array_parity) & (first_taken | ~preload)
        a_credit = (afifo.level + a_pend) < afifo.depth
        a_issue = a_active & a_gate & a_credit
        acc_half = (lambda walker: Mux(walker.slot, half, 0)) if two else (lambda walker: 0)
        m.d.comb += [self.read_a.addr.eq(a_row + (aw.k0 >> sh16)), self.read_a.en.eq(a_issue),
                     acc.read_addr.eq(a_m + acc_half(aw)), acc.read_en.eq(a_issue & from_acc),
                     self.read_c.addr.eq(c_row + (aw.n0 >> sh32)),
                     self.read_c.en.eq(a_issue & from_c)]
        m.d.sync += a_pend.eq(a_issue)
        with m.If(a_issue):
            m.d.sync += [a_last.eq(a_m == args.m - 1), a_flip.eq(a_m == 0)]
            if dp:
                m.d.sync += [a_src_acc.eq(from_acc), a_src_c.eq(from_c),
                             a_sel.eq((aw.k0 & (lanes - 1)) >> _log2(H)),
                             c_sel.eq((aw.n0 & (lanes32 - 1)) >> _log2(W)),
                             a_vals.eq(Cat(*((aw.k0 + i) < args.k for i in range(H)))),
                             a_cols.eq(Cat(*((aw.n0 + j) < args.n for j in range(W))))]
            m.d.sync += [a_m.eq(a_m + 1), a_row.eq(a_row + args.a_pitch),
                         c_row.eq(c_row + args.c_pitch)]
            with m.If(a_m == args.m - 1):
                m.d.sync += [a_m.eq(0), a_row.eq(args.a), c_row.eq(args.c), a_parity.eq(~a_parity)]
                if two:
                    m.d.sync += a_seq.eq(a_seq + 1)
                aw.advance(m)
                with m.If(aw.last_k & aw.last_n):
                    m.d.sync += a_active.eq(0)
        m.d.comb += [afifo.w_en.eq(a_pend), afifo.w_data.eq(Cat(a_last, a_flip) if two else a_last)]
        if dp:
            a_groups = [self.read_a.data[16 * H * g:16 * H * (g + 1)] for g in range(lanes // H)]
            a_word = Array(a_groups)[a_sel] if len(a_groups) > 1 else a_groups[0]
            a_mask = Cat(*(a_vals[i].replicate(16) for i in range(H)))
            c_groups = [self.read_c.data[32 * W * g:32 * W * (g + 1)]
                        for g in range(lanes32 // W)]
            c_word = Array(c_groups)[c_sel] if len(c_groups) > 1 else c_groups[0]
            c_mask = Cat(*(a_cols[j].replicate(32) for j in range(W)))
            psums = Mux(a_src_acc, acc.read_data, Mux(a_src_c, c_word & c_mask, 0))
            row = Signal(act_layout)
            m.d.comb += [row.eq(Cat(a_word & a_mask, psums, a_src_acc | a_src_c, a_last,
                                    *([a_flip] if two else []))),
                         afifo.w_data.eq(row)]

        # -- feeding the array --
        # one buffer: a pass's weights once the previous pass's rows are in; two: whenever
        # the array takes them (its spare buffer)
        w_gate = 1 if two else preload & feeding
        m.d.comb += [arr.weights.valid.eq(wfifo.r_rdy & w_gate),
                     arr.weights.payload.eq(wfifo.r_data),
                     wfifo.r_en.eq(arr.weights.ready & w_gate),
                     arr.activations.valid.eq(afifo.r_rdy),
                     arr.activations.payload.eq(afifo.r_data if dp else      # control only
                                                Cat(Const(0, act_bits - ctl_bits), afifo.r_data)),
                     afifo.r_en.eq(arr.activations.ready)]
        with m.If(arr.weights.valid & arr.weights.ready):
            m.d.sync += [first_taken.eq(1), weights_taken.eq(weights_taken + 1)]
            with m.If(weights_taken == H - 1):
                m.d.sync += [preload.eq(0), weights_taken.eq(0)]
        with m.If(arr.activations.valid & arr.activations.ready):
            m.d.sync += rows_taken.eq(rows_taken + 1)
            with m.If(rows_taken == args.m - 1):
                m.d.sync += [rows_taken.eq(0), preload.eq(1), first_taken.eq(0),
                             array_parity.eq(~array_parity), passes_left.eq(passes_left - 1)]
                with m.If(passes_left == 1):
                    m.d.sync += feeding.eq(0)

        # -- result walker: array results -> accumulator or C --
        rw = _PassWalker(m, args, H, W, "rw", pair)
        r_m = Signal(16)
        r_row = Signal(33)          # c + m * c_pitch
        res = arr.results
        m.d.comb += res.ready.eq(1)
        if two:
            m.d.comb += r_m_now.eq(r_m)
        got = res.valid
        final = rw.last_k
        m.d.comb += [
            self.write_c.addr.eq(r_row + Mux(args.fp32, rw.n0 >> sh32, rw.n0 >> sh16)),
            acc.write_addr.eq(r_m + acc_half(rw)), acc.write_en.eq(got & ~final),
        ]
        if dp:
            self._result_lanes(m, args, rw, got & final, res)
        else:   # a write of some lanes (column n0 is always in C), no values
            m.d.comb += self.write_c.lanes.eq(got & final)
        with m.If(got):
            m.d.sync += [r_m.eq(r_m + 1), r_row.eq(r_row + args.c_pitch)]
            with m.If(r_m == args.m - 1):
                m.d.sync += [r_m.eq(0), r_row.eq(args.c)]
                if two:
                    m.d.sync += r_seq.eq(r_seq + 1)
                rw.advance(m)
                with m.If(rw.last_k & rw.last_n):
                    m.d.sync += busy.eq(0)

        # -- start --
        with m.If(begin):
            p = self.start.payload
            m.d.sync += [busy.eq(1), w_active.eq(1), a_active.eq(1), feeding.eq(1),
                         preload.eq(1), first_taken.eq(0), weights_taken.eq(0), rows_taken.eq(0),
                         w_i.eq(0), w_row.eq(p.b), a_m.eq(0), a_row.eq(p.a), c_row.eq(p.c),
                         r_m.eq(0), r_row.eq(p.c), a_parity.eq(array_parity)]
            m.d.sync += ww.reset() + aw.reset() + rw.reset()
            if two:
                m.d.sync += [a_seq.eq(0), r_seq.eq(0), w_krow.eq(p.b)]
        # passes: computed one clock after start from the latched arguments
        started = Signal()
        m.d.sync += started.eq(begin)
        with m.If(started):
            m.d.sync += passes_left.eq(n_tiles * k_tiles)
        return m

    def _result_lanes(self, m, args, rw, write, res):
        """C's lanes and data for a final pass's result row: FP16 or FP32 columns
        [n0, n0 + W) of the word, those below N enabled."""
        cfg = self.config
        W = cfg.npu.array_cols
        lanes = word_lanes(cfg)
        lanes32 = lanes // 2
        fp16_sel = (rw.n0 & (lanes - 1)) >> _log2(W)
        fp32_sel = (rw.n0 & (lanes32 - 1)) >> _log2(W)
        cols = Cat(*((rw.n0 + j) < args.n for j in range(W)))
        lanes16 = Signal(lanes)
        lanes32_en = Signal(lanes)
        for g in range(lanes // W):
            m.d.comb += lanes16[g * W:(g + 1) * W].eq(Mux(fp16_sel == g, cols, 0))
        for g in range(lanes32 // W):
            m.d.comb += lanes32_en[2 * g * W:2 * (g + 1) * W].eq(
                Mux(fp32_sel == g, Cat(*(cols[j].replicate(2) for j in range(W))), 0))
        fp16_word = Cat(*([res.payload.fp16.as_value()] * (lanes // W)))
        fp32_word = Cat(*([res.payload.fp32.as_value()] * (lanes32 // W)))
        acc = m.submodules.accumulator
        m.d.comb += [
            self.write_c.lanes.eq(Mux(write, Mux(args.fp32, lanes32_en, lanes16), 0)),
            self.write_c.data.eq(Mux(args.fp32, fp32_word, fp16_word)),
            acc.write_data.eq(res.payload.fp32.as_value()),
        ]
