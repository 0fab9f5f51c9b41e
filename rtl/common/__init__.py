from .timing import TimingCounter
from .delay import DelayLine
from .recorder import TraceRecorder
from .instance import shared_instance

__all__ = ["TimingCounter", "DelayLine", "TraceRecorder", "shared_instance"]
