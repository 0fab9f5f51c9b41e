"""The ``neupims`` command: simulate, benchmark, export."""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

from rtl.config import REFRESH_RATES, ConfigError, NpuConfig, PRESETS, preset
from sim.decode.golden import MODES
from sim.decode.job import DEFAULTS as DECODE
from sim.lint import BLOCK_NAMES, NPU_BLOCKS


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


def cmd_gemv(args):
    config = _config(args)
    if config.mode.value == "dram":
        sys.exit("neupims gemv: the GEMV job needs PIM; choose --mode dual or blocked")
    report = _channel_gemv(config, args.repeat, args.seed, args.tile)
    _print_report(report, "GEMV on one NeuPIMs channel (RTL on Verilator)")
    if args.json:
        print(json.dumps(report, indent=2))


def cmd_sim(args):
    from sim.decode.job import draw_workload, run_modes
    from sim.decode.report import format_table, plot_timeline, to_json
    from sim.decode.workload import DecodeError
    from sim.models import ModelError
    from sim.workloads import WorkloadError
    modes = MODES if args.modes == "all" else tuple(args.modes.split(","))
    for mode in modes:
        if mode not in MODES:
            sys.exit(f"neupims sim: unknown mode {mode!r}; choose from {', '.join(MODES)} or all")
    log = (lambda *a, **k: print(*a, file=sys.stderr, **k)) if args.json else print
    try:
        workload, source = draw_workload(args.model, args.trace, args.batch, args.steps,
                                         args.length_scale, args.max_len, args.seed)
        config = preset(args.config) if args.config else None
        if args.timing_only:
            config = (config or preset("decode")).replace(datapath=False)
        if args.refresh_rate != 1:
            config = (config or preset("decode")).replace(refresh_rate=args.refresh_rate)
        if args.weight_buffers is not None:
            config = _with_npu(config or preset("decode"), weight_buffers=args.weight_buffers)
        if args.cores != 1:
            from sim.decode.compiler import with_cores
            config = with_cores(config or preset("decode"), args.cores)
        log(f"neupims sim: {workload.model.summary()}")
        log(f"  workload: {source}")
        log(f"  KV lengths: {list(workload.kv_lens)}, {workload.steps} step(s)")
        out = Path(args.out)
        results = run_modes(workload, modes, out, config, log=log)
    except (DecodeError, ModelError, WorkloadError, ConfigError) as error:
        sys.exit(f"neupims sim: {error}")
    description = workload.describe()
    report = to_json(results, description)
    (out / "sim.json").write_text(json.dumps(report, indent=2))
    plot_timeline(results, out / "timeline.png")
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print()
        print(format_table(results, description))
        print(f"\nwritten: {out / 'sim.json'}, {out / 'timeline.png'}")
    if not args.timing_only and not all(r.get("bit_exact") for r in results.values()):
        sys.exit("neupims sim: a mode was not bit-exact with the golden decode")


def cmd_bench(args):
    if args.config is None:     # the NPU core needs an array row to fit a scratchpad word
        args.config = {"npu": "small", "device": "neupims"}.get(args.target, "channel")
    if args.target == "controller":
        return cmd_bench_controller(args)
    if args.target == "npu":
        return cmd_bench_npu(args)
    if args.target == "device":
        return cmd_bench_device(args)
    config = _config(args)
    report = _channel_gemv(config, args.repeat, args.seed, args.tile)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_report(report, "Benchmark: channel GEMV")


def cmd_bench_controller(args):
    from sim.controller_bench import bench_controller, format_bench
    show = (lambda line: print(line, file=sys.stderr, flush=True)) if args.json else (
        lambda line: print(line, flush=True))
    results = bench_controller(_config(args), requests=args.requests, gemvs=args.gemvs,
                               show=show)
    print(json.dumps(results, indent=2) if args.json else "\n" + format_bench(results))


def cmd_bench_npu(args):
    from sim.npu_bench import bench_npu, format_npu, npu_channels
    show = (lambda line: print(line, file=sys.stderr, flush=True)) if args.json else (
        lambda line: print(line, flush=True))
    config = npu_channels(_with_npu(_config(args), weight_buffers=args.weight_buffers),
                          2 if args.channels is None else args.channels)
    try:
        report = bench_npu(config, rows=args.rows, show=show)
    except ConfigError as error:
        sys.exit(f"neupims bench npu: bad configuration: {error}")
    print(json.dumps(report, indent=2) if args.json else "\n" + format_npu(report))


def _with_npu(config, channels=None, **fields):
    """``config`` with ``channels`` memory channels and the NpuConfig fields given (None:
    keep the configuration's), checked together (a DMA's response lanes need channels).
    A ``dma_in_flight`` that the controllers' tags cannot give every core raises
    ``ControllerConfig.tags`` to the power of two that can (cores x requests)."""
    given = {name: value for name, value in fields.items() if value is not None}
    if channels is None and not given:
        return config
    geometry = config.geometry if channels is None else dataclasses.replace(
        config.geometry, channels=channels)
    npu = dataclasses.replace(config.npu, **given)
    controller = config.controller
    if "dma_in_flight" in given:
        need = 1 << (npu.arrays * npu.dma_in_flight - 1).bit_length()
        if need > controller.tags:
            controller = dataclasses.replace(controller, tags=need)
    return config.replace(geometry=geometry, npu=npu, controller=controller)


def _add_dma_options(p, scope: str = ""):
    paper, plain = preset("neupims").npu, NpuConfig()
    p.add_argument("--response-buffer", type=int,
                   help=f"{scope}responses held per channel and core between a channel and "
                        "the cores (NpuConfig.response_buffer; default: the configuration's, "
                        f"{paper.response_buffer} on the paper's NPU, else "
                        f"{plain.response_buffer})")
    p.add_argument("--dma-responses", type=int,
                   help=f"{scope}read responses each core's DMA writes per clock "
                        "(NpuConfig.dma_responses; default: the configuration's, "
                        f"{paper.dma_responses} on the paper's NPU, else {plain.dma_responses})")
    p.add_argument("--dma-in-flight", type=int,
                   help=f"{scope}DMA requests each core keeps in flight per channel "
                        "(NpuConfig.dma_in_flight; default: the configuration's, "
                        f"{paper.dma_in_flight} on the paper's NPU; the controllers' tags "
                        "are raised to cores x this when fewer)")
    p.add_argument("--dma-overlap", action=argparse.BooleanOptionalAction,
                   help=f"{scope}each core's DMA takes a command as soon as the channels it "
                        "has bursts in are free, so transfers to different channels issue at "
                        "once (NpuConfig.dma_overlap; default: the configuration's, "
                        f"{'on' if paper.dma_overlap else 'off'} on the paper's NPU, else "
                        f"{'on' if plain.dma_overlap else 'off'}; --no-dma-overlap: one "
                        "command at a time)")


def cmd_bench_device(args):
    from sim.device_bench import BenchError, bench_device, format_device
    show = (lambda line: print(line, file=sys.stderr, flush=True)) if args.json else (
        lambda line: print(line, flush=True))
    try:
        config = _with_npu(_config(args), channels=args.channels,
                           weight_buffers=args.weight_buffers, arrays=args.cores,
                           response_buffer=args.response_buffer,
                           dma_responses=args.dma_responses, dma_in_flight=args.dma_in_flight,
                           dma_overlap=args.dma_overlap)
        if args.timing_only:
            config = config.replace(datapath=False)
        report = bench_device(config, tiles=args.tiles, rows=args.rows_per_gemm, show=show)
    except (BenchError, ConfigError) as error:
        sys.exit(f"neupims bench device: {error}")
    print(json.dumps(report, indent=2) if args.json else "\n" + format_device(report))


def cmd_replay_trace(args):
    from sim.dram_trace import TraceError
    from sim.replay import format_replay, replay_trace
    show = (lambda line: print(line, file=sys.stderr, flush=True)) if args.json else (
        lambda line: print(line, flush=True))
    try:
        report = replay_trace(_config(args), args.trace, command_log=args.command_log, show=show)
    except TraceError as error:
        sys.exit(f"neupims replay-trace: {error}")
    if args.command_log:
        show(f"wrote the command log to {args.command_log}")
    print(json.dumps(report, indent=2) if args.json else "\n" + format_replay(report))


def _configs(args):
    """The configurations ``--config`` names: one preset, or every preset for ``all``."""
    names = sorted(PRESETS) if args.config == "all" else [args.config]
    changes = {"mode": args.mode} if getattr(args, "mode", None) else {}
    if getattr(args, "timing_only", False):
        changes["datapath"] = False
    try:
        return [preset(name, **changes) for name in names]
    except ConfigError as error:
        sys.exit(f"neupims: bad configuration: {error}")


def _block_list(text):
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in BLOCK_NAMES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown block(s) {', '.join(unknown) or '(none)'}; choose from "
            f"{', '.join(BLOCK_NAMES)}")
    return names


def cmd_verilog(args):
    from sim.lint import export
    out = Path(args.out)
    for config in _configs(args):
        folder = out / config.name if args.config == "all" else out
        print(f"{config.summary()}", flush=True)
        export(config, folder, blocks=args.blocks, show=lambda line: print(line, flush=True),
               npu_timing_only=args.npu_timing_only)
        print(f"wrote {folder / 'signals.json'}")


def cmd_lint(args):
    from sim.lint import run
    began = time.perf_counter()
    warnings = run(_configs(args), out=args.out, blocks=args.blocks,
                   npu_timing_only=args.npu_timing_only)
    print(f"{'FAILED' if warnings else 'OK'}: {warnings} warning(s) left "
          f"({time.perf_counter() - began:.1f} s)")
    if warnings:
        sys.exit(1)


def cmd_synth(args):
    from sim.synth import format_report, synth
    config = _config(args)
    stream = sys.stderr if args.json else sys.stdout
    show = lambda line: print(line, file=stream, flush=True)  # noqa: E731
    blocks = args.blocks.split(",") if args.blocks else None
    try:
        report = synth(config, out=args.out, blocks=blocks, pnr=not args.no_pnr, jobs=args.jobs,
                       target_mhz=args.freq, show=show)
    except (ValueError, RuntimeError, FileNotFoundError) as error:
        sys.exit(f"neupims synth: {error}")
    print(json.dumps(report, indent=2) if args.json else "\n" + format_report(report))
    if report["fits"] is False:
        sys.exit(1)


def cmd_bitstream(args):
    from sim.synth import bitstream
    try:
        report = bitstream(_config(args), Path(args.out), seed=args.seed,
                           clock_mhz=args.clock or None,
                           show=lambda line: print(line, file=sys.stderr if args.json
                                                   else sys.stdout, flush=True))
    except (ValueError, RuntimeError, FileNotFoundError) as error:
        sys.exit(f"neupims bitstream: {error}")
    print(json.dumps(report, indent=2) if args.json else
          f"wrote {report['bitstream']} ({report['bytes']:,} bytes, {report['wall_s']:.0f} s); "
          f"fmax {report['fmax_mhz']} MHz for a {report['clock_mhz']:g} MHz self-test clock")


def cmd_reproduce(args):
    from sim.reproduce import GRIDS, ReproduceError, run_grid, format_report, write_outputs
    from sim.decode.workload import DecodeError
    from sim.interconnect import Interconnect, LinkError
    if args.paper:
        grid = GRIDS["paper-quick" if args.quick else "paper"]
        slice_only = {"--cores": args.cores != 1, "--array": bool(args.array),
                      "--word-bytes": args.word_bytes != 64, "--lanes": args.lanes != 16}
        clash = [name for name, given in slice_only.items() if given]
        if clash:
            sys.exit(f"neupims reproduce: {clash[0]} shapes the slice; --paper runs the "
                     f"`neupims` preset's own NPU")
    else:
        grid = GRIDS["quick" if args.quick else "full"]
    changes = {}
    if args.layers_run is not None:
        changes["layers_run"] = args.layers_run
    if args.models:
        changes["models"] = tuple(args.models.split(","))
    if args.batches:
        try:
            changes["batches"] = tuple(int(b) for b in args.batches.split(","))
        except ValueError:
            sys.exit(f"neupims reproduce: batches: {args.batches!r} is not a comma list of integers")
    if args.datasets:
        changes["datasets"] = tuple(args.datasets.split(","))
    if args.modes:
        changes["modes"] = tuple(args.modes.split(","))
    if args.length_scale is not None:
        changes["length_scale"] = {d: args.length_scale for d in changes.get("datasets", grid.datasets)}
    grid = dataclasses.replace(grid, **changes)
    log = (lambda *a, **k: print(*a, file=sys.stderr, flush=True, **k)) if args.json else \
        (lambda *a, **k: print(*a, flush=True, **k))
    out = Path(args.out)
    try:
        from sim.reproduce import paper_config, slice_config
        array = None
        if args.array:
            try:
                array = tuple(int(v) for v in args.array.lower().split("x"))
                assert len(array) == 2
            except (ValueError, AssertionError):
                sys.exit(f"neupims reproduce: array: {args.array!r} is not ROWSxCOLS (e.g. 16x8)")
        config = paper_config(args.weight_buffers) if args.paper else \
            slice_config(args.cores, array, args.word_bytes, args.lanes, args.weight_buffers)
        config = _with_npu(config, response_buffer=args.response_buffer,
                           dma_responses=args.dma_responses, dma_in_flight=args.dma_in_flight,
                           dma_overlap=args.dma_overlap)
        link = Interconnect(args.link_gbs, args.link_hop_us)
        report = run_grid(grid, out, config=config, jobs=args.jobs, log=log, precheck=True,
                          resume=args.resume, link=link, report_only=args.report_only)
    except (ReproduceError, RuntimeError, DecodeError, ConfigError, LinkError) as error:
        sys.exit(f"neupims reproduce: {error}")
    files = write_outputs(report, out)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print()
        print(format_report(report))
        print(f"\nwritten: {', '.join(str(f) for f in files)}")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="neupims", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p, default="channel"):
        p.add_argument("--config", default=default, choices=sorted(PRESETS),
                       help="configuration preset (default: %(default)s)" if default else
                       "configuration preset (default: small for npu, channel otherwise)")
        p.add_argument("--mode", choices=["dual", "blocked", "dram"], help="row-buffer mode")
        p.add_argument("--json", action="store_true", help="print the report as JSON")

    p = sub.add_parser("sim", help="the main job: LLM decode steps of a batch from a real "
                                   "trace in the three modes on the RTL (table, JSON, PNG)")
    p.add_argument("--model", default=DECODE["model"], help="model (default: %(default)s)")
    p.add_argument("--trace", default=DECODE["trace"],
                   help="azure-conv, azure-code, sharegpt, mooncake or an Azure-format CSV "
                        "(default: %(default)s)")
    p.add_argument("--batch", type=int, default=DECODE["batch"], help="requests (default: %(default)s)")
    p.add_argument("--steps", type=int, default=DECODE["steps"],
                   help="decode steps (default: %(default)s)")
    p.add_argument("--length-scale", type=float, default=DECODE["length_scale"],
                   help="multiply the trace's lengths (default: %(default)g)")
    p.add_argument("--max-len", type=int, default=DECODE["max_len"],
                   help="clip requests to this many tokens (default: %(default)s)")
    p.add_argument("--modes", default="all", help="all or a comma list of " + ", ".join(MODES))
    p.add_argument("--config", choices=sorted(PRESETS), help="preset (default: decode)")
    p.add_argument("--seed", type=int, default=DECODE["seed"])
    p.add_argument("--timing-only", action="store_true",
                   help="the same RTL without its datapath (same cycles, no data: bit-exact n/a)")
    p.add_argument("--refresh-rate", type=int, choices=REFRESH_RATES, default=1,
                   help="refresh every tREFI / N clocks (2: HBM's hot refresh; the same "
                        "Verilator build: a run-time input of the controllers)")
    p.add_argument("--cores", type=int, default=1,
                   help="NPU cores sharing the GEMMs (columns) and the attention (channels); "
                        "default %(default)s")
    p.add_argument("--weight-buffers", type=int, choices=(1, 2),
                   help="weight registers per PE: 2 preloads a pass's weights under the pass "
                        "before (default: the preset's; decode 1)")
    p.add_argument("--out", default="build/sim", help="folder for sim.json and timeline.png")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_sim)

    p = sub.add_parser("reproduce", help="the paper's comparison (three modes over models x "
                                         "batches x datasets) on the RTL: table, JSON, plots")
    p.add_argument("--quick", action="store_true", help="a small grid (minutes; with "
                   "--paper one point: gpt3-7b, batch 64, sharegpt-like)")
    p.add_argument("--paper", action="store_true",
                   help="the paper's GPT-3 models and batches on the `neupims` preset "
                        "(timing-only, 2 layers per device run, the rest extended; hours "
                        "per point on one core)")
    p.add_argument("--layers-run", type=int,
                   help="layers per device run on the RTL, the rest extended by the "
                        "steady-state layer measured (default: all; --paper: 2)")
    p.add_argument("--models", help="comma list (default: the grid's)")
    p.add_argument("--batches", help="comma list of batch sizes (default: the grid's)")
    p.add_argument("--datasets", help="comma list of sharegpt-like, alpaca-like, azure-conv")
    p.add_argument("--modes", help="comma list of " + ", ".join(MODES) + " (default: all; the "
                   "ratios need all three)")
    p.add_argument("--length-scale", type=float, help="multiply every dataset's lengths by "
                                                      "this (default: 1, azure-conv 1/8)")
    p.add_argument("--jobs", type=int, help="points run at once (default: the CPU count)")
    p.add_argument("--resume", action="store_true",
                   help="take the points an earlier run in --out finished on the same device "
                        "and workload parameters (after a stop; each records its git commit)")
    p.add_argument("--cores", type=int, default=1,
                   help="NPU cores of the slice (GEMMs split by columns, attention by "
                        "channel; default %(default)s)")
    p.add_argument("--array", help="each core's systolic array, ROWSxCOLS (default 16x16)")
    p.add_argument("--word-bytes", type=int, default=64,
                   help="scratchpad word in bytes, a power of two of whole 64-byte bursts "
                        "(default %(default)s; rows and heads must be whole words or, a head, a whole "
                        "fraction of one)")
    p.add_argument("--lanes", type=int, default=16,
                   help="vector lanes per core, FP32 of one word at most (default %(default)s)")
    p.add_argument("--weight-buffers", type=int, choices=(1, 2), default=2,
                   help="weight registers per PE: 2 preloads a pass's weights under the pass "
                        "before, as the paper's NPU; 1 waits for the array to drain "
                        "(default %(default)s)")
    _add_dma_options(p)
    p.add_argument("--report-only", action="store_true",
                   help="run nothing: the report of the grid's points an earlier run in --out "
                        "finished (as --resume), the others listed as not finished")
    from sim.interconnect import Interconnect
    p.add_argument("--link-gbs", type=float, default=Interconnect.gbytes_per_s,
                   help="the report's communication estimate (TP all-reduce, PP hand-over; "
                        "not simulated): GB/s per direction of a device's links "
                        "(default %(default)s, an A100's NVLink 3)")
    p.add_argument("--link-hop-us", type=float, default=Interconnect.hop_us,
                   help="... and microseconds per ring step or hand-over (default %(default)s)")
    p.add_argument("--out", default="build/reproduce", help="folder for the outputs")
    p.add_argument("--json", action="store_true", help="print the report as JSON (progress "
                                                      "on stderr)")
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("gemv", help="a GEMV program on one channel of the RTL (the stored "
                                    "command player; the first milestone's job)")
    common(p)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--tile", type=int, help="COMPs per PIM_GEMV (default: a whole row)")
    p.set_defaults(func=cmd_gemv)

    p = sub.add_parser("bench", help="benchmarks: `channel` (Verilator cycles/s of a GEMV "
                                     "program), `controller` (bandwidth, COMP rate, dual vs "
                                     "blocked), `npu` (array utilization, DMA GB/s per channel), "
                                     "`device` (Verilator cycles/s of every core on every "
                                     "channel; default the paper's device, use --timing-only)")
    p.add_argument("target", choices=["channel", "controller", "npu", "device"])
    common(p, default=None)
    p.add_argument("--channels", type=int,
                   help="npu, device: memory channels (default: npu 2, device the preset's)")
    p.add_argument("--cores", type=int,
                   help="device: NPU cores (default: the preset's)")
    _add_dma_options(p, "device: ")
    p.add_argument("--rows", type=int, default=448,
                   help="npu: activation rows of the resident-weights GEMM")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--tile", type=int)
    p.add_argument("--requests", type=int, default=8000,
                   help="controller: normal requests per scenario (default: %(default)s)")
    p.add_argument("--gemvs", type=int, default=200,
                   help="controller: PIM_GEMVs in the PIM scenarios (default: %(default)s)")
    p.add_argument("--tiles", type=int, default=24,
                   help="device: weight tiles per core (default: %(default)s)")
    p.add_argument("--rows-per-gemm", type=int,
                   help="device: activation rows M (default: the accumulator's rows)")
    p.add_argument("--timing-only", action="store_true",
                   help="device: without the datapath (the paper's device needs it)")
    p.add_argument("--weight-buffers", type=int, choices=(1, 2),
                   help="npu, device: weight registers per PE (default: the preset's; "
                        "neupims 2, small 1)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("replay-trace", help="replay a DRAMsim3-format trace (0xADDR READ|WRITE "
                                            "CYCLE) on the controller RTL")
    p.add_argument("trace", help="trace file")
    common(p)
    p.add_argument("--command-log", help="write every issued command here, one per line: "
                                         "cycle command rank bankgroup bank row column")
    p.set_defaults(func=cmd_replay_trace)

    def export_config(p):
        p.add_argument("--config", default="channel", choices=sorted(PRESETS) + ["all"],
                       help="configuration preset, or `all` (default: %(default)s)")
        p.add_argument("--mode", choices=["dual", "blocked"], help="row-buffer mode")
        p.add_argument("--blocks", type=_block_list, metavar="B1,B2",
                       help="only these blocks (default: all: " + ", ".join(BLOCK_NAMES) + ")")
        p.add_argument("--timing-only", action="store_true",
                       help="elaborate without the datapath (no multipliers, adders, "
                            "storage): the control, controllers and counters only")
        p.add_argument("--npu-timing-only", action="store_true",
                       help="the NPU blocks (" + ", ".join(NPU_BLOCKS) + ") without their "
                            "datapath, the others in full (the paper-size NPU's full Verilog "
                            "is too large for Verilator's lint on a 24 GB machine)")

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

    p = sub.add_parser("synth", help="ECP5 (LFE5U-85F) synthesis: resources per block (Yosys) "
                                     "and fmax of the self-test top (nextpnr)")
    common(p, default="tiny")
    p.add_argument("--out", help="keep Verilog, netlists and logs here (default: scratch)")
    p.add_argument("--blocks", help="comma-separated subset of blocks (default: all)")
    p.add_argument("--no-pnr", action="store_true", help="skip place and route")
    p.add_argument("--freq", type=float, default=100.0, help="nextpnr target in MHz")
    p.add_argument("--jobs", type=int, default=2, help="parallel Yosys runs")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("bitstream", help="ULX3S-85F bitstream of the on-board self-test "
                                         "(Amaranth build + YoWASP tools)")
    common(p, default="tiny")
    p.add_argument("--out", default="build/bitstream")
    p.add_argument("--seed", type=int, default=1, help="nextpnr placement seed")
    p.add_argument("--clock", type=float, default=12.5,
                   help="self-test clock in MHz from the PLL (0: the 25 MHz board clock)")
    p.set_defaults(func=cmd_bitstream)

    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
