"""``NpuTop``: the NPU cores on the memory: one ``ControllerTop`` (controller + PIM channel)
per channel, shared by the cores (one per systolic array)."""
from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.wiring import In, Out

from ..channel.datapath import ChannelError
from ..controller import ControllerTop
from ..controller.controller import ControllerError
from ..controller.interface import counters_layout as controller_counters_layout
from ..common import shared_instance
from ..isa import command_layout
from ..config import ConfigError
from ..controller.interface import PimOp, pim_request_layout, request_layout
from .arbiter import StreamArbiter
from .core import COUNTERS, NpuCore
from .vector_engine import engine_supported

__all__ = ["NpuTop", "check_cores", "CORE_MODULE", "CHANNEL_MODULE"]

#: Verilog module names of the NPU core and of a channel (controller + PIM channel) when
#: several share one (``shared_modules``).
CORE_MODULE = "neupims_npu_core"
CHANNEL_MODULE = "neupims_channel"


def _silence(elaboratable):
    """Mark a prototype that is never elaborated (Amaranth's UnusedElaboratable warning)."""
    if elaboratable is None:
        return
    elaboratable._MustUse__silence = True
    for child in vars(elaboratable).values():
        if hasattr(child, "_MustUse__silence"):
            _silence(child)


def check_cores(config) -> None:
    """Raise ConfigError when ``config.npu.arrays`` cores cannot share the channels: each
    core's DMA tags are kept apart by the core number in the high tag bits."""
    npu = config.npu
    if npu.arrays == 1:
        return
    tags = npu.arrays << _bits(npu.dma_in_flight)
    if tags > config.controller.tags:
        raise ConfigError("NpuConfig.dma_in_flight",
                          f"{npu.arrays} arrays x {1 << _bits(npu.dma_in_flight)} DMA tags "
                          f"(dma_in_flight {npu.dma_in_flight}, rounded up to a power of two) "
                          f"need {tags} controller tags; ControllerConfig.tags is "
                          f"{config.controller.tags}")
    if not engine_supported(config):
        raise ConfigError("NpuConfig.vector_lanes",
                          f"{npu.arrays} arrays need the built-in vector engine of each core, "
                          f"which does not support {npu.vector_lanes} lanes here")


def _bits(count: int) -> int:
    return max(1, (count - 1).bit_length())


class NpuTop(wiring.Component):
    """``config.npu.arrays`` NpuCores + ``config.geometry.channels`` x ControllerTop.

    Each core (one systolic array, its vector engine, scratchpad, DMA, sequencer and
    instruction memory: NEUPIMS.md 3, "each array paired with a vector unit") runs its own
    program; all cores share every channel. Per channel, a :class:`StreamArbiter` merges
    the cores' normal requests (round-robin) and another their PIM transactions; a request
    leaves with the core's number in its tag's high bits (above the DMA's own
    ``dma_in_flight`` tags) and its response is routed back by it (a PIM GEMV result by
    its tag too: the controller answers with the request's tag). With one array the core
    is wired straight to the channels (no arbiter, tags unchanged). ``shared_modules``
    (default, for Verilator and export): the cores are instances of one Verilog module
    (``CORE_MODULE``), the channels of one (``CHANNEL_MODULE``), and so are the array's
    PEs, the vector lanes' units and the banks (Amaranth's simulator needs False).

    Ports of the core (see :class:`NpuCore`): ``program_*``, ``start``, ``running``,
    ``done``, ``error``, ``error_code``, ``error_pc``, ``pc``, ``counters``, ``vector_ops``,
    ``vector_done``, ``ext_read``, ``ext_write``. With several arrays: ``program_*`` and
    ``ext_*`` reach the core that ``program_core`` / ``ext_core`` name; ``start`` starts
    every core (load a HALT into a core with nothing to do); ``running`` while any core
    runs, ``done`` once every core is done (``core_done``: each); ``error`` when any core
    stopped with an error, ``error_code``/``error_pc`` those of the lowest such core
    (``error_core``); ``pc`` is core 0's; ``counters``: ``cycles`` counts clocks while any
    core runs, every other counter is the sum over the cores (``core_counters``: each);
    ``vector_ops`` stays idle (each core has its vector engine). SYNC (``rtl.isa.npu``):
    the cores' barrier is met on the clock every core is at a SYNC with its units idle or
    has stopped; the waiting cores leave on that clock (a lone core passes at once).
    ``refresh_rate`` (In, ``RefreshRate``): every controller's refresh interval divider.
    ``blocked`` (In): every channel's row-buffer mode (one buffer, the NPU+PIM baseline,
    or two): a run-time input, so the two PIM modes are one build.
    Per channel c (arrays of ``channels``, Verilog names ``<port>__<c>``): the command bus
    ``cmd``, ``cmd_valid`` and ``cycle`` for the timing monitors; the controller's
    ``ctrl_counters``, ``ctrl_error``/``ctrl_error_code``, the datapath's
    ``channel_error``/``channel_error_code``/``channel_error_bank``/``channel_error_cycle``;
    the datapath's backdoor storage port ``backdoor_en``/``backdoor_bank``/
    ``backdoor_addr``/``backdoor_data`` (word ``row * bursts_per_row + column`` of a bank's
    stored window).
    """

    def __init__(self, config, shared_modules: bool = True):
        try:
            check_cores(config)
        except ConfigError:
            _silence(self)          # never built: no "unused elaboratable" warning
            raise
        self.config = config
        C, A = config.geometry.channels, config.npu.arrays
        # with shared_modules, several cores are instances of one Verilog module (its
        # prototype, self.core, emitted by verilog_modules); otherwise one NpuCore each
        self.shared_cores = shared_modules and A > 1
        self.core = NpuCore(config, shared_modules=shared_modules)
        if self.shared_cores:
            _silence(self.core)
        self.cores = [self.core] + [NpuCore(config, shared_modules=False)
                                    for _ in range(A - 1 if not self.shared_cores else 0)]
        # likewise the channels: instances of one Verilog module, or one ControllerTop each
        self.shared_channels = shared_modules and C > 1
        self.channels = [ControllerTop(config, shared_bank_module=shared_modules)
                         for _ in range(1 if self.shared_channels else C)]
        if self.shared_channels:
            _silence(self.channels[0])
        for top in self.channels[1:]:   # their bank prototypes: the first one's is emitted
            _silence(top.datapath.bank_prototype)
        core = self.core.signature.members
        ch = self.channels[0].signature.members
        members = {name: core[name] for name in (
            "program_en", "program_addr", "program_data", "start", "running", "done", "error",
            "error_code", "error_pc", "pc", "counters", "vector_ops", "vector_done", "ext_read",
            "ext_write")}
        if A > 1:
            members.update({"program_core": In(range(A)), "ext_core": In(range(A)),
                            "core_done": Out(A), "error_core": Out(range(A)),
                            "core_counters": Out(core["counters"].shape).array(A)})
        members.update({
            "refresh_rate": ch["refresh_rate"], "blocked": ch["blocked"],
            "cmd": Out(command_layout(config)).array(C), "cmd_valid": Out(1).array(C),
            "cycle": Out(32).array(C),
            "ctrl_counters": Out(controller_counters_layout()).array(C),
            "ctrl_error": Out(1).array(C), "ctrl_error_code": Out(ControllerError).array(C),
            "channel_error": Out(1).array(C), "channel_error_code": Out(ChannelError).array(C),
            "channel_error_bank": Out(ch["channel_error_bank"].shape).array(C),
            "channel_error_cycle": Out(32).array(C),
            "backdoor_en": In(1).array(C), "backdoor_bank": In(ch["backdoor_bank"].shape).array(C),
            "backdoor_addr": In(ch["backdoor_addr"].shape).array(C),
            "backdoor_data": In(ch["backdoor_data"].shape).array(C),
        })
        super().__init__(members)

    def verilog_modules(self):
        """The shared bank module once (every channel instantiates it) and the array's."""
        cores = [(self.core, CORE_MODULE)] if self.shared_cores else []
        channels = [(self.channels[0], CHANNEL_MODULE)] if self.shared_channels else []
        return (self.channels[0].verilog_modules() + channels + cores
                + self.core.verilog_modules())

    def elaborate(self, platform):
        m = Module()
        if self.shared_channels:
            channels = [shared_instance(m, f"channel{c}", CHANNEL_MODULE, self.channels[0])
                        for c in range(self.config.geometry.channels)]
        else:
            channels = self.channels
            for c, top in enumerate(channels):
                m.submodules[f"channel{c}"] = top
        if self.config.npu.arrays == 1:
            self._one_core(m, channels)
        else:
            self._cores(m, channels)
        for c, top in enumerate(channels):
            m.d.comb += [
                self.cmd[c].eq(top.cmd), self.cmd_valid[c].eq(top.cmd_valid),
                self.cycle[c].eq(top.cycle), self.ctrl_counters[c].eq(top.counters),
                self.ctrl_error[c].eq(top.error), self.ctrl_error_code[c].eq(top.error_code),
                self.channel_error[c].eq(top.channel_error),
                self.channel_error_code[c].eq(top.channel_error_code),
                self.channel_error_bank[c].eq(top.channel_error_bank),
                self.channel_error_cycle[c].eq(top.channel_error_cycle),
                top.backdoor_en.eq(self.backdoor_en[c]), top.backdoor_bank.eq(self.backdoor_bank[c]),
                top.backdoor_addr.eq(self.backdoor_addr[c]),
                top.backdoor_data.eq(self.backdoor_data[c]), top.refresh_rate.eq(self.refresh_rate),
                top.blocked.eq(self.blocked),
            ]
        return m

    def _one_core(self, m, channels):
        core = m.submodules.core = self.core
        m.d.comb += [core.program_en.eq(self.program_en), core.program_addr.eq(self.program_addr),
                     core.program_data.eq(self.program_data), core.start.eq(self.start),
                     core.vector_done.eq(self.vector_done), core.sync_go.eq(1),
                     self.running.eq(core.running), self.done.eq(core.done),
                     self.error.eq(core.error), self.error_code.eq(core.error_code),
                     self.error_pc.eq(core.error_pc), self.pc.eq(core.pc),
                     self.counters.eq(core.counters)]
        wiring.connect(m, core.vector_ops, wiring.flipped(self.vector_ops))
        wiring.connect(m, wiring.flipped(self.ext_read), core.ext_read)
        wiring.connect(m, wiring.flipped(self.ext_write), core.ext_write)
        for c, top in enumerate(channels):
            wiring.connect(m, core.requests[c], top.requests)
            wiring.connect(m, top.read_responses, core.read_responses[c])
            wiring.connect(m, top.write_responses, core.write_responses[c])
            wiring.connect(m, core.pim_requests[c], top.pim_requests)
            wiring.connect(m, top.pim_responses, core.pim_responses[c])

    def _cores(self, m, channels):
        A = self.config.npu.arrays
        if self.shared_cores:
            cores = [shared_instance(m, f"core{a}", CORE_MODULE, self.core) for a in range(A)]
        else:
            cores = self.cores
            for a, core in enumerate(cores):
                m.submodules[f"core{a}"] = core
        for a, core in enumerate(cores):
            here = self.program_core == a
            m.d.comb += [core.program_en.eq(self.program_en & here),
                         core.program_addr.eq(self.program_addr),
                         core.program_data.eq(self.program_data), core.start.eq(self.start),
                         self.core_done[a].eq(core.done), self.core_counters[a].eq(core.counters),
                         core.ext_read.addr.eq(self.ext_read.addr),
                         core.ext_read.en.eq(self.ext_read.en & (self.ext_core == a)),
                         core.ext_write.addr.eq(self.ext_write.addr),
                         core.ext_write.lanes.eq(Mux(self.ext_core == a, self.ext_write.lanes, 0)),
                         core.ext_write.data.eq(self.ext_write.data)]
        # SYNC: the barrier is met when every core is at one (units idle) or has stopped
        barrier = Cat(*(core.sync_ready | ~core.running for core in cores)).all()
        m.d.comb += [core.sync_go.eq(barrier) for core in cores]
        m.d.comb += [self.running.eq(Cat(*(core.running for core in cores)).any()),
                     self.done.eq(self.core_done.all()), self.pc.eq(cores[0].pc),
                     self.error.eq(Cat(*(core.error for core in cores)).any())]
        with m.Switch(self.ext_core):
            for a, core in enumerate(cores):
                with m.Case(a):
                    m.d.comb += [self.ext_read.grant.eq(core.ext_read.grant),
                                 self.ext_read.data.eq(core.ext_read.data),
                                 self.ext_write.grant.eq(core.ext_write.grant)]
        for a in reversed(range(A)):          # the lowest core with an error wins
            with m.If(cores[a].error):
                m.d.comb += [self.error_core.eq(a), self.error_code.eq(cores[a].error_code),
                             self.error_pc.eq(cores[a].error_pc)]
        self._sum_counters(m, cores)
        for c, top in enumerate(channels):
            self._share_channel(m, c, top, cores)

    def _sum_counters(self, m, cores):
        cycles = Signal.like(self.counters.cycles)
        m.d.sync += cycles.eq(cycles + self.running)
        for name in COUNTERS:
            if name == "cycles":
                m.d.comb += self.counters.cycles.eq(cycles)
            else:
                total = _balanced_sum([core.counters[name] for core in cores])
                m.d.comb += self.counters[name].eq(total)

    def _share_channel(self, m, c, top, cores):
        """Core requests -> channel c (tag high bits = core), responses back by tag."""
        cfg = self.config
        shift = _bits(cfg.npu.dma_in_flight)
        tag_bits = cfg.controller.tag_bits
        for kind, layout in (("requests", request_layout(cfg)),
                             ("pim_requests", pim_request_layout(cfg))):
            arbiter = m.submodules[f"{kind}_arbiter{c}"] = StreamArbiter(layout, len(cores))
            for a, core in enumerate(cores):
                wiring.connect(m, getattr(core, kind)[c], arbiter.inputs[a])
            tagged = Signal(layout, name=f"{kind}_tagged{c}")
            m.d.comb += tagged.eq(arbiter.output.payload)
            core_tag = arbiter.grant if kind == "pim_requests" else Cat(
                arbiter.output.payload.tag[:shift], arbiter.grant)
            m.d.comb += tagged.tag.eq(core_tag)
            sink = getattr(top, kind)
            m.d.comb += [sink.valid.eq(arbiter.output.valid), sink.payload.eq(tagged),
                         arbiter.output.ready.eq(sink.ready)]
            if kind == "pim_requests":
                self._lock_pim_sequences(m, c, arbiter)
        depth = cfg.npu.response_buffer
        for kind, by in (("read_responses", shift), ("write_responses", shift),
                         ("pim_responses", 0)):
            source = getattr(top, kind)
            owner = source.payload.tag[by:tag_bits]
            ready = Signal(name=f"{kind}_ready{c}")
            for a, core in enumerate(cores):
                sink = getattr(core, kind)[c]
                mine = owner == a
                payload = Signal.like(sink.payload, name=f"{kind}{c}_core{a}")
                if depth and kind != "pim_responses":
                    m.d.comb += [payload.eq(source.payload),
                                 payload.tag.eq(source.payload.tag[:by])]
                    buffered = self._response_buffer(m, f"{kind}{c}_buffer{a}", payload, depth)
                    m.d.comb += [buffered.w_en.eq(source.valid & mine),
                                 sink.valid.eq(buffered.r_rdy),
                                 buffered.r_en.eq(sink.ready)]
                    m.d.comb += sink.payload.as_value().eq(buffered.r_data)  # data 0 if dropped
                    with m.If(mine):
                        m.d.comb += ready.eq(buffered.w_rdy)
                    continue
                m.d.comb += [payload.eq(source.payload), sink.valid.eq(source.valid & mine),
                             sink.payload.eq(payload)]
                if by:
                    m.d.comb += sink.payload.tag.eq(source.payload.tag[:by])
                else:
                    m.d.comb += sink.payload.tag.eq(0)
                with m.If(mine):
                    m.d.comb += ready.eq(sink.ready)
            m.d.comb += source.ready.eq(ready)

    def _response_buffer(self, m, name, payload, depth):
        """A FIFO of ``depth`` responses for one (channel, core) pair; timing-only keeps
        the tag and drops the data (zero, as a timing-only bank returns)."""
        keep = payload.as_value()
        if not self.config.datapath and "data" in payload.shape().members:
            keep = payload.tag
        fifo = m.submodules[name] = SyncFIFO(width=len(keep), depth=depth)
        m.d.comb += fifo.w_data.eq(keep)
        return fifo

    @staticmethod
    def _lock_pim_sequences(m, c, arbiter):
        """A channel's PIM serves one core's sequence at a time (one global buffer, one
        row set): a GWRITE or a HEADER locks the arbiter to its core until the last of
        the HEADER's GEMVs has passed."""
        lock = Signal(name=f"pim_lock{c}")
        remaining = Signal(range(1026), name=f"pim_gemvs_left{c}")
        out = arbiter.output
        m.d.comb += arbiter.lock.eq(lock)
        with m.If(out.valid & out.ready):
            with m.Switch(out.payload.op):
                with m.Case(PimOp.GWRITE):
                    m.d.sync += lock.eq(1)
                with m.Case(PimOp.HEADER):
                    m.d.sync += [remaining.eq(out.payload.gemvs), lock.eq(out.payload.gemvs != 0)]
                with m.Case(PimOp.GEMV):
                    m.d.sync += [remaining.eq(remaining - (remaining != 0)),
                                 lock.eq(remaining > 1)]


def _balanced_sum(values):
    if len(values) == 1:
        return values[0]
    half = len(values) // 2
    return _balanced_sum(values[:half]) + _balanced_sum(values[half:])
