"""The NPU: weight-stationary systolic arrays, vector units, DMA and the sequencer
(NEUPIMS.md 3)."""
from .systolic import SystolicArray
from .vector import VectorOp, VectorUnit

__all__ = ["SystolicArray", "VectorOp", "VectorUnit"]
