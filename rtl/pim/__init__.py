from .mac import PimMacUnit
from .global_buffer import GlobalBufferRtl

__all__ = ["PimMacUnit", "GlobalBufferRtl"]
