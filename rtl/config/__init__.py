"""One configuration object for every size of the design.

Plain frozen dataclasses, validated at construction: an impossible combination raises
:class:`ConfigError` naming the field. Derived values are properties, never typed twice.
Facts and defaults come from ``shared/spec/NEUPIMS.md`` (the paper's device).
"""
from .errors import ConfigError
from .dram import REFRESH_RATES, AddressMap, DramGeometry, DramTiming
from .pim import PimUnit, GlobalBuffer, RowBufferMode
from .npu import NpuConfig
from .controller import ControllerConfig, refresh_delay_bound
from .device import DeviceConfig, preset, PRESETS

__all__ = ["ConfigError", "REFRESH_RATES", "AddressMap", "DramGeometry", "DramTiming", "PimUnit", "GlobalBuffer",
           "RowBufferMode", "NpuConfig", "ControllerConfig", "refresh_delay_bound", "DeviceConfig", "preset", "PRESETS"]
