"""Run the channel controller RTL (ControllerTop on Verilator) on traces and benchmark
scenarios, with progress lines, and turn its counters into reports."""
from __future__ import annotations

import collections
import json
import tempfile
import threading
import time
from pathlib import Path

from rtl.config import DeviceConfig
from rtl.controller import ControllerTop

from .dram_trace import parse_file

NAME = "controller_top"


def build_controller(config: DeviceConfig, show=print) -> Path:
    from .harness import build, to_verilog
    show(f"elaborating the controller + channel: {config.summary()} ...")
    verilog = to_verilog(ControllerTop(config), NAME)
    show(f"Verilator build ({len(verilog.splitlines()):,} lines; cached by the Verilog text) ...")
    return build(verilog, NAME)


def run_controller_test(build_dir: Path, config: DeviceConfig, testcase: str, env: dict,
                        label: str, show=print, tag: str = "") -> dict:
    """Run one cocotb test of ``cocotb_tests.tb_controller``; print progress every few
    seconds (cycles simulated and rate); return its JSON report."""
    from .harness import run
    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "report.json"
        progress = Path(folder) / "progress"
        full_env = {"NEUPIMS_CONFIG": config.to_json(), "NEUPIMS_REPORT": str(report),
                    "NEUPIMS_PROGRESS": str(progress), **{k: str(v) for k, v in env.items()}}
        done = threading.Event()

        def watch():
            began = time.perf_counter()
            while not done.wait(3.0):
                if progress.exists():
                    text = progress.read_text().split()
                    if len(text) >= 2:
                        cycles, requests = int(text[0]), int(text[1])
                        rate = cycles / (time.perf_counter() - began)
                        show(f"  {label}: {cycles:,} cycles simulated, {requests:,} requests "
                             f"done, {rate:,.0f} cycles/s")

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            run(build_dir, NAME, "cocotb_tests.tb_controller", testcase=testcase, env=full_env,
                tag=tag or f"{testcase}-{label}".replace(" ", "_").replace("/", "_"))
        finally:
            done.set()
        return json.loads(report.read_text())


def replay_trace(config: DeviceConfig, path, command_log=None, show=print) -> dict:
    """Replay a DRAMsim3-format trace; each channel that the trace touches is run on the
    RTL (one channel at a time, one request per cycle into each). Raises TraceError."""
    config = config.replace(wrap_rows=True)
    requests = parse_file(path, config)
    by_channel = collections.defaultdict(list)
    for request in requests:
        by_channel[request.channel].append(request.as_row())
    show(f"trace {path}: {len(requests):,} requests "
         f"({sum(r.write for r in requests):,} writes) on {len(by_channel)} channel(s)")
    build_dir = build_controller(config, show)
    reports = {}
    logs = []
    with tempfile.TemporaryDirectory() as folder:
        for index, (channel, rows) in enumerate(sorted(by_channel.items()), 1):
            trace_file = Path(folder) / f"channel{channel}.json"
            trace_file.write_text(json.dumps(rows))
            env = {"NEUPIMS_TRACE": trace_file}
            log_file = Path(folder) / f"channel{channel}.log"
            if command_log:
                env["NEUPIMS_COMMAND_LOG"] = log_file
            show(f"[{index}/{len(by_channel)}] channel {channel}: {len(rows):,} requests ...")
            reports[channel] = run_controller_test(build_dir, config, "replay", env,
                                                   f"channel {channel}", show,
                                                   tag=f"replay-{channel}")
            if command_log:
                logs.append((channel, log_file.read_text()))
    if command_log:
        with open(command_log, "w") as out:
            for channel, text in logs:
                if len(logs) > 1:
                    out.write(f"# channel {channel}\n")
                out.write(text)
    return summarize_replay(config, reports, len(requests))


def summarize_replay(config: DeviceConfig, reports: dict, total: int) -> dict:
    g = config.geometry
    commands = collections.Counter()
    for report in reports.values():
        commands.update(report["commands"])
    counters = [r["counters"] for r in reports.values()]
    cycles = max((r["last_response"] for r in reports.values()), default=0)
    reads = sum(c["RD"] for c in counters)
    writes = sum(c["WR"] for c in counters)
    moved = (reads + writes) * g.burst_bytes
    seconds = cycles / config.timing.clock_hz if cycles else 0
    completed = sum(r["completed"]["reads"] + r["completed"]["writes"] for r in reports.values())
    assert completed == total, f"{completed} of {total} requests completed"
    return {
        "config": config.summary(), "channels": sorted(reports), "requests": total,
        "cycles": cycles, "reads": reads, "writes": writes, "bytes": moved,
        "bandwidth_gbps": moved / seconds / 1e9 if seconds else 0.0,
        "commands": dict(sorted(commands.items())),
        "row_hits": sum(c["row_hits"] for c in counters),
        "row_misses": sum(c["row_misses"] for c in counters),
        "refreshes": sum(c["REF"] for c in counters),
        "timing_violations": 0,
        "sim_cycles_per_s": min((r["sim_cycles_per_s"] for r in reports.values()), default=0),
    }


def format_replay(report: dict) -> str:
    lines = [f"Trace replay on the controller RTL ({report['config']})",
             f"  requests          {report['requests']:,} ({report['reads']:,} reads, "
             f"{report['writes']:,} writes) on channel(s) {report['channels']}",
             f"  cycles            {report['cycles']:,} (last response)",
             f"  bandwidth         {report['bandwidth_gbps']:.2f} GB/s ({report['bytes']:,} bytes)",
             f"  row hits          {report['row_hits']:,} (misses {report['row_misses']:,})",
             f"  refreshes         {report['refreshes']}",
             "  commands          " + ", ".join(f"{k} {v:,}" for k, v in report["commands"].items()),
             f"  timing violations {report['timing_violations']} (every command checked)",
             f"  Verilator speed   {report['sim_cycles_per_s']:,.0f} cycles/s"]
    return "\n".join(lines)
