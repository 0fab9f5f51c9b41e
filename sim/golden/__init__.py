"""Numpy golden (reference) models."""

from .fp import (
    canonical_nan16,
    canonical_nan32,
    fp16_mul,
    fp32_add,
    fp32_to_fp16,
    special_values16,
    special_values32,
)

__all__ = [
    "canonical_nan16",
    "canonical_nan32",
    "fp16_mul",
    "fp32_add",
    "fp32_to_fp16",
    "special_values16",
    "special_values32",
]
