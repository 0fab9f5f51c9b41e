"""The device configuration and its named presets."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from .controller import ControllerConfig, refresh_delay_bound
from .dram import REFRESH_RATES, AddressMap, BusTiming, DramGeometry, DramTiming
from .errors import ConfigError, require, require_positive_ints, is_power_of_two
from .npu import NpuConfig
from .pim import GlobalBuffer, PimUnit, RowBufferMode, check_pim_timing


@dataclass(frozen=True)
class DeviceConfig:
    """Everything that sizes the hardware; flows from the CLI to RTL, compiler and reports.

    ``stored_rows`` is a property of the model, not of the device: how many rows per bank
    the RTL keeps real storage for (rows 0 .. stored_rows-1). Full-size contents live in
    the testbench; a command to a row beyond the stored window is flagged as an error,
    unless ``wrap_rows`` is set: then rows alias modulo the window (for timing-only runs
    such as trace replay, where data contents do not matter).

    ``datapath``: True (the default) elaborates the full RTL. False elaborates a
    *timing-only* model of the same RTL (DESIGN.md contract 5): every component keeps its
    control, timing, counters and stream handshakes, but not the arithmetic and storage
    that only carry data values (systolic PEs, vector lanes, PIM MAC units, bank, global
    buffer, scratchpad and accumulator storage, the data lines of the buses). Every
    cycle, command and counter is the same as with the full RTL for the same program;
    every data value (memory reads, results) is zero. For the full-scale figures.

    ``refresh_rate``: 1, 2 or 4 (``REFRESH_RATES``): the controllers refresh every
    ``tREFI // refresh_rate`` clocks (:attr:`refresh_interval`). A run-time setting, not
    a size: the RTL has every rate (the controllers' ``refresh_rate`` input, set by the
    testbench at reset), so the elaborated Verilog does not depend on it.
    """
    name: str = "custom"
    geometry: DramGeometry = field(default_factory=DramGeometry)
    address_map: AddressMap = field(default_factory=AddressMap)
    timing: DramTiming = field(default_factory=DramTiming)
    pim: PimUnit = field(default_factory=PimUnit)
    global_buffer: GlobalBuffer = field(default_factory=GlobalBuffer)
    npu: NpuConfig = field(default_factory=NpuConfig)
    controller: ControllerConfig = field(default_factory=ControllerConfig)
    mode: RowBufferMode = RowBufferMode.DUAL
    stored_rows: int = 8
    wrap_rows: bool = False
    datapath: bool = True
    refresh_rate: int = 1

    def __post_init__(self):
        if isinstance(self.mode, str):
            modes = [m.value for m in RowBufferMode]
            require(self.mode in modes, "DeviceConfig.mode",
                    f"unknown mode {self.mode!r}; choose one of {', '.join(modes)}")
            object.__setattr__(self, "mode", RowBufferMode(self.mode))
        self.address_map.validate(self.geometry)
        require_positive_ints(self, ("stored_rows",))
        require(isinstance(self.datapath, bool), "DeviceConfig.datapath",
                f"must be True or False, got {self.datapath!r}")
        require(is_power_of_two(self.stored_rows), "DeviceConfig.stored_rows",
                f"must be a power of two, got {self.stored_rows}")
        require(self.stored_rows <= self.geometry.rows, "DeviceConfig.stored_rows",
                f"{self.stored_rows} exceeds the {self.geometry.rows} rows of a bank")
        require(self.geometry.row_bytes % self.pim.chunk_bytes == 0, "PimUnit.lanes",
                f"a row of {self.geometry.row_bytes} bytes is not a multiple of a COMP chunk "
                f"({self.pim.lanes} lanes x 2 bytes)")
        require(self.geometry.burst_bytes % self.pim.chunk_bytes == 0, "PimUnit.lanes",
                f"a COMP chunk ({self.pim.chunk_bytes} B) must divide a burst "
                f"({self.geometry.burst_bytes} B)")
        require(self.geometry.banks * 2 <= self.geometry.burst_bytes
                or self.mode is RowBufferMode.DRAM, "DramGeometry.banks",
                f"READRES returns one FP16 per bank in one burst: {self.geometry.banks} banks "
                f"do not fit a {self.geometry.burst_bytes}-byte burst")
        require(self.npu.word_bytes % self.geometry.burst_bytes == 0, "NpuConfig.word_bytes",
                f"{self.npu.word_bytes} is not a multiple of the {self.geometry.burst_bytes}-byte "
                f"DRAM burst")
        require(self.npu.dma_responses <= self.geometry.channels, "NpuConfig.dma_responses",
                f"{self.npu.dma_responses} read responses per clock need as many channels, "
                f"the device has {self.geometry.channels}")
        require(self.refresh_rate in REFRESH_RATES, "DeviceConfig.refresh_rate",
                f"must be one of {', '.join(map(str, REFRESH_RATES))}, got {self.refresh_rate!r}")
        t = self.timing
        require(self.refresh_interval > t.tRFC + t.refresh_max_late, "DeviceConfig.refresh_rate",
                f"{self.refresh_rate}x refresh leaves an interval of {self.refresh_interval} "
                f"clocks, not more than tRFC + refresh_max_late = {t.tRFC + t.refresh_max_late}")
        check_pim_timing(self)      # the PIM MAC pipeline against COMP spacing and RL
        bound = refresh_delay_bound(self)
        require(bound <= self.timing.refresh_max_late, "DramTiming.refresh_max_late",
                f"{self.timing.refresh_max_late} is below the controller's refresh delay "
                f"bound of {bound} clocks")

    @property
    def refresh_interval(self) -> int:
        """Clocks from one all-bank REF to the next one's due time at ``refresh_rate``."""
        return self.timing.tREFI // self.refresh_rate

    @property
    def bus(self) -> BusTiming:
        return BusTiming(self.timing, self.geometry, self.pim.lanes)

    def replace(self, **changes) -> "DeviceConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["mode"] = self.mode.value
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> "DeviceConfig":
        data = dict(data)
        parts = {"geometry": DramGeometry, "timing": DramTiming, "pim": PimUnit,
                 "global_buffer": GlobalBuffer, "npu": NpuConfig, "controller": ControllerConfig}
        for key, kind in parts.items():
            if key in data:
                data[key] = kind(**data[key])
        if "address_map" in data:
            data["address_map"] = AddressMap(order=tuple(data["address_map"]["order"]))
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> "DeviceConfig":
        return cls.from_dict(json.loads(text))

    def summary(self) -> str:
        g, p = self.geometry, self.pim
        return (f"{self.name}: {g.channels} ch x {g.banks} banks ({g.ranks} ranks x "
                f"{g.bankgroups} bank groups x {g.banks_per_group}), {g.rows} rows x "
                f"{g.row_bytes} B, {p.lanes} PIM lanes/bank, mode {self.mode.value}, "
                f"{self.timing.clock_hz / 1e9:g} GHz"
                + ("" if self.refresh_rate == 1 else f", {self.refresh_rate}x refresh")
                + ("" if self.datapath else ", timing-only (no datapath)"))


#: The paper's NPU: 8 cores, each a 128 x 128 array with a 128-lane vector unit. Scratchpad
#: words of 512 bytes (8 bursts) so that an array row of 128 FP32 results and the vector
#: unit's 128 FP32 lanes fit one word; 8 DMA requests in flight per core and channel, so
#: the 8 cores' tags (8 x 8) fit the controller's 64; two weight buffers per PE (the
#: reference model hides each pass's weight preload under the pass before); a DMA that
#: takes two read responses per clock (8 cores x 2 x 64 bytes: the 32 channels' peak)
#: through 4-deep response buffers per channel and core (no head-of-line blocking), and
#: takes a command while others still issue to other channels (``dma_overlap``).
PAPER_NPU = NpuConfig(word_bytes=512, dma_in_flight=8, weight_buffers=2, response_buffer=4,
                      dma_responses=2, dma_overlap=True)


def _neupims() -> DeviceConfig:
    """The paper's device (NEUPIMS.md 3): 32 channels of 32 banks, 8 arrays of 128 x 128,
    128-lane vector units (:data:`PAPER_NPU`)."""
    return DeviceConfig(name="neupims", npu=PAPER_NPU)


def _channel() -> DeviceConfig:
    """One channel of the paper's device (32 banks x 16 lanes), few stored rows (a DMA
    response per clock: one channel gives no more)."""
    return DeviceConfig(name="channel", geometry=DramGeometry(channels=1),
                        npu=dataclasses.replace(PAPER_NPU, dma_responses=1),
                        stored_rows=8)


def _small() -> DeviceConfig:
    """8 banks, 16 lanes, 512-byte rows: quick system tests."""
    return DeviceConfig(name="small",
                        geometry=DramGeometry(channels=1, ranks=2, bankgroups=2, banks_per_group=2,
                                              rows=1024, columns=32),
                        npu=NpuConfig(arrays=1, array_rows=8, array_cols=8, vector_lanes=8),
                        stored_rows=4)


def _tiny() -> DeviceConfig:
    """4 banks, 4 lanes, 128-byte rows: unit tests and FPGA self-test."""
    return DeviceConfig(name="tiny",
                        geometry=DramGeometry(channels=1, ranks=1, bankgroups=2, banks_per_group=2,
                                              rows=256, columns=8),
                        pim=PimUnit(lanes=4),
                        npu=NpuConfig(arrays=1, array_rows=4, array_cols=4, vector_lanes=4),
                        stored_rows=4)


def _decode() -> DeviceConfig:
    """LLM decode steps on the RTL (``sim.decode``): the ``small`` channel (8 banks = 2
    ranks x 2 bank groups x 2, 16 PIM lanes, 512-byte rows of 8 bursts, 1024 rows) on two
    channels, with 512 stored rows per bank (2 MiB of stored HBM per channel).

    Address map (MSB first) row, column, channel, rank, bankgroup, bank, offset: the bank
    bits are the lowest above the byte offset, so burst ``column`` of all 8 banks of a
    channel is 512 contiguous bytes, followed by the same column of the other channel;
    consecutive bursts of one bank are ``channels x banks x 64`` = 1 KiB apart. The NPU:
    one 8 x 8 array, 8 vector lanes (the built-in vector engine), 8192 scratchpad words
    (512 KiB) and 8192 instructions."""
    return DeviceConfig(name="decode",
                        geometry=DramGeometry(channels=2, ranks=2, bankgroups=2, banks_per_group=2,
                                              rows=1024, columns=32),
                        address_map=AddressMap(order=("row", "column", "channel", "rank",
                                                      "bankgroup", "bank", "offset")),
                        npu=NpuConfig(arrays=1, array_rows=8, array_cols=8, vector_lanes=8,
                                      scratchpad_words=8192, instruction_words=8192),
                        stored_rows=512)


def _fpga() -> DeviceConfig:
    """The ``tiny`` preset with a pipelined PIM MAC unit, for the FPGA self-test (``make
    synth``, ``make bitstream``; aimed at 100 MHz, 60.8 MHz measured, see README "FPGA
    synthesis"): 3-clock multipliers (operands registered first), 5-clock tree adds and
    accumulator, 2-clock FP16 rounding of the result (``PimUnit.*_stages``). A 5-clock
    accumulation needs COMPs 5 clocks apart, so tCCD_S = tCCD_L = 5 (tiny: 1 and 2, COMPs
    every BL/2 = 2 clocks); a READRES result's way through the bank (``mac_latency`` + 1)
    fits RL + BL/2 with CL = 18 (tiny: 14). Every other parameter is tiny's."""
    tiny = _tiny()
    return tiny.replace(name="fpga",
                        pim=dataclasses.replace(tiny.pim, mul_stages=3, add_stages=5,
                                                acc_stages=5, round_stages=2),
                        timing=dataclasses.replace(tiny.timing, tCCD_S=5, tCCD_L=5, CL=18))


PRESETS = {"neupims": _neupims, "channel": _channel, "small": _small, "tiny": _tiny,
           "decode": _decode, "fpga": _fpga}


def preset(name: str, **changes) -> DeviceConfig:
    """A named preset, optionally with fields replaced (e.g. ``mode="blocked"``)."""
    if name not in PRESETS:
        raise ConfigError("preset", f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    config = PRESETS[name]()
    return config.replace(**changes) if changes else config
