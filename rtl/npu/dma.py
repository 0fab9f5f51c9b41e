"""The NPU's DMA engine: bursts between HBM byte addresses and scratchpad words, over the
request streams of every memory channel's controller."""
from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.wiring import In, Out

from ..config import ConfigError
from ..controller.interface import read_response_layout, request_layout, write_response_layout
from ..isa.npu import DMA_FIELDS, SP_BITS
from .scratchpad import (burst_lanes, read_port_signature, word_bursts, word_lanes,
                         write_port_signature)

__all__ = ["DmaEngine", "dma_command_layout", "burst_fields", "round_robin", "check_dma_config"]

COUNTER_WIDTH = 48


def dma_command_layout() -> data.StructLayout:
    """``store`` (0: HBM -> scratchpad, 1: scratchpad -> HBM), ``hbm`` (byte address, a
    multiple of the burst), ``sp`` (first word), ``count`` (bursts), ``slice`` (the first
    burst slice, < k), ``spread``: burst ``i`` is burst slice ``(slice + i) % k`` of word
    ``sp + (slice + i) // k`` for ``k`` bursts per word; with ``spread`` slice ``slice``
    of word ``sp + i``."""
    return data.StructLayout({"store": 1, **DMA_FIELDS})


def burst_fields(config) -> dict[str, tuple[int, int]]:
    """(bit position, width) of each address-map field in a *burst index* (the byte address
    without its offset bits), from ``AddressMap.order`` and ``widths``."""
    widths = config.address_map.widths(config.geometry)
    out, position = {}, 0
    for name in reversed(config.address_map.order):
        if name == "offset":
            continue
        out[name] = (position, widths[name])
        position += widths[name]
    return out


def check_dma_config(config) -> None:
    """Raise ConfigError when the DMA cannot be built for ``config``."""
    npu = config.npu
    if npu.dma_in_flight > config.controller.tags:
        raise ConfigError("NpuConfig.dma_in_flight",
                          f"{npu.dma_in_flight} exceeds the controller's "
                          f"{config.controller.tags} tags")


def round_robin(m, requests, pointer, name):
    """(winner index, any) of the set bits of ``requests``: the first at or after
    ``pointer``, else the first."""
    n = len(requests)
    winner = Signal(range(max(n, 2)), name=f"{name}_winner")
    later = Cat(*(requests[i] & (pointer <= i) if i < n - 1 else requests[i]
                  for i in range(n)))
    m.d.comb += winner.eq(Mux(later.any(), first_set(later), first_set(requests)))
    return winner, requests.any()


def first_set(bits):
    """Index of the lowest set bit of ``bits`` (0 when none), as a Mux chain."""
    value = Const(0, range(max(len(bits), 2)))
    for i in reversed(range(len(bits))):
        value = Mux(bits[i], i, value)
    return value


class DmaEngine(wiring.Component):
    """Moves ``count`` bursts between HBM bytes [hbm, hbm + 64 count) and the scratchpad's
    burst slices from slice ``slice`` of word ``sp`` on, through the controllers of
    ``config.geometry.channels`` channels, for ``k`` = :func:`word_bursts` bursts per
    scratchpad word (1 by default): burst ``i`` of a transfer is burst slice
    ``j = (slice + i) % k`` (FP16 lanes [32 j, +32) for 64-byte bursts) of word
    ``sp + (slice + i) // k``; with ``spread``, slice ``slice`` of word ``sp + i`` (one
    burst per word). A load writes only that slice (lane enables:
    the rest of the word keeps its value); a store reads the word and sends that slice.

    Each burst index is decoded in RTL by slicing the address map's fields
    (:func:`burst_fields`). Every channel has its own walker over the bursts of the
    transfer that map to it (in address order: +1 inside a run of the channel's bits,
    else a jump to the channel's next run), its own ``dma_in_flight`` tags (lowest free
    first; the tag table remembers each request's scratchpad word and burst slice) and a
    4-deep request FIFO, so every channel can take one request per clock. Loads: each channel issues a
    read per clock; read data come back out of order and are written to the word of
    their tag, ``R`` = ``dma_responses`` responses per clock from as many channels
    (round-robin: response lane ``i`` takes the first channel with a response after lane
    ``i - 1``'s; back-pressure on the others), lane ``i`` through write port
    ``sp_write`` (``i`` = 0) or ``sp_write{i}``. Stores: one scratchpad word is read per clock (``sp_read``, which may
    lose to nobody: it has the port's priority) for the channels in turn; a write is
    done when acknowledged.

    Ports: ``cmd`` (In stream, :func:`dma_command_layout`): taken when every walker is done
    with the previous command (whose last responses may still be outstanding); with
    ``NpuConfig.dma_overlap``, when the walkers of the channels it has bursts in are done
    and it goes the same way (load or store) as the commands still walking, so commands
    to different channels issue at once, each walker keeping its own command. A store
    also waits until no load is outstanding (it may read words a load still writes).
    ``busy`` (Out): a walker runs, a request waits or a tag is outstanding. ``requests``,
    ``read_responses``, ``write_responses``: one stream per channel (to the controllers).
    ``sp_read``, ``sp_write``: scratchpad ports. ``bytes_read`` (HBM -> scratchpad, counted
    at the read response) and ``bytes_written`` (at the write acknowledgement) (Out).
    Latency: a command's first request reaches its channel three clocks after ``cmd``
    (walker start, issue, FIFO)."""

    def __init__(self, config):
        check_dma_config(config)
        self.config = config
        g = config.geometry
        channels = g.channels
        super().__init__({
            "cmd": In(stream.Signature(dma_command_layout())),
            "busy": Out(1),
            "requests": Out(stream.Signature(request_layout(config))).array(channels),
            "read_responses": In(stream.Signature(read_response_layout(config))).array(channels),
            "write_responses": In(stream.Signature(write_response_layout(config))).array(channels),
            "sp_read": Out(read_port_signature(config)),
            "sp_write": Out(write_port_signature(config)),
            **{f"sp_write{i}": Out(write_port_signature(config))
               for i in range(1, config.npu.dma_responses)},
            "bytes_read": Out(COUNTER_WIDTH),
            "bytes_written": Out(COUNTER_WIDTH),
        })

    def elaborate(self, platform):
        m = Module()
        cfg, g = self.config, self.config.geometry
        C, T = g.channels, cfg.npu.dma_in_flight
        fields = burst_fields(cfg)
        bits = sum(w for _, w in fields.values())          # burst index bits
        q, cw = fields["channel"]
        offset_bits = (g.burst_bytes - 1).bit_length()
        req_layout = request_layout(cfg)
        k = word_bursts(cfg)                    # bursts per scratchpad word
        kb = k.bit_length() - 1                 # slice bits: a burst's place in its word
        burst_bits = g.burst_bytes * 8

        cmd = self.cmd.payload
        store = Signal()
        overlap = cfg.npu.dma_overlap
        if overlap:             # each walker keeps its own command
            b0s = [Signal(bits + 2, name=f"b0_{c}") for c in range(C)]
            ends = [Signal(bits + 2, name=f"end{c}") for c in range(C)]
            sp_bases = [Signal(SP_BITS + kb, name=f"sp_base{c}") for c in range(C)]
            spreads = [Signal(name=f"spread{c}") for c in range(C)]
        else:
            b0 = Signal(bits + 2)
            end = Signal(bits + 2)
            sp_base = Signal(SP_BITS + kb, name="sp_base")   # sp in burst slices (sp k)
            spread = Signal()                                 # one burst per word: slice i k
            b0s, ends, sp_bases, spreads = [b0] * C, [end] * C, [sp_base] * C, [spread] * C

        cur = [Signal(bits + 2, name=f"cur{c}") for c in range(C)]
        active = Signal(C)
        free = [Signal(T, init=(1 << T) - 1, name=f"free{c}") for c in range(C)]
        is_load = [Signal(T, name=f"is_load{c}") for c in range(C)]
        table = [[Signal(SP_BITS + kb, name=f"tag{c}_{t}") for t in range(T)]
                 for c in range(C)]                   # the burst slice sp k + i
        fifos = []
        for c in range(C):
            fifo = SyncFIFO(width=data.Layout.cast(req_layout).size, depth=4)
            m.submodules[f"fifo{c}"] = fifo
            fifos.append(fifo)
        pend = Signal(C)                              # a request enters FIFO c next clock
        pend_req = [Signal(req_layout, name=f"pend{c}") for c in range(C)]
        pend_store = Signal()                         # ... with the word just read

        loads_out = Cat(*((~free[c]) & is_load[c] for c in range(C))).any()
        tags_out = Cat(*(~free[c] for c in range(C))).any()
        fifo_busy = Cat(*(f.r_rdy for f in fifos)).any()
        m.d.comb += self.busy.eq(active.any() | pend.any() | fifo_busy | tags_out)

        # -- a new command --
        if overlap:
            start = Signal(bits + 2)
            m.d.comb += start.eq(cmd.hbm >> offset_bits)
            cmd_sp = cmd.sp if k == 1 else Cat(cmd.slice[:kb], cmd.sp)
            touched = Signal(C)     # the channels the command has bursts in
            firsts = [self._first(start, c, q, cw) for c in range(C)]
            m.d.comb += touched.eq(Cat(*(first < start + cmd.count for first in firsts)))
            same_way = ~active.any() | (cmd.store == store)
            m.d.comb += self.cmd.ready.eq(~(active & touched).any() & same_way
                                          & ~(cmd.store & loads_out))
            take = self.cmd.valid & self.cmd.ready
            with m.If(take):
                m.d.sync += store.eq(cmd.store)
                for c in range(C):
                    with m.If(touched[c]):
                        m.d.sync += [cur[c].eq(firsts[c]), active[c].eq(1), b0s[c].eq(start),
                                     ends[c].eq(start + cmd.count), sp_bases[c].eq(cmd_sp),
                                     spreads[c].eq(cmd.spread)]
        else:
            m.d.comb += self.cmd.ready.eq(~active.any() & ~(cmd.store & loads_out))
            take = self.cmd.valid & self.cmd.ready
            start = Signal(bits + 2)
            m.d.comb += start.eq(cmd.hbm >> offset_bits)
            with m.If(take):
                m.d.sync += [store.eq(cmd.store), b0.eq(start), end.eq(start + cmd.count),
                             sp_base.eq(cmd.sp if k == 1 else Cat(cmd.slice[:kb], cmd.sp)),
                             spread.eq(cmd.spread)]
                for c in range(C):
                    first = self._first(start, c, q, cw)
                    m.d.sync += [cur[c].eq(first), active[c].eq(first < start + cmd.count)]

        # -- issue: every channel with work, a free tag and FIFO room --
        lowest = []
        can = Signal(C)
        for c in range(C):
            low = Signal(range(max(T, 2)), name=f"lowest_free{c}")
            m.d.comb += low.eq(first_set(free[c]))
            lowest.append(low)
            credit = (fifos[c].level + pend[c]) < fifos[c].depth
            m.d.comb += can[c].eq(active[c] & free[c].any() & credit)
        st_pointer = Signal(range(max(C, 2)))
        st_winner, st_any = round_robin(m, can, st_pointer, "store")
        if overlap:
            st_slice = Array(sp_bases)[st_winner] + self._step(
                Array(cur)[st_winner] - Array(b0s)[st_winner], Array(spreads)[st_winner], kb)
        else:
            st_slice = sp_base + self._step(Array(cur)[st_winner] - b0, spread, kb)
        if k == 1:
            m.d.comb += [self.sp_read.en.eq(store & st_any),
                         self.sp_read.addr.eq(st_slice)]
            st_data = self.sp_read.data
        else:
            st_at = Signal(SP_BITS + kb, name="st_slice")
            st_part = Signal(kb, name="st_part")     # the slice of the word read last clock
            m.d.comb += [st_at.eq(st_slice), self.sp_read.en.eq(store & st_any),
                         self.sp_read.addr.eq(st_at[kb:])]
            m.d.sync += st_part.eq(st_at[:kb])
            st_data = self.sp_read.data.word_select(st_part, burst_bits)
        issue = Signal(C)
        for c in range(C):
            m.d.comb += issue[c].eq(can[c] & Mux(store, self.sp_read.grant & (st_winner == c), 1))
        with m.If(store & st_any & self.sp_read.grant):
            m.d.sync += st_pointer.eq(Mux(st_winner == C - 1, 0, st_winner + 1))
        m.d.sync += [pend.eq(issue), pend_store.eq(store)]

        freed = [Signal(T, name=f"freed{c}") for c in range(C)]
        for c in range(C):
            here = {}
            for name in ("row", "rank", "bankgroup", "bank", "column"):
                pos, width = fields[name]
                here[name] = cur[c][pos:pos + width] if width else Const(0, 1)
            with m.If(issue[c]):
                for t in range(T):
                    with m.If(lowest[c] == t):
                        m.d.sync += table[c][t].eq(sp_bases[c] + self._step(
                            cur[c] - b0s[c], spreads[c], kb))
                m.d.sync += [cur[c].eq(self._next(cur[c], c, q, cw)),
                             pend_req[c].eq(Cat(*(self._field(req_layout, name, here, store,
                                                              lowest[c])
                                                  for name, _ in req_layout)))]
                with m.If(self._next(cur[c], c, q, cw) >= ends[c]):
                    m.d.sync += active[c].eq(0)
            alloc = Mux(issue[c], Const(1, T) << lowest[c], 0)
            m.d.sync += [free[c].eq((free[c] & ~alloc) | freed[c]),
                         is_load[c].eq((is_load[c] & ~freed[c]) | Mux(store, 0, alloc))]
            # into the FIFO: the request, with the scratchpad word of a store
            fifo = fifos[c]
            word = Signal(req_layout, name=f"word{c}")
            data_at = req_layout["data"].offset
            m.d.comb += word.eq(Cat(pend_req[c].as_value()[:data_at],
                                    Mux(pend_store, st_data, 0)))
            m.d.comb += [fifo.w_en.eq(pend[c]), fifo.w_data.eq(word),
                         self.requests[c].valid.eq(fifo.r_rdy),
                         self.requests[c].payload.eq(fifo.r_data),
                         fifo.r_en.eq(self.requests[c].ready)]

        # -- read data: R responses per clock, round-robin over channels --
        rd_valid = Cat(*(self.read_responses[c].valid for c in range(C)))
        rd_pointer = Signal(range(max(C, 2)))
        left, pointer = rd_valid, rd_pointer
        lanes = []                                  # (winner, taken) per response lane
        for i in range(cfg.npu.dma_responses):
            name = "read" if i == 0 else f"read{i}"
            winner, any_ = round_robin(m, left, pointer, name)
            port = self.sp_write if i == 0 else getattr(self, f"sp_write{i}")
            self._write_response(m, port, table, winner, any_, "rd" if i == 0 else name)
            done = any_ & port.grant
            lanes.append((winner, done))
            left = left & ~Mux(any_, Const(1, C) << winner, 0)
            pointer = Mux(winner == C - 1, 0, winner + 1)
        for winner, done in lanes:                  # the pointer follows the last lane taken
            with m.If(done):
                m.d.sync += rd_pointer.eq(Mux(winner == C - 1, 0, winner + 1))
        burst = g.burst_bytes
        read_bytes = (Mux(lanes[0][1], burst, 0) if len(lanes) == 1
                      else _popcount(Cat(*(done for _, done in lanes))) * burst)
        writes_done = Signal(C)
        for c in range(C):
            rr, wr = self.read_responses[c], self.write_responses[c]
            taken = _any([done & (winner == c) for winner, done in lanes])
            m.d.comb += [rr.ready.eq(taken), wr.ready.eq(1),
                         writes_done[c].eq(wr.valid)]
            m.d.comb += freed[c].eq(Mux(rr.valid & rr.ready, Const(1, T) << rr.payload.tag, 0)
                                    | Mux(wr.valid, Const(1, T) << wr.payload.tag, 0))

        m.d.sync += [self.bytes_read.eq(self.bytes_read + read_bytes),
                     self.bytes_written.eq(self.bytes_written + _popcount(writes_done) * burst)]
        return m

    def _write_response(self, m, port, table, winner, valid, name):
        """Channel ``winner``'s read response (when ``valid``) to the word and burst slice
        its tag recorded, through write ``port``."""
        cfg, g = self.config, self.config.geometry
        C, k = g.channels, word_bursts(cfg)
        kb, bl = k.bit_length() - 1, burst_lanes(cfg)
        tag = Signal(max(1, (cfg.npu.dma_in_flight - 1).bit_length()), name=f"{name}_tag")
        rdata = Signal(g.burst_bytes * 8, name=f"{name}_data")
        addr = Signal(SP_BITS + kb, name=f"{name}_addr")
        m.d.comb += [tag.eq(Array(self.read_responses[c].payload.tag for c in range(C))[winner]),
                     rdata.eq(Array(self.read_responses[c].payload.data for c in range(C))[winner]),
                     addr.eq(Array(Array(table[c])[tag] for c in range(C))[winner])]
        if k == 1:
            m.d.comb += [port.addr.eq(addr), port.data.eq(rdata),
                         port.lanes.eq(Mux(valid, (1 << word_lanes(cfg)) - 1, 0))]
        else:   # the burst into its slice of the word (lane enables keep the others)
            slice_lanes = Cat(*(Mux(addr[:kb] == s, Const((1 << bl) - 1, bl), Const(0, bl))
                                for s in range(k)))
            m.d.comb += [port.addr.eq(addr[kb:]), port.data.eq(Cat(*([rdata] * k))),
                         port.lanes.eq(Mux(valid, slice_lanes, 0))]

    @staticmethod
    def _field(layout, name, here, store, tag):
        width = layout[name].width
        if name == "write":
            return store
        if name == "tag":
            return tag.as_unsigned()[:width] if len(tag) >= width else Cat(tag, Const(0, width - len(tag)))
        if name == "data":
            return Const(0, width)
        value = here[name]
        if len(value) >= width:
            return value[:width]
        return Cat(value, Const(0, width - len(value)))

    @staticmethod
    def _step(i, spread, kb):
        """Burst slices from the transfer's first to its burst ``i``: i, or i k spread."""
        return i if kb == 0 else Mux(spread, i << kb, i)

    @staticmethod
    def _first(start, c, q, cw):
        """The first burst index >= ``start`` whose channel bits are ``c``."""
        if cw == 0:
            return start
        channel = start[q:q + cw]
        high = start >> (q + cw)
        here = (high << (q + cw)) | (c << q)
        later = ((high + 1) << (q + cw)) | (c << q)
        if c == 0:
            return Mux(channel == 0, start, later)
        return Mux(channel == c, start, Mux(channel < c, here, later))

    @staticmethod
    def _next(value, c, q, cw):
        """The next burst index after ``value`` whose channel bits are ``c``."""
        step = value + 1
        if cw == 0:
            return step
        later = (((value >> (q + cw)) + 1) << (q + cw)) | (c << q)
        return Mux(step[q:q + cw] == c, step, later)


def _any(values):
    """OR of ``values`` (the value itself when there is one)."""
    return values[0] if len(values) == 1 else Cat(*values).any()


def _popcount(bits):
    """Number of set bits (a balanced adder tree)."""
    values = [bits[i] for i in range(len(bits))]
    while len(values) > 1:
        values = [values[i] + values[i + 1] if i + 1 < len(values) else values[i]
                  for i in range(0, len(values), 2)]
    return values[0]
