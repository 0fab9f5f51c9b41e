"""The per-channel memory controller (NEUPIMS.md 2.4)."""
from .controller import ChannelController, CommandSource, ControllerError
from .interface import (COUNTERS, PimOp, pim_request_layout, pim_response_layout,
                        read_response_layout, request_layout, write_response_layout)
from .refresher import RefreshRate
from .top import ControllerTop

__all__ = ["ChannelController", "CommandSource", "ControllerError", "ControllerTop", "COUNTERS", "PimOp",
           "RefreshRate",
           "request_layout", "read_response_layout", "write_response_layout",
           "pim_request_layout", "pim_response_layout"]
