"""Golden model of the PIM GEMV units, in the hardware's order of operations.

Per COMP, each bank multiplies ``lanes`` FP16 pairs exactly into FP32, sums them with a
pairwise tree (level 1: (0,1), (2,3), ...), and adds the tree to its accumulator:
``acc = acc + tree``. READRES rounds the accumulator to FP16 (RNE) and clears it.
"""
from __future__ import annotations

import numpy as np

from .fp import fp16_mul, fp32_add, fp32_to_fp16


def tree_sum(products: np.ndarray) -> np.ndarray:
    """Pairwise FP32 sum over the last axis (a power of two), bit patterns in and out."""
    values = products
    while values.shape[-1] > 1:
        values = fp32_add(values[..., 0::2], values[..., 1::2])
    return values[..., 0]


def comp(acc: np.ndarray, rows: np.ndarray, vector: np.ndarray) -> np.ndarray:
    """One COMP: ``rows`` (banks x lanes, FP16 bits), ``vector`` (lanes,) -> new acc (FP32 bits)."""
    return fp32_add(acc, tree_sum(fp16_mul(rows, vector[None, :])))


def gemv(rows: np.ndarray, vector: np.ndarray, lanes: int, start: int = 0, comps: int | None = None) -> np.ndarray:
    """PIM_GEMV over ``comps`` chunks from chunk ``start``.

    ``rows``: banks x row_elements FP16 bit patterns (the open PIM row of each bank);
    ``vector``: row_elements FP16 bit patterns (the global buffer).
    Returns one FP16 bit pattern per bank.
    """
    rows = np.asarray(rows, dtype=np.uint16)
    vector = np.asarray(vector, dtype=np.uint16)
    total = rows.shape[1] // lanes
    comps = total - start if comps is None else comps
    if not 0 <= start and start + comps <= total:
        raise ValueError(f"chunks {start}..{start + comps - 1} exceed the row's {total} chunks")
    acc = np.zeros(rows.shape[0], dtype=np.uint32)
    for chunk in range(start, start + comps):
        span = slice(chunk * lanes, (chunk + 1) * lanes)
        acc = comp(acc, rows[:, span], vector[span])
    return fp32_to_fp16(acc)
