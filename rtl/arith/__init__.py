"""Bit-exact floating-point arithmetic components (see :mod:`rtl.arith.fp`)."""

from .fp import CANONICAL_NAN16, CANONICAL_NAN32, FP16Multiplier, FP32Adder, FP32ToFP16
from .lanes import ArithLanes
from .pipelined import PipelinedFP16Multiplier, PipelinedFP32Adder, PipelinedFP32ToFP16

__all__ = ["ArithLanes", "FP16Multiplier", "FP32Adder", "FP32ToFP16", "CANONICAL_NAN16", "CANONICAL_NAN32",
           "PipelinedFP16Multiplier", "PipelinedFP32Adder", "PipelinedFP32ToFP16"]
