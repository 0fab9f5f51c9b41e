"""The ``neupims`` command: simulate, benchmark, export."""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from rtl.config import ConfigError, PRESETS, preset

NOT_BUILT = [
    "memory controller (scheduler, refresh, PIM sequencing): commands come from a stored program",
    "NPU (systolic arrays, vector unit, DMA)",
    "LLM decode replay in the three modes (npu-only, npu+pim, neupims)",
    "full-scale timing path and the paper's table",
]


def _config(args):
    try:
        return preset(args.config, **({"mode": args.mode} if getattr(args, "mode", None) else {}))
    except ConfigError as error:
        sys.exit(f"neupims: bad configuration: {error}")


def _channel_gemv(config, repeat: int, seed: int, tile: int | None) -> dict:
    from rtl.channel import ChannelTestTop
    from sim.harness import build, run, to_verilog

    name = "channel_top"
    began = time.perf_counter()
    print(f"[1/3] elaborating {config.summary()} ...", flush=True)
    verilog = to_verilog(ChannelTestTop(config), name)
    print(f"[2/3] Verilator build ({len(verilog.splitlines())} lines of Verilog; cached after "
          f"the first time) ...", flush=True)
    build_dir = build(verilog, name)
    print(f"[3/3] simulating ({repeat} runs, every command checked, every result compared) ...",
          flush=True)
    with tempfile.TemporaryDirectory() as folder:
        report_path = Path(folder) / "report.json"
        env = {"NEUPIMS_CONFIG": config.to_json(), "NEUPIMS_REPORT": str(report_path),
               "NEUPIMS_REPEAT": str(repeat), "NEUPIMS_SEED": str(seed)}
        if tile:
            env["NEUPIMS_TILE"] = str(tile)
        run(build_dir, name, "cocotb_tests.tb_bench", env=env, tag="bench")
        report = json.loads(report_path.read_text())
    report["total_wall_s"] = time.perf_counter() - began
    return report


def _print_report(report: dict, title: str):
    print(f"\n{title}")
    print(f"  configuration      {report['config']}")
    print(f"  program            {report['row_sets_per_run']} row sets x tiles {report['tiles']}, "
          f"{report['refreshes_per_program']} refresh(es), {report['cycles_per_program']} cycles")
    print(f"  runs               {report['runs']}  ({report['cycles']} cycles simulated)")
    print(f"  GEMV outputs       {report['outputs_bit_exact']} FP16 results, bit-exact with golden: "
          f"{'yes' if report['bit_exact'] else 'NO'}")
    print(f"  commands checked   {report['commands_checked']}, timing violations "
          f"{report['timing_violations']}")
    rate = report["macs"] / report["cycles"] if report["cycles"] else 0
    print(f"  PIM MACs / cycle   {rate:.1f}")
    print(f"  Verilator speed    {report['sim_cycles_per_s']:,.0f} cycles/s "
          f"(playback only; {report['total_wall_s']:.1f} s wall in all)")


def cmd_sim(args):
    config = _config(args)
    report = _channel_gemv(config, args.repeat, args.seed, args.tile)
    _print_report(report, "GEMV on one NeuPIMs channel (RTL on Verilator)")
    if args.json:
        print(json.dumps(report, indent=2))
    print("\nNot built yet (see README):")
    for item in NOT_BUILT:
        print(f"  - {item}")


def cmd_bench(args):
    if args.target != "channel":
        sys.exit(f"neupims bench: unknown target {args.target!r}; available: channel")
    config = _config(args)
    report = _channel_gemv(config, args.repeat, args.seed, args.tile)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_report(report, "Benchmark: channel GEMV")


def _configs(args):
    """The configurations ``--config`` names: one preset, or every preset for ``all``."""
    names = sorted(PRESETS) if args.config == "all" else [args.config]
    changes = {"mode": args.mode} if getattr(args, "mode", None) else {}
    try:
        return [preset(name, **changes) for name in names]
    except ConfigError as error:
        sys.exit(f"neupims: bad configuration: {error}")


def cmd_verilog(args):
    from sim.lint import export
    out = Path(args.out)
    for config in _configs(args):
        folder = out / config.name if args.config == "all" else out
        for path in export(config, folder).values():
            print(f"wrote {path}")
        print(f"wrote {folder / 'signals.json'}")


def cmd_lint(args):
    from sim.lint import run
    began = time.perf_counter()
    warnings = run(_configs(args), out=args.out)
    print(f"{'FAILED' if warnings else 'OK'}: {warnings} warning(s) left "
          f"({time.perf_counter() - began:.1f} s)")
    if warnings:
        sys.exit(1)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="neupims", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p, default="channel"):
        p.add_argument("--config", default=default, choices=sorted(PRESETS),
                       help="configuration preset (default: %(default)s)")
        p.add_argument("--mode", choices=["dual", "blocked"], help="row-buffer mode")
        p.add_argument("--json", action="store_true", help="print the report as JSON")

    p = sub.add_parser("sim", help="run the main job: a GEMV on one channel of the RTL")
    common(p)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--tile", type=int, help="COMPs per PIM_GEMV (default: a whole row)")
    p.set_defaults(func=cmd_sim)

    p = sub.add_parser("bench", help="benchmarks: `channel` (Verilator cycles/s of a GEMV)")
    p.add_argument("target", choices=["channel"])
    common(p)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--tile", type=int)
    p.set_defaults(func=cmd_bench)

    def export_config(p):
        p.add_argument("--config", default="channel", choices=sorted(PRESETS) + ["all"],
                       help="configuration preset, or `all` (default: %(default)s)")
        p.add_argument("--mode", choices=["dual", "blocked"], help="row-buffer mode")

    p = sub.add_parser("verilog", help="write the Verilog of the major blocks and signals.json "
                                       "(--config all: one folder per preset)")
    export_config(p)
    p.add_argument("--out", default="build/verilog")
    p.set_defaults(func=cmd_verilog)

    p = sub.add_parser("lint", help="verilator --lint-only -Wall on the exported blocks "
                                    "(waivers: lint_waivers.vlt); fails on any warning")
    export_config(p)
    p.add_argument("--out", help="keep the exported Verilog here (default: a scratch folder)")
    p.set_defaults(func=cmd_lint)

    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
