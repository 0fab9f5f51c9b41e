"""Board-level tops: the FPGA self-test."""
from .selftest import SelfTest, SelfTestBoard

__all__ = ["SelfTest", "SelfTestBoard"]
