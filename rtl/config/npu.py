"""NPU: weight-stationary systolic arrays and vector units (NEUPIMS.md 3)."""
from __future__ import annotations

from dataclasses import dataclass

from .errors import require_positive_ints


@dataclass(frozen=True)
class NpuConfig:
    arrays: int = 8
    array_rows: int = 128
    array_cols: int = 128
    vector_lanes: int = 128

    def __post_init__(self):
        require_positive_ints(self, ("arrays", "array_rows", "array_cols", "vector_lanes"))

    @property
    def macs_per_cycle(self) -> int:
        return self.arrays * self.array_rows * self.array_cols

    def tile_latency(self, k: int) -> int:
        """Reference model's tile latency: H + W - 2 + max(K, 4)."""
        return self.array_rows + self.array_cols - 2 + max(k, 4)
