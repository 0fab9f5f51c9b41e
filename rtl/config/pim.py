"""PIM unit and global buffer (NEUPIMS.md 2)."""
from __future__ import annotations

import enum
from dataclasses import dataclass

from .errors import require, require_positive_ints, is_power_of_two


class RowBufferMode(enum.Enum):
    """How a bank's row buffers are organised."""
    DUAL = "dual"          # NeuPIMs: separate MEM and PIM row buffers
    BLOCKED = "blocked"    # Newton-style: one buffer, PIM locks the bank
    DRAM = "dram"          # no PIM at all


@dataclass(frozen=True)
class PimUnit:
    """Per-bank GEMV unit: ``lanes`` FP16 multipliers, an FP32 adder tree, an FP32 accumulator.

    The adder tree sums products pairwise: level 1 adds lanes (0,1), (2,3), ...; each
    further level adds neighbouring partial sums; the accumulator adds the tree's result
    to the running sum (acc + tree). The golden model follows the same order.

    Pipelining (for FPGA clock rates; 1 = one clock each, the default, as in every preset
    but ``fpga``): ``mul_stages`` (1..4) clocks per FP16 multiply, ``add_stages`` (1..6) per
    adder-tree level, ``acc_stages`` (1..6) per accumulation, ``round_stages`` (1..2) for
    the FP16 rounding of the READRES result. The accumulation is a loop-carried add, so
    COMPs must come at least ``acc_stages`` clocks apart; READRES results take
    ``mac_latency`` clocks through the unit and the data bus still carries them RL + BL/2
    after READRES (both checked by :func:`check_pim_timing` when a DeviceConfig is made).
    """
    lanes: int = 16
    input_format: str = "fp16"
    accumulate_format: str = "fp32"
    add_stages: int = 1
    acc_stages: int = 1
    mul_stages: int = 1
    round_stages: int = 1

    def __post_init__(self):
        require_positive_ints(self, ("lanes", "add_stages", "acc_stages", "mul_stages",
                                     "round_stages"))
        for name, most in (("add_stages", 6), ("acc_stages", 6), ("mul_stages", 4),
                           ("round_stages", 2)):
            require(getattr(self, name) <= most, f"PimUnit.{name}",
                    f"at most {most} pipeline stages are implemented, got {getattr(self, name)}")
        require(is_power_of_two(self.lanes), "PimUnit.lanes",
                f"the adder tree needs a power of two, got {self.lanes}")
        require(self.input_format == "fp16", "PimUnit.input_format", "only fp16 is modelled")
        require(self.accumulate_format == "fp32", "PimUnit.accumulate_format",
                "only fp32 is modelled")

    @property
    def chunk_bytes(self) -> int:
        """Bytes one COMP reads from a bank row: lanes x FP16."""
        return self.lanes * 2

    @property
    def tree_levels(self) -> int:
        return (self.lanes - 1).bit_length()

    @property
    def mac_latency(self) -> int:
        """Clocks from READRES at the MAC unit to its result: multiply, tree levels,
        accumulate (= ``rtl.pim.PimMacUnit.latency_for``)."""
        return (self.mul_stages + self.tree_levels * self.add_stages + self.acc_stages
                + self.round_stages - 1)


def check_pim_timing(config) -> None:
    """The PIM unit's pipeline against the DRAM timing of ``config`` (a DeviceConfig):
    ConfigError naming the field when COMPs come faster than the accumulator adds, or the
    result cannot be on the data bus RL + BL/2 after READRES."""
    pim, bus, t = config.pim, config.bus, config.timing
    require(pim.acc_stages <= bus.comp_interval or config.mode is RowBufferMode.DRAM,
            "PimUnit.acc_stages",
            f"an accumulation takes {pim.acc_stages} clocks, but COMPs come every "
            f"max(BL/2 = {bus.burst}, DramTiming.tCCD_S = {t.tCCD_S}) = {bus.comp_interval} "
            f"clocks: raise DramTiming.tCCD_S (and tCCD_L) to {pim.acc_stages} or lower "
            f"acc_stages")
    latency = 1 + pim.mac_latency     # + the bank's storage read
    require(latency <= bus.read_data, "PimUnit.add_stages",
            f"a READRES result takes {latency} clocks through the bank (mul_stages "
            f"{pim.mul_stages} + {pim.tree_levels} levels x add_stages {pim.add_stages} + "
            f"acc_stages {pim.acc_stages} + round_stages {pim.round_stages} - 1 + 1), more "
            f"than the RL + BL/2 = {bus.read_data} clocks after which it is due on the data "
            f"bus (DramTiming.CL)")


@dataclass(frozen=True)
class GlobalBuffer:
    """The channel's global buffer: one row of the input vector, filled by GWRITE."""
    rows: int = 1

    def __post_init__(self):
        require_positive_ints(self, ("rows",))
        require(self.rows == 1, "GlobalBuffer.rows", "the modelled device holds one row")
