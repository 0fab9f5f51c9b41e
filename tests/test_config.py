"""Configuration: presets build, derived values follow the timing table, bad input is
rejected with a message naming the field."""
import pytest

from rtl.config import (ConfigError, DeviceConfig, DramGeometry, DramTiming, NpuConfig, PimUnit,
                        PRESETS, RowBufferMode, preset)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_build_and_round_trip(name):
    config = preset(name)
    assert DeviceConfig.from_json(config.to_json()) == config
    assert config.geometry.banks * 2 <= config.geometry.burst_bytes


def test_neupims_preset_matches_the_paper():
    c = preset("neupims")
    g, t, bus = c.geometry, c.timing, c.bus
    assert (g.channels, g.banks, g.row_bytes, g.burst_bytes) == (32, 32, 1024, 64)
    assert g.capacity_bytes == 32 * 2**30
    assert c.address_map.widths(g) == {"row": 15, "rank": 1, "bankgroup": 2, "bank": 2,
                                       "channel": 5, "column": 4, "offset": 6}
    # Derived values of NEUPIMS.md 2.1/2.3, computed from the base parameters.
    assert t.tRC == t.tRAS + t.tRP
    assert bus.read_data == t.CL + g.burst_length // 2
    assert bus.rd_to_wr == t.CL + g.burst_length // 2 + t.tRTRS - t.CWL
    assert bus.wr_to_pre == t.CWL + g.burst_length // 2 + t.tWR
    assert bus.gwrite_busy == (t.tCCD_S + t.tCCD_L) * (g.row_bytes // c.pim.chunk_bytes)
    assert bus.gemv_busy(8) == bus.comp_interval * (max(8, t.comp_min_slots) + 1)
    assert bus.row_set_open(g.bankgroups) == 3 * t.tFAW + t.tRCDRD
    assert c.npu.macs_per_cycle == 8 * 128 * 128


def test_address_map_round_trip():
    c = preset("neupims")
    fields = {"row": 12345, "rank": 1, "bankgroup": 2, "bank": 3, "channel": 17, "column": 9,
              "offset": 0}
    address = c.address_map.encode(c.geometry, **fields)
    assert c.address_map.decode(c.geometry, address) == fields
    with pytest.raises(ValueError, match="beyond the capacity"):
        c.address_map.decode(c.geometry, c.geometry.capacity_bytes)


BAD = [
    (lambda: DeviceConfig(geometry=DramGeometry(banks_per_group=3)), "DramGeometry.banks_per_group", "address map"),
    (lambda: DeviceConfig(geometry=DramGeometry(channels=24)), "DramGeometry.channels", "address map"),
    (lambda: DramGeometry(columns=62), "DramGeometry.columns", "multiple of the burst"),
    (lambda: DramGeometry(burst_length=3), "DramGeometry.burst_length", "even"),
    (lambda: DramGeometry(rows=0), "DramGeometry.rows", "positive"),
    (lambda: DramTiming(tRRD_L=2), "DramTiming.tRRD_L", ">= tRRD_S"),
    (lambda: DramTiming(tREFI=100), "DramTiming.tREFI", "exceed tRFC"),
    (lambda: DramTiming(CL=-1), "DramTiming.CL", "positive"),
    (lambda: PimUnit(lanes=12), "PimUnit.lanes", "power of two"),
    (lambda: NpuConfig(arrays=0), "NpuConfig.arrays", "positive"),
    (lambda: NpuConfig(response_buffer=-1), "NpuConfig.response_buffer", ">= 0"),
    (lambda: NpuConfig(dma_responses=0), "NpuConfig.dma_responses", "positive"),
    (lambda: DeviceConfig(stored_rows=6), "DeviceConfig.stored_rows", "power of two"),
    (lambda: DeviceConfig(geometry=DramGeometry(rows=4), stored_rows=8), "DeviceConfig.stored_rows",
     "exceeds"),
    (lambda: DeviceConfig(pim=PimUnit(lanes=64)), "PimUnit.lanes", "divide a burst"),
    (lambda: DeviceConfig(geometry=DramGeometry(ranks=4, bankgroups=4, banks_per_group=4)),
     "DramGeometry.banks", "do not fit"),
    (lambda: preset("huge"), "preset", "unknown preset"),
    (lambda: DeviceConfig(mode="quad"), "DeviceConfig.mode", "quad"),
    (lambda: DeviceConfig(refresh_rate=3), "DeviceConfig.refresh_rate", "one of 1, 2, 4"),
    (lambda: DeviceConfig(timing=DramTiming(tREFI=2000), refresh_rate=4),
     "DeviceConfig.refresh_rate", "interval of 500 clocks"),
]


def test_refresh_rate_is_a_run_time_setting():
    """The interval follows the rate; the elaborated controller does not (one build serves
    every rate: the rate is an input); the summary names a rate other than 1x."""
    base = preset("tiny")
    fast = base.replace(refresh_rate=4)
    assert (base.refresh_interval, fast.refresh_interval) == (3900, 975)
    assert "4x refresh" in fast.summary() and "refresh" not in base.summary()
    assert DeviceConfig.from_json(fast.to_json()) == fast
    from rtl.controller import ChannelController
    from sim.harness import to_verilog
    assert to_verilog(ChannelController(base), "c") == to_verilog(ChannelController(fast), "c")
    # likewise the PIM row-buffer mode (the controller's and the banks' ``blocked`` input)
    blocked = base.replace(mode=RowBufferMode.BLOCKED)
    assert to_verilog(ChannelController(base), "c") == to_verilog(ChannelController(blocked), "c")


@pytest.mark.parametrize("build, field, words", BAD, ids=[b[1] or b[2] for b in BAD])
def test_bad_configuration_is_rejected_naming_the_field(build, field, words):
    with pytest.raises(ValueError) as info:
        build()
    if field is not None:
        assert isinstance(info.value, ConfigError) and info.value.field == field
        assert str(info.value).startswith(field)
    assert words in str(info.value)
