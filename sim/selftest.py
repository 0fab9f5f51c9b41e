"""Contents of the FPGA self-test's ROMs (``rtl.board.SelfTest``), computed here because
rtl/ does no file I/O and no numpy.

The test is a GEMV on one channel, built by ``sim.programs.gemv_program``: matrix rows are
loaded by backdoor into every bank, the vector is written with WR and copied into the
global buffer with GWRITE, then each row set is opened (G_ACT), multiplied tile by tile
(PIM_GEMV, one FP16 result per bank) and closed. Finally the vector row is read back with
RD, so the WR path is checked too. Expected bursts: the golden model's results
(``sim.golden.pim.gemv``) and the vector's bursts, each at the cycle the timing predicts.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rtl.isa import encode_command
from sim.golden.pim import gemv
from sim.programs import gemv_program, read_row


@dataclass
class SelfTestImage:
    """What ``SelfTest(config, **image.rtl_args())`` needs, plus the program for reports."""
    config: object
    backdoor: list      # (bank, address, burst)
    program: list       # (cycle, encoded command)
    wdata: list         # bursts of the WR commands, in order
    expected: list      # (cycle, is PIM result, burst), in bus order
    end: int            # cycle (from the player's cycle 0) at which the check ends
    commands: list      # the Commands, for humans

    def rtl_args(self) -> dict:
        return {"backdoor": self.backdoor, "program": self.program, "wdata": self.wdata,
                "expected": self.expected, "end": self.end}

    def corrupted(self, index: int = 0, bit: int = 0) -> "SelfTestImage":
        """The same image with one bit of expected burst ``index`` flipped: must fail."""
        expected = list(self.expected)
        cycle, pim, burst = expected[index]
        expected[index] = (cycle, pim, burst ^ (1 << bit))
        return SelfTestImage(self.config, self.backdoor, self.program, self.wdata, expected,
                             self.end, self.commands)


def _pack(values) -> int:
    return int.from_bytes(np.asarray(values, dtype=np.uint16).tobytes(), "little")


def _finite_fp16(rng, shape):
    """Moderate random FP16 values (sums stay ordinary numbers)."""
    return rng.standard_normal(shape).astype(np.float16).view(np.uint16)


def _default_tiles(config):
    per_row = config.bus.comps_per_row
    if per_row > 3:   # one long tile and one shorter than comp_min_slots
        return [(0, per_row - 3), (per_row - 3, 3)]
    return [(0, per_row)]


def selftest_image(config, seed: int = 1, row_sets=None, tiles=None) -> SelfTestImage:
    """ROM contents of a self-test GEMV for ``config``; rows ``row_sets`` (default: every
    stored row but the last, which holds the vector) times a vector."""
    g = config.geometry
    vector_row = config.stored_rows - 1
    row_sets = list(range(max(1, vector_row))) if row_sets is None else list(row_sets)
    tiles = _default_tiles(config) if tiles is None else list(tiles)
    rng = np.random.default_rng(seed)
    per_burst = g.burst_bytes // 2

    def bursts(row):
        return [_pack(row[i:i + per_burst]) for i in range(0, len(row), per_burst)]

    matrix = {row: _finite_fp16(rng, (g.banks, g.row_elements)) for row in dict.fromkeys(row_sets)}
    vector = _finite_fp16(rng, g.row_elements)
    backdoor = [(bank, row * g.bursts_per_row + index, burst)
                for row, values in matrix.items() for bank in range(g.banks)
                for index, burst in enumerate(bursts(values[bank]))]

    program = gemv_program(config, bursts(vector), vector_row, row_sets, tiles)
    t = config.timing
    read_row(program, max(program.end, program.last_data) + t.tRP + 1, 0, vector_row,
             g.bursts_per_row)

    expected = []
    for item in program.expected:
        info = item.info
        if item.kind == "gemv":
            result = gemv(matrix[info["row"]], vector, config.pim.lanes, info["column"],
                          info["comps"])
            expected.append((item.cycle, True, _pack(result)))
        else:
            expected.append((item.cycle, False, bursts(vector)[info["column"]]))
    expected.sort(key=lambda entry: entry[0])
    return SelfTestImage(
        config=config, backdoor=backdoor,
        program=[(c.cycle, encode_command(config, c)) for c in program.commands],
        wdata=list(program.wdata), expected=expected,
        end=max(program.end, program.last_data) + 4, commands=list(program.commands))


def selftest_top(config, seed: int = 1, heartbeat_bits: int = 24, corrupt: bool = False):
    """The ``SelfTest`` component for ``config`` with its ROMs filled."""
    from rtl.board import SelfTest
    image = selftest_image(config, seed)
    if corrupt:
        image = image.corrupted()
    return SelfTest(config, heartbeat_bits=heartbeat_bits, **image.rtl_args())
