"""The row-buffer mode as a run-time input: DUAL (NeuPIMs) and BLOCKED (the Newton-like
single buffer) are one design with a ``blocked`` input, so both baselines run on one
Verilator build; DRAM (no PIM) is elaborated apart."""
from amaranth.lib.wiring import In

from ..config.pim import RowBufferMode

__all__ = ["blocked_input"]


def blocked_input(config) -> In:
    """The ``blocked`` input of a block with row buffers: high for one shared row buffer
    (PIM locks the bank). Its reset value follows ``config.mode`` so that a block
    simulated alone behaves as configured; a parent drives it from its own input."""
    return In(1, init=int(config.mode is RowBufferMode.BLOCKED))
