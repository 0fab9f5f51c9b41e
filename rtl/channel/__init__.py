from .datapath import ChannelDatapath, ChannelError
from .player import CommandPlayer
from .testtop import ChannelTestTop

__all__ = ["ChannelDatapath", "ChannelError", "CommandPlayer", "ChannelTestTop"]
