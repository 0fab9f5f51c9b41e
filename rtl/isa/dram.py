"""DRAM and PIM bus commands (NEUPIMS.md 2.3).

One command per clock crosses the channel's command bus. ``Command`` is the software
form (testbenches, checker, compiler); ``command_layout`` the hardware form.
"""
from __future__ import annotations

from amaranth.lib import enum
from typing import NamedTuple

from amaranth.hdl import Cat, Const, Value
from amaranth.lib import data


class Opcode(enum.Enum, shape=4):
    NOP = 0
    ACT = 1             # open a row in a bank's MEM buffer
    RD = 2              # read one burst from the open MEM row
    WR = 3              # write one burst to the open MEM row
    PRE = 4             # close a bank's MEM buffer
    REF = 5             # all-bank refresh of the channel
    GWRITE = 6          # copy the bank's open MEM row into the channel's global buffer
    G_ACT = 7           # open one row in the PIM buffers of a bank group
    COMP = 8            # all banks: acc += dot(row chunk, global buffer chunk)
    READRES = 9         # all banks: read the accumulators (one FP16 per bank), clear them
    PIM_GEMV = 10       # composite: `comps` COMPs from `column`, then one READRES
    PIM_PRECHARGE = 11  # close a bank's PIM buffer


#: Commands on the PIM side of a bank (PIM row buffer and PIM unit).
PIM_OPCODES = frozenset({Opcode.G_ACT, Opcode.COMP, Opcode.READRES, Opcode.PIM_GEMV,
                         Opcode.PIM_PRECHARGE})
#: Commands addressed to a single bank.
BANK_OPCODES = frozenset({Opcode.ACT, Opcode.RD, Opcode.WR, Opcode.PRE, Opcode.GWRITE,
                          Opcode.PIM_PRECHARGE})


class Command(NamedTuple):
    """A command as software sees it. ``column`` counts bursts for RD/WR and COMP chunks
    (PIM lanes x 2 bytes) for COMP/PIM_GEMV; ``comps`` is PIM_GEMV's k."""
    op: Opcode
    rank: int = 0
    bankgroup: int = 0
    bank: int = 0
    row: int = 0
    column: int = 0
    comps: int = 0
    cycle: int = -1

    def at(self, cycle: int) -> "Command":
        return self._replace(cycle=cycle)

    def __str__(self) -> str:
        return (f"{self.op.name}(rank={self.rank}, bg={self.bankgroup}, bank={self.bank}, "
                f"row={self.row}, col={self.column}"
                + (f", k={self.comps}" if self.op is Opcode.PIM_GEMV else "") + ")"
                + (f" @{self.cycle}" if self.cycle >= 0 else ""))


def _bits(count: int) -> int:
    return max(1, (count - 1).bit_length())


def command_layout(config) -> data.StructLayout:
    """Hardware layout of a command for ``config`` (a DeviceConfig)."""
    g = config.geometry
    comps_per_row = config.bus.comps_per_row
    return data.StructLayout({
        "op": Opcode,
        "rank": _bits(g.ranks),
        "bankgroup": _bits(g.bankgroups),
        "bank": _bits(g.banks_per_group),
        "row": _bits(g.rows),
        "column": _bits(max(g.bursts_per_row, comps_per_row)),
        "comps": _bits(comps_per_row + 1),
    })


def command_value(config, **fields) -> Value:
    """A whole command as one value (fields not given are 0), for ``cmd.eq(...)``.

    Assigning a whole command in each branch keeps every bit of a conditionally driven
    command in one combinational process; Verilator ignores a process that assigns only
    constants (left-over fields), which would leave those bits undriven."""
    parts = []
    for name, field in command_layout(config):
        value = Value.cast(fields.pop(name, 0)).as_unsigned()
        width = field.width
        parts.append(value[:width] if len(value) >= width
                     else Cat(value, Const(0, width - len(value))))
    if fields:
        raise TypeError(f"unknown command fields: {', '.join(fields)}")
    return Cat(*parts)


def encode_command(config, command: Command) -> int:
    """Pack a Command into the integer value of ``command_layout(config)``."""
    layout = command_layout(config)
    value = 0
    for name in ("op", "rank", "bankgroup", "bank", "row", "column", "comps"):
        fld = layout[name]
        raw = getattr(command, name)
        raw = raw.value if name == "op" else raw
        width = fld.width
        if not 0 <= raw < (1 << width):
            raise ValueError(f"{command}: field {name}={raw} does not fit in {width} bits")
        value |= raw << fld.offset
    return value


def command_decoder(config):
    """A function ``(value, cycle) -> Command`` decoding ``command_layout(config)`` values
    (the field table computed once: for monitors that decode every command)."""
    table = tuple((name, field.offset, (1 << field.width) - 1)
                  for name, field in command_layout(config))

    def decode(value: int, cycle: int = -1) -> Command:
        fields = {name: (value >> offset) & mask for name, offset, mask in table}
        fields["op"] = Opcode(fields["op"])
        return Command(cycle=cycle, **fields)
    return decode


def decode_command(config, value: int, cycle: int = -1) -> Command:
    return command_decoder(config)(value, cycle)
