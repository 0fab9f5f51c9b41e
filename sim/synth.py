"""FPGA synthesis reports (``neupims synth``) and the self-test bitstream (``neupims bitstream``).

Target: a Lattice ECP5 LFE5U-85F (the ULX3S-85F board), with the open tool chain from
PyPI (YoWASP: Yosys, nextpnr-ecp5 and ecppack compiled to WebAssembly), so nothing is
installed or set by hand.

``synth`` synthesizes each major block on its own with ``synth_ecp5`` and reads Yosys's
``stat``, then places and routes the whole self-test top (``rtl.board.SelfTest``: the
channel with its player, ROMs and checker) with nextpnr for the maximum clock frequency
and the critical path.

``bitstream`` builds the self-test for the ULX3S-85F through Amaranth's own build system
(``amaranth.build`` + ``amaranth_boards``), pointing it at the YoWASP tools through the
``YOSYS``/``NEXTPNR_ECP5``/``ECPPACK`` variables of the build script's environment.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# The device: LFE5U-85F in the caBGA381 package, speed grade 6 (what the ULX3S-85F carries).
DEVICE = {"part": "LFE5U-85F-6BG381C", "family": "ecp5", "nextpnr_device": "--85k",
          "package": "CABGA381", "speed": 6, "board": "ULX3S-85F",
          # capacity, from nextpnr's utilisation report for --85k
          "capacity": {"luts": 83640, "ffs": 83640, "dsps": 156, "brams": 208}}
TARGET_MHZ = 100.0
# router2: router1 (the default) can circle for tens of minutes on this design's congested
# regions (the 512-bit bursts fan out to every bank) in the WebAssembly build.
NEXTPNR_OPTS = "--router router2"
TOP = "selftest"

# Resource columns: (report key, header, Yosys cell types and the LUT4s each one is worth).
COLUMNS = [("luts", "LUTs", {"LUT4": 1, "CCU2C": 2}),
           ("ffs", "FFs", {"TRELLIS_FF": 1}),
           ("dsps", "DSP (MULT18X18D)", {"MULT18X18D": 1}),
           ("brams", "BRAM (DP16KD)", {"DP16KD": 1}),
           ("lutram", "LUTRAM (DPR16X4)", {"TRELLIS_DPR16X4": 1})]


# The blocks synthesized one by one (constructors: sim.lint.BLOCKS), then the top.
BLOCKS = ["channel_datapath", "bank", "pim_mac", "global_buffer"]


def tool(name: str) -> str:
    """The YoWASP build of ``name`` (yosys, nextpnr-ecp5, ecppack) next to this Python."""
    path = Path(sys.executable).parent / f"yowasp-{name}"
    if path.exists():
        return str(path)
    found = shutil.which(f"yowasp-{name}")
    if found is None:
        raise FileNotFoundError(f"yowasp-{name} not found: run `make setup` (pyproject.toml "
                                f"pins it)")
    return found


def tool_env() -> dict[str, str]:
    """Environment for Amaranth's build scripts: the YoWASP tools in place of system ones."""
    env = dict(os.environ)
    env.update({"YOSYS": tool("yosys"), "NEXTPNR_ECP5": tool("nextpnr-ecp5"),
                "ECPPACK": tool("ecppack")})
    return env


def resources(cells: dict[str, int]) -> dict[str, int]:
    """Resource counts from Yosys's cells by type (after synth_ecp5)."""
    out = {key: sum(cells.get(cell, 0) * weight for cell, weight in kinds.items())
           for key, _, kinds in COLUMNS}
    out["cells"] = {name: count for name, count in sorted(cells.items())
                    if not name.startswith("$")}
    return out


def component(config, block: str):
    if block == TOP:
        from sim.selftest import selftest_top
        return selftest_top(config)
    from sim.lint import BLOCKS as EXPORTED
    return dict(EXPORTED)[block](config)


def write_verilog(config, block: str, folder: Path) -> Path:
    """Elaborate ``block`` for ``config`` into ``folder/<block>.v``."""
    from sim.harness import to_verilog
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    source = folder / f"{block}.v"
    source.write_text(to_verilog(component(config, block), block))
    return source


def run_yosys(block: str, folder: Path, netlist: bool = False) -> dict:
    """``synth_ecp5`` of ``folder/<block>.v``; returns its resources (and writes
    ``<block>.json``, the netlist for nextpnr, when ``netlist``)."""
    folder = Path(folder)
    began = time.perf_counter()
    script = (f"read_verilog {block}.v; synth_ecp5 -top {block}"
              + (f" -json {block}.json" if netlist else "")
              + f"; tee -q -o {block}.stat.json stat -json")
    result = subprocess.run([tool("yosys"), "-q", "-l", f"{block}.yosys.log", "-p", script],
                            cwd=folder, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"yosys failed on {block} (log: {folder / (block + '.yosys.log')}):\n"
                           + (result.stdout + result.stderr)[-3000:])
    stat = json.loads((folder / f"{block}.stat.json").read_text())
    report = resources(stat["design"]["num_cells_by_type"])
    report["synth_s"] = round(time.perf_counter() - began, 1)
    return report


def fits(report: dict) -> list[str]:
    """What exceeds the device (empty: it fits)."""
    capacity = DEVICE["capacity"]
    return [f"{key} {report[key]} > {capacity[key]}" for key in capacity
            if report[key] > capacity[key]]


def _critical_path(report: dict) -> dict | None:
    """The worst path of nextpnr's JSON report, summarised: endpoints, delay split, levels."""
    paths = report.get("critical_paths") or []
    if not paths:
        return None
    clocked = [p for p in paths if str(p.get("from", "")).startswith(("posedge", "negedge"))
               and p.get("from") == p.get("to")]   # register to register in one clock
    worst = max(clocked or paths,
                key=lambda p: sum(step.get("delay", 0) for step in p.get("path", [])))
    steps = worst.get("path", [])
    total = sum(step.get("delay", 0) for step in steps)
    logic = sum(step.get("delay", 0) for step in steps if step.get("type") != "routing")
    cells = [step["to"]["cell"] for step in steps
             if step.get("type") == "logic" and "to" in step]
    return {"from": worst.get("from"), "to": worst.get("to"),
            "start_cell": steps[0]["from"]["cell"] if steps else None,
            "end_cell": steps[-1]["to"]["cell"] if steps else None,
            "delay_ns": round(total, 3), "logic_ns": round(logic, 3),
            "routing_ns": round(total - logic, 3), "logic_levels": len(cells),
            "cells": cells}


def place_and_route(netlist: Path, folder: Path, target_mhz: float = TARGET_MHZ,
                    seed: int = 1) -> dict:
    """nextpnr-ecp5 on a Yosys netlist (top-level ports placed by nextpnr): fmax and the
    critical path. Timing failure is reported, not fatal. Paths are given relative to
    ``folder`` (the tool's working directory): the WebAssembly build does not see every
    absolute path of the host (e.g. under /tmp)."""
    folder = Path(folder)
    began = time.perf_counter()
    command = [tool("nextpnr-ecp5"), DEVICE["nextpnr_device"], "--package", DEVICE["package"],
               "--speed", str(DEVICE["speed"]), "--json", os.path.relpath(netlist, folder),
               "--freq", str(target_mhz),
               "--timing-allow-fail", "--seed", str(seed), *NEXTPNR_OPTS.split(),
               "--report", "pnr.report.json", "--log", "pnr.log", "--quiet"]
    result = subprocess.run(command, cwd=folder, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"nextpnr-ecp5 failed (log: {folder / 'pnr.log'}):\n"
                           + (result.stdout + result.stderr)[-3000:])
    report = json.loads((folder / "pnr.report.json").read_text())
    clocks = {name: info.get("achieved") for name, info in report.get("fmax", {}).items()}
    fmax = min(clocks.values()) if clocks else None
    used = {name: info.get("used") for name, info in report.get("utilization", {}).items()}
    return {"fmax_mhz": round(fmax, 2) if fmax else None, "target_mhz": target_mhz,
            "clocks": clocks, "critical_path": _critical_path(report),
            "utilization": {k: v for k, v in used.items() if v},
            "pnr_s": round(time.perf_counter() - began, 1)}


def synth(config, out: Path | None = None, blocks=None, pnr: bool = True, jobs: int = 2,
          target_mhz: float = TARGET_MHZ, show=print) -> dict:
    """Per-block resources and, with ``pnr``, the top's fmax. ``blocks``: a subset of
    :data:`BLOCKS` plus ``selftest`` (default: all of them)."""
    names = list(BLOCKS) + [TOP] if blocks is None else list(blocks)
    unknown = sorted(set(names) - set(BLOCKS) - {TOP})
    if unknown:
        raise ValueError(f"unknown block(s) {', '.join(unknown)}; choose from "
                         f"{', '.join(BLOCKS + [TOP])}")
    if pnr and TOP not in names:
        names.append(TOP)
    began = time.perf_counter()
    show(f"synth_ecp5 of {', '.join(names)} for the {DEVICE['part']} ({jobs} at a time)"
         + (f", then nextpnr-ecp5 on {TOP}" if pnr else "") + " ...")
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(out) if out else Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        # Elaborate in this thread, one block at a time; run the Yosys processes in parallel.
        order = sorted(names, key=lambda name: name != TOP)  # the top first: nextpnr waits on it
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            futures = {}
            for name in order:
                write_verilog(config, name, folder / name)
                futures[name] = pool.submit(run_yosys, name, folder / name,
                                            netlist=(name == TOP and pnr))
            results = {}
            timing = None
            for name in order:
                results[name] = futures[name].result()
                show(f"  synthesized {name:<17} {results[name]['synth_s']:6.1f} s")
                if name == TOP and pnr:
                    over = fits(results[name])
                    if over:
                        show(f"  {TOP} does not fit the {DEVICE['part']}: {', '.join(over)}; "
                             f"no place and route")
                    else:
                        timing = pool.submit(place_and_route, folder / TOP / f"{TOP}.json",
                                             folder / TOP, target_mhz)
        placed = timing.result() if timing else None
        if placed:
            show(f"  placed and routed {TOP}  {placed['pnr_s']:6.1f} s")
    report = {
        "config": config.name, "summary": config.summary(),
        "device": {key: value for key, value in DEVICE.items()},
        "blocks": {name: results[name] for name in BLOCKS + [TOP] if name in results},
        "fits": not fits(results[TOP]) if TOP in results else None,
        "fmax_mhz": placed["fmax_mhz"] if placed else None,
        "target_mhz": target_mhz,
        "pnr": placed,
        "wall_s": round(time.perf_counter() - began, 1),
    }
    return report


def format_report(report: dict) -> str:
    """The resource table and the timing summary, as ``neupims synth`` prints them."""
    device = report["device"]
    lines = [f"FPGA synthesis: {report['summary']}",
             f"device {device['part']} ({device['board']}), Yosys synth_ecp5 per block, "
             f"nextpnr-ecp5 on {TOP}", ""]
    header = f"{'block':<18}" + "".join(f"{title:>18}" for _, title, _ in COLUMNS)
    lines += [header, "-" * len(header)]
    for name, info in report["blocks"].items():
        lines.append(f"{name:<18}" + "".join(f"{info[key]:>18,}" for key, _, _ in COLUMNS))
    capacity = device["capacity"]
    lines.append(f"{'device capacity':<18}" + "".join(
        f"{capacity[key]:>18,}" if key in capacity else f"{'':>18}" for key, _, _ in COLUMNS))
    lines.append("")
    lines.append("LUTs = LUT4 + 2 per CCU2C (carry cell); LUTRAM = TRELLIS_DPR16X4 16x4 "
                 "distributed RAMs, not in LUTs.")
    placed = report.get("pnr")
    if report.get("fits") is False:
        lines.append(f"{TOP} does not fit the device: no place and route.")
    elif placed:
        verdict = "meets" if placed["fmax_mhz"] and placed["fmax_mhz"] >= report["target_mhz"] \
            else "misses"
        used = placed.get("utilization", {})
        if used:
            lines.append(f"{TOP} after place and route: " + ", ".join(
                f"{name} {count:,}" for name, count in sorted(used.items())))
        lines.append(f"fmax ({TOP}, nextpnr-ecp5): {placed['fmax_mhz']} MHz "
                     f"({verdict} the {report['target_mhz']:g} MHz target)")
        path = placed.get("critical_path")
        if path:
            lines.append(f"critical path: {path['delay_ns']} ns = {path['logic_ns']} ns logic "
                         f"+ {path['routing_ns']} ns routing, {path['logic_levels']} logic levels")
            lines.append(f"  from {path['start_cell']}")
            lines.append(f"  to   {path['end_cell']}")
            lines.append(f"  through {critical_blocks(path)}")
    lines.append(f"({report['wall_s']:.0f} s wall in all)")
    return "\n".join(lines)


def critical_blocks(path: dict) -> str:
    """The design hierarchy the critical path runs through, from its cells' names (cells
    that nextpnr made itself, ``$nextpnr_*``, carry no hierarchy and are skipped)."""
    seen = []
    for cell in [path.get("start_cell")] + path.get("cells", []) + [path.get("end_cell")]:
        if not cell or cell.startswith("$"):
            continue
        scope = ".".join(cell.split(".")[:-1]) or cell
        if scope not in seen:
            seen.append(scope)
    return ", ".join(seen[:6]) + (" ..." if len(seen) > 6 else "") if seen else "?"


# -- bitstream ----------------------------------------------------------------------------

def bitstream(config, out: Path, name: str = "neupims_selftest", seed: int = 1,
              clock_mhz: float | None = 12.5, show=print) -> dict:
    """Build the self-test for the ULX3S-85F with Amaranth's build system; return paths
    and timings. Writes ``out/<name>.bit`` (and .svf, .tim: nextpnr's log). The self-test
    runs at ``clock_mhz`` from the board's PLL (None: the 25 MHz board clock)."""
    from amaranth_boards.ulx3s import ULX3S_85F_Platform
    from rtl.board import SelfTestBoard
    from sim.selftest import selftest_top

    out = Path(out)
    began = time.perf_counter()
    platform = ULX3S_85F_Platform()
    top = SelfTestBoard(selftest_top(config), clock_mhz=clock_mhz)
    plan = platform.build(top, name=name, build_dir=str(out), do_build=False,
                          nextpnr_opts=f"--seed {seed} {NEXTPNR_OPTS}")
    show(f"  elaborated {name} for {type(platform).__name__} "
         f"({time.perf_counter() - began:.1f} s); running yosys, nextpnr-ecp5, ecppack ...")
    try:
        plan.execute_local(str(out), env=tool_env())
    except subprocess.CalledProcessError as error:
        logs = [out / f"{name}.rpt", out / f"{name}.tim"]
        raise RuntimeError(f"the build script failed ({error.returncode}); see "
                           f"{', '.join(str(p) for p in logs if p.exists())}") from error
    bit = out / f"{name}.bit"
    if not bit.exists():
        raise RuntimeError(f"the build finished without {bit}")
    fmax = None
    log = out / f"{name}.tim"
    if log.exists():
        found = re.findall(r"Max frequency for clock\s+'([^']+)':\s+([\d.]+) MHz", log.read_text())
        fmax = {clock: float(mhz) for clock, mhz in found} or None   # the last (final) wins
    return {"bitstream": str(bit), "bytes": bit.stat().st_size, "fmax_mhz": fmax,
            "clock_mhz": clock_mhz or platform.default_clk_frequency / 1e6,
            "wall_s": round(time.perf_counter() - began, 1)}
