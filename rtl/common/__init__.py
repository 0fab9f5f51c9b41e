from .timing import TimingCounter
from .delay import DelayLine
from .recorder import TraceRecorder

__all__ = ["TimingCounter", "DelayLine", "TraceRecorder"]
