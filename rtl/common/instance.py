"""One Verilog module for many identical sub-blocks: an ``Instance`` with the interface of a
prototype component (whose Verilog is emitted once, by the caller's ``verilog_modules``)."""
from amaranth.hdl import ClockSignal, Instance, ResetSignal, Value
from amaranth.lib.wiring import In

__all__ = ["shared_instance"]


def shared_instance(m, name: str, module: str, prototype, clocked: bool = True):
    """Add ``Instance(module)`` named ``name`` to ``m``, its ports those of ``prototype``'s
    signature flattened the way Amaranth names a top module's ports (``a__b__c``, plus
    ``clk``/``rst`` when ``clocked``); return an interface like ``prototype``'s to connect
    to (``wiring.connect`` and ``.eq`` work on it as on the component)."""
    iface = prototype.signature.create(path=(name,))
    ports = {"i_clk": ClockSignal(), "i_rst": ResetSignal()} if clocked else {}
    for path, member, value in prototype.signature.flatten(iface):
        port = "__".join(map(str, path))
        ports[f"{'i' if member.flow is In else 'o'}_{port}"] = Value.cast(value)
    m.submodules[name] = Instance(module, **ports)
    return iface
