"""Export the Verilog of the major blocks (``neupims verilog``) and lint it (``neupims lint``).

``export`` writes ``<block>.v`` for each block in :data:`BLOCKS` and ``signals.json``, the
map from each top-level port (Amaranth signature member path, ``a.b``) to its Verilog port
name (``a__b``; a struct- or enum-typed member stays one vector named after the member).
Output is deterministic: the same configuration gives the same bytes.

``lint`` runs ``verilator --lint-only -Wall`` on each exported block with the waivers of
``lint_waivers.vlt`` (rule classes that Amaranth's code generator produces); any warning
left is a failure.
"""
from __future__ import annotations

import json
import re
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from amaranth.hdl import Shape, ShapeCastable
from amaranth.lib import data, wiring

ROOT = Path(__file__).resolve().parent.parent
WAIVERS = ROOT / "lint_waivers.vlt"


def _channel_datapath(config):
    from rtl.channel import ChannelDatapath
    return ChannelDatapath(config)


def _channel_top(config):
    from rtl.channel import ChannelTestTop
    return ChannelTestTop(config)


def _channel_controller(config):
    from rtl.controller import ChannelController
    return ChannelController(config)


def _controller_top(config):
    from rtl.controller import ControllerTop
    return ControllerTop(config)


def _bank(config):
    from rtl.dram import Bank
    return Bank(config)


def _pim_mac(config):
    from rtl.pim import PimMacUnit
    return PimMacUnit.for_config(config)


def _global_buffer(config):
    from rtl.pim import GlobalBufferRtl
    return GlobalBufferRtl(config)


def _systolic_array(config):
    from rtl.npu import SystolicArray
    return SystolicArray(config, shared_modules=True)


def _vector_engine(config):
    from rtl.npu.vector_engine import VectorEngine
    return VectorEngine(config)


def _npu_core(config):
    from rtl.npu.core import NpuCore
    return NpuCore(config, shared_modules=True)


def _device(config):
    from rtl.npu.top import NpuTop
    return NpuTop(config)


# (block = Verilog module and file name, constructor); in export order. ``device`` is the
# whole accelerator: the NPU core on one controller + PIM channel per memory channel.
BLOCKS = [
    ("channel_datapath", _channel_datapath),
    ("channel_top", _channel_top),
    ("channel_controller", _channel_controller),
    ("controller_top", _controller_top),
    ("bank", _bank),
    ("pim_mac", _pim_mac),
    ("global_buffer", _global_buffer),
    ("systolic_array", _systolic_array),
    ("vector_engine", _vector_engine),
    ("npu_core", _npu_core),
    ("device", _device),
]
BLOCK_NAMES = [name for name, _ in BLOCKS]
#: The NPU's blocks (``npu_timing_only``: exported without their datapath).
NPU_BLOCKS = ("systolic_array", "vector_engine", "npu_core", "device")


def _layout_fields(layout, prefix="", base=0) -> dict:
    """Bit fields of a data layout, flattened to dotted names: {name: [offset, width]}."""
    fields = {}
    for name, field in layout:
        path = f"{prefix}{name}"
        offset = base + field.offset
        fields[path] = [offset, field.width]
        shape = field.shape
        if isinstance(shape, ShapeCastable) and not isinstance(shape, data.Layout):
            shape = shape.as_shape() if hasattr(shape, "as_shape") else shape
        if isinstance(shape, data.Layout):
            fields.update(_layout_fields(shape, f"{path}.", offset))
    return fields


def _describe_shape(shape) -> dict:
    info = {}
    if isinstance(shape, data.Layout):
        info["fields"] = _layout_fields(shape)
    elif isinstance(shape, type) and hasattr(shape, "__members__"):  # an Amaranth enum
        info["enum"] = {name: int(member.value) for name, member in shape.__members__.items()}
    return info


def _module_ports(verilog_text: str, module: str) -> list[str]:
    match = re.search(rf"^module {re.escape(module)}\(([^)]*)\);", verilog_text, re.M)
    if not match:
        raise ValueError(f"module {module} not found in its Verilog")
    return [port.strip() for port in match.group(1).split(",") if port.strip()]


def port_map(component, module: str, verilog_text: str) -> dict:
    """Top-level ports of ``component``: member path -> Verilog name, direction, width."""
    ports = {}
    for path, member, value in component.signature.flatten(component):
        name = "__".join(map(str, path))
        shape = member.shape
        entry = {"verilog": name, "direction": "in" if member.flow is wiring.In else "out",
                 "width": Shape.cast(shape).width}
        entry.update(_describe_shape(shape))
        ports[".".join(map(str, path))] = entry
    declared = set(_module_ports(verilog_text, module))
    missing = sorted(entry["verilog"] for entry in ports.values()
                     if entry["verilog"] not in declared)
    if missing:  # a port Amaranth removed or renamed: the map would lie
        raise ValueError(f"{module}: ports not in the Verilog: {', '.join(missing)}")
    extra = sorted(declared - {entry["verilog"] for entry in ports.values()})
    return {"module": module, "ports": ports, "implicit_ports": extra}


def export(config, out: Path, blocks=None, show=None,
           npu_timing_only: bool = False) -> dict[str, Path]:
    """Write ``out/<block>.v`` and ``out/signals.json``; return {block: path of its .v}.
    ``show(line)``, when given, gets one line per block written (lines, seconds).
    ``npu_timing_only``: the :data:`NPU_BLOCKS` as elaborated without their datapath (the
    paper-size NPU's full Verilog is too large for Verilator's lint in 24 GB)."""
    import time
    from sim.harness import to_verilog
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written, signals = {}, {}
    unknown = sorted(set(blocks or ()) - set(BLOCK_NAMES))
    if unknown:
        raise ValueError(f"unknown block(s) {', '.join(unknown)}; choose from "
                         f"{', '.join(BLOCK_NAMES)}")
    chosen = [(block, make) for block, make in BLOCKS if blocks is None or block in blocks]
    for index, (block, make) in enumerate(chosen):
        began = time.perf_counter()
        timing_only = npu_timing_only and block in NPU_BLOCKS
        component = make(config.replace(datapath=False) if timing_only else config)
        text = to_verilog(component, block)
        path = out / f"{block}.v"
        path.write_text(text)
        written[block] = path
        signals[block] = port_map(component, block, text)
        if show:
            show(f"[{index + 1}/{len(chosen)}] wrote {path} ({text.count(chr(10)):,} lines, "
                 f"{time.perf_counter() - began:.1f} s{', timing-only' if timing_only else ''})")
    document = {"config": config.name, "summary": config.summary(), "blocks": signals}
    (out / "signals.json").write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    return written


WARNING = re.compile(r"^%(Warning|Error)")


def lint_file(path: Path, top: str, waivers: Path = WAIVERS) -> list[str]:
    """Warnings and errors Verilator reports on ``path`` (empty: clean)."""
    from sim.harness import tool_env, verilator_root
    command = [str(verilator_root() / "bin" / "verilator"), "--lint-only", "-Wall",
               "--top-module", top, str(waivers), str(path)]
    with tempfile.TemporaryDirectory() as scratch:
        result = subprocess.run(command, env=tool_env(), cwd=scratch, capture_output=True,
                                text=True)
    lines = (result.stdout + result.stderr).splitlines()
    problems = [line for line in lines if WARNING.match(line) and "Exiting due to" not in line]
    if result.returncode != 0 and not problems:
        problems = [f"verilator exited with {result.returncode}"] + lines[-20:]
    return problems


def lint_config(config, out: Path | None = None, blocks=None,
                npu_timing_only: bool = False) -> dict[str, list[str]]:
    """Export ``config`` (into ``out`` or a scratch folder) and lint every block (or the
    ``blocks`` named)."""
    with tempfile.TemporaryDirectory() as scratch:
        written = export(config, Path(out) if out else Path(scratch), blocks=blocks,
                         npu_timing_only=npu_timing_only)
        with ThreadPoolExecutor(max_workers=len(written)) as pool:
            futures = {block: pool.submit(lint_file, path, block)
                       for block, path in written.items()}
            return {block: future.result() for block, future in futures.items()}


def run(configs, out: Path | None = None, show=print, blocks=None,
        npu_timing_only: bool = False) -> int:
    """Lint each configuration; print per block; return the number of warnings left."""
    total = 0
    for config in configs:
        results = lint_config(config, Path(out) / config.name if out else None, blocks,
                              npu_timing_only)
        for block, problems in results.items():
            if problems:
                total += len(problems)
                show(f"{config.name}/{block}: {len(problems)} warning(s)")
                for line in problems:
                    show(f"  {line}")
            else:
                show(f"{config.name}/{block}: OK")
    return total
