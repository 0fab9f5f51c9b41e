"""``neupims bench controller``: bandwidth and COMP rate of one channel's controller RTL.

Scenarios (each a cocotb run of ``cocotb_tests.tb_controller.bench``, every command
through the timing checker, every read and GEMV result checked):
  seq_read     reads of consecutive 64-byte addresses (row after row, bank after bank)
  random_read  reads of random addresses (random bank, stored row and column)
  long_gemv    one header of many full-row PIM_GEMVs on an open row set, no normal traffic
  mixed        the same GEMVs with random reads and writes running beside them, in DUAL
               and in BLOCKED mode
Figures come from the RTL counters (RD/WR, COMPs) and the issued command stream."""
from __future__ import annotations

from rtl.config import DeviceConfig

from .replay import build_controller, run_controller_test


def bench_controller(config: DeviceConfig, requests: int = 8000, gemvs: int = 200,
                     show=print) -> dict:
    results = {"config": config.summary(), "requests": requests, "gemvs": gemvs, "rows": []}
    builds = {}

    def scenario(name, mode):
        cfg = config.replace(mode=mode)
        if mode not in builds:
            builds[mode] = build_controller(cfg, show)
        show(f"scenario {name} ({mode}) ...")
        report = run_controller_test(builds[mode], cfg, "bench",
                                     {"NEUPIMS_SCENARIO": name, "NEUPIMS_REQUESTS": requests,
                                      "NEUPIMS_GEMVS": gemvs}, f"{name} {mode}", show,
                                     tag=f"bench-{name}-{mode}")
        row = {"scenario": name, "mode": mode,
               "normal_gbps": report["normal_gbps"] if report["bytes"] else 0.0,
               "peak_gbps": report["peak_gbps"],
               "comp_rate": report["comp_rate"]["overall"],
               "comp_rate_steady": report["comp_rate"]["steady"],
               "gemvs_done": report["gemvs"],
               "cycles": report["counters"]["cycles"],
               "row_hits": report["counters"]["row_hits"],
               "row_misses": report["counters"]["row_misses"],
               "normal_during_pim": report["counters"]["normal_during_pim"],
               "refreshes": report["counters"]["REF"],
               "sim_cycles_per_s": report["sim_cycles_per_s"]}
        row["bandwidth_fraction"] = row["normal_gbps"] / row["peak_gbps"]
        results["rows"].append(row)
        return row

    scenario("seq_read", "dual")
    scenario("random_read", "dual")
    scenario("long_gemv", "dual")
    scenario("mixed", "dual")
    scenario("mixed", "blocked")
    return results


def format_bench(results: dict) -> str:
    lines = [f"Controller benchmark: {results['config']}",
             f"  {results['requests']:,} normal requests per scenario, {results['gemvs']} "
             "full-row PIM_GEMVs in the PIM scenarios",
             "",
             "| scenario | mode | normal GB/s | of peak | COMP rate (overall) | COMP rate "
             "(row set open) | GEMVs | normal cmds during PIM | Verilator cycles/s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        pim = r["gemvs_done"] > 0
        lines.append(
            f"| {r['scenario']} | {r['mode']} | "
            + (f"{r['normal_gbps']:.2f} | {100 * r['bandwidth_fraction']:.1f} % | "
               if r["normal_gbps"] else "- | - | ")
            + (f"{100 * r['comp_rate']:.1f} % | {100 * r['comp_rate_steady']:.1f} % | "
               if pim else "- | - | ")
            + f"{r['gemvs_done']} | {r['normal_during_pim']:,} | {r['sim_cycles_per_s']:,.0f} |")
    return "\n".join(lines)
