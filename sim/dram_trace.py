"""DRAMsim3-format memory traces: ``0xADDR READ|WRITE CYCLE``, one 64-byte request a line.

The address is split by the configuration's address map (``AddressMap.decode``); its
channel bits pick the channel. Blank lines and ``#`` comments are skipped. Any line that
cannot be served stops parsing with :class:`TraceError`, which names the line."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rtl.config import DeviceConfig


class TraceError(ValueError):
    def __init__(self, path, line: int, reason: str):
        super().__init__(f"{path}:{line}: {reason}")
        self.line = line
        self.reason = reason


@dataclass(frozen=True)
class TraceRequest:
    line: int
    write: bool
    channel: int
    rank: int
    bankgroup: int
    bank: int
    row: int
    column: int
    cycle: int

    def as_row(self) -> list[int]:
        """The form the replay testbench reads: [write, rank, bg, bank, row, column, cycle]."""
        return [int(self.write), self.rank, self.bankgroup, self.bank, self.row, self.column,
                self.cycle]


KINDS = {"READ": False, "WRITE": True}


def parse_lines(lines, config: DeviceConfig, path="<trace>") -> list[TraceRequest]:
    g = config.geometry
    amap = config.address_map
    capacity = g.capacity_bytes
    requests = []
    for number, text in enumerate(lines, 1):
        body = text.split("#", 1)[0].strip()
        if not body:
            continue
        parts = body.split()
        if len(parts) != 3:
            raise TraceError(path, number, f"expected '0xADDR READ|WRITE CYCLE', got "
                             f"{len(parts)} field(s): {text.strip()!r}")
        word, kind, when = parts
        try:
            address = int(word, 16) if word.lower().startswith("0x") else int(word, 10)
        except ValueError:
            raise TraceError(path, number, f"address {word!r} is not a number") from None
        if kind.upper() not in KINDS:
            raise TraceError(path, number, f"command {kind!r} is neither READ nor WRITE")
        try:
            cycle = int(when, 10)
        except ValueError:
            raise TraceError(path, number, f"cycle {when!r} is not an integer") from None
        if cycle < 0:
            raise TraceError(path, number, f"cycle {cycle} is negative")
        if address < 0:
            raise TraceError(path, number, f"address {word} is negative")
        if address % g.burst_bytes:
            raise TraceError(path, number, f"address {word} is not aligned to a "
                             f"{g.burst_bytes}-byte request")
        if address >= capacity:
            raise TraceError(path, number, f"address {word} is beyond the capacity of "
                             f"{capacity:#x} bytes ({g.channels} channel(s) x {g.banks} banks x "
                             f"{g.rows} rows x {g.row_bytes} B)")
        fields = amap.decode(g, address)
        requests.append(TraceRequest(number, KINDS[kind.upper()], fields["channel"],
                                     fields["rank"], fields["bankgroup"], fields["bank"],
                                     fields["row"], fields["column"], cycle))
    return requests


def parse_file(path, config: DeviceConfig) -> list[TraceRequest]:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise TraceError(path, 0, f"cannot read the trace: {error.strerror}") from None
    return parse_lines(text.splitlines(), config, path)
