"""DRAMsim3 trace parsing: address split by the address map, and bad lines named."""
import pytest

from rtl.config import preset
from sim.dram_trace import TraceError, parse_lines

CONFIG = preset("channel")


def test_parses_addresses_through_the_address_map():
    g, amap = CONFIG.geometry, CONFIG.address_map
    address = amap.encode(g, row=5, rank=1, bankgroup=2, bank=3, column=7)
    requests = parse_lines(["# comment", "", f"{address:#x} WRITE 12", "0x40 read 3"], CONFIG)
    first, second = requests
    assert (first.line, first.write, first.rank, first.bankgroup, first.bank, first.row,
            first.column, first.cycle) == (3, True, 1, 2, 3, 5, 7, 12)
    assert (second.write, second.column, second.row) == (False, 1, 0)


@pytest.mark.parametrize("line, reason", [
    ("0x40 READ", "expected '0xADDR READ|WRITE CYCLE'"),
    ("0xZZ READ 1", "is not a number"),
    ("0x40 FETCH 1", "neither READ nor WRITE"),
    ("0x40 READ soon", "is not an integer"),
    ("0x40 READ -1", "negative"),
    ("0x41 READ 1", "not aligned"),
    (f"{1 << 30:#x} READ 1", "beyond the capacity"),
])
def test_bad_lines_stop_with_the_line_number(line, reason):
    with pytest.raises(TraceError) as error:
        parse_lines(["0x0 READ 0", line], CONFIG, "t.trace")
    assert error.value.line == 2
    assert str(error.value).startswith("t.trace:2: ")
    assert reason in str(error.value)


def test_channel_bits_pick_the_channel():
    config = preset("neupims")
    g, amap = config.geometry, config.address_map
    address = amap.encode(g, channel=17, row=3)
    (request,) = parse_lines([f"{address:#x} READ 0"], config)
    assert request.channel == 17 and request.row == 3
