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
    """
    lanes: int = 16
    input_format: str = "fp16"
    accumulate_format: str = "fp32"

    def __post_init__(self):
        require_positive_ints(self, ("lanes",))
        require(is_power_of_two(self.lanes), "PimUnit.lanes",
                f"the adder tree needs a power of two, got {self.lanes}")
        require(self.input_format == "fp16", "PimUnit.input_format", "only fp16 is modelled")
        require(self.accumulate_format == "fp32", "PimUnit.accumulate_format",
                "only fp32 is modelled")

    @property
    def chunk_bytes(self) -> int:
        """Bytes one COMP reads from a bank row: lanes x FP16."""
        return self.lanes * 2


@dataclass(frozen=True)
class GlobalBuffer:
    """The channel's global buffer: one row of the input vector, filled by GWRITE."""
    rows: int = 1

    def __post_init__(self):
        require_positive_ints(self, ("rows",))
        require(self.rows == 1, "GlobalBuffer.rows", "the modelled device holds one row")
