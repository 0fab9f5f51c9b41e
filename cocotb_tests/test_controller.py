"""Launch the controller cocotb tests on Verilator (one build per configuration and mode)."""
import json

import pytest

from rtl.config import preset, refresh_delay_bound
from rtl.controller import ControllerTop
from sim.harness import simulate

#: Every command type the stress runs must have issued, per mode.
PIM_COMMANDS = {"ACT", "RD", "WR", "PRE", "REF", "GWRITE", "G_ACT", "PIM_GEMV", "PIM_PRECHARGE"}
DRAM_COMMANDS = {"ACT", "RD", "WR", "PRE", "REF"}


def small(mode):
    """The 8-bank channel with 16 stored rows per bank (room for a KV cache); one build per
    mode serves every small-channel test."""
    return preset("small", mode=mode, stored_rows=16)


def run_controller(config, testcase, tmp_path, **env):
    report = tmp_path / f"{testcase}.json"
    simulate(ControllerTop(config), "controller_top", "cocotb_tests.tb_controller",
             testcase=testcase,
             env={"NEUPIMS_CONFIG": config.to_json(), "NEUPIMS_REPORT": str(report),
                  **{k: str(v) for k, v in env.items()}},
             tag=f"{config.name}-{config.mode.value}-{testcase}-{tmp_path.name}")
    return json.loads(report.read_text())


def _check_stress(result, mode, config):
    """Coverage of one stress run, and the refresh bound: no REF later than
    ``refresh_delay_bound`` after it fell due (the checker separately enforces tREFI +
    refresh_max_late)."""
    assert result["counters"]["refresh_late_max"] <= refresh_delay_bound(config)
    assert result["counters"]["REF"] >= result["counters"]["cycles"] // config.timing.tREFI - 1
    coverage = result["coverage"]
    wanted = DRAM_COMMANDS if mode == "dram" else PIM_COMMANDS
    assert wanted <= set(coverage["commands"]), coverage["commands"]
    assert coverage["queue_full"] and coverage["row_conflicts"], coverage
    if mode != "dram":
        assert coverage["refresh_deferred_pim"], coverage
        assert result["completed"]["gemvs"] > 0


@pytest.mark.xdist_group("controller-tiny")
@pytest.mark.parametrize("seed", [1, 2])
def test_tiny_stress(seed, tmp_path):
    config = preset("tiny")
    result = run_controller(config, "stress", tmp_path, NEUPIMS_SEED=seed, NEUPIMS_REQUESTS=1500)
    _check_stress(result, "dual", config)


@pytest.mark.xdist_group("controller-small")
@pytest.mark.parametrize("mode", ["dual", "blocked", "dram"])
def test_small_stress(mode, tmp_path):
    """8 banks, 2 ranks: mixed traffic with GEMVs and refresh, in each row-buffer mode."""
    config = small(mode)
    result = run_controller(config, "stress", tmp_path, NEUPIMS_SEED=3, NEUPIMS_REQUESTS=4000)
    _check_stress(result, mode, config)


@pytest.mark.xdist_group("controller-small")
@pytest.mark.parametrize("mode", ["dual", "blocked"])
def test_refresh_defers_pim(mode, tmp_path):
    result = run_controller(small(mode), "refresh_defers_pim", tmp_path)
    assert result["counters"]["pim_refresh_holds"] == 1


def _sample_trace(config, path, count=1500, seed=5):
    """Streaming reads, then random reads and writes over the whole capacity."""
    import random
    rnd = random.Random(seed)
    g = config.geometry
    lines, cycle = [], 0
    for i in range(count // 2):
        lines.append(f"{i * g.burst_bytes:#x} READ {cycle}")
        cycle += 2
    for _ in range(count - count // 2):
        address = rnd.randrange(g.capacity_bytes // g.burst_bytes) * g.burst_bytes
        lines.append(f"{address:#x} {'WRITE' if rnd.random() < 0.3 else 'READ'} {cycle}")
        cycle += rnd.choice([1, 2, 4])
    path.write_text("\n".join(lines) + "\n")
    return lines


@pytest.mark.xdist_group("controller-small")
def test_replay_trace_cli(tmp_path):
    """`neupims replay-trace`: JSON report from the RTL counters, and a command log that the
    independent checker accepts again from the file."""
    import subprocess
    import sys

    from cocotb_tests.timing_checker import TimingChecker, parse_command_log
    config = preset("small")
    trace = tmp_path / "small.trace"
    lines = _sample_trace(config, trace)
    log = tmp_path / "commands.log"
    out = subprocess.run([sys.executable, "-m", "sim.cli", "replay-trace", str(trace),
                          "--config", "small", "--json", "--command-log", str(log)],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout)
    writes = sum(" WRITE " in line for line in lines)
    assert report["reads"] == len(lines) - writes and report["writes"] == writes
    assert report["bytes"] == len(lines) * config.geometry.burst_bytes
    assert report["refreshes"] >= 1 and report["timing_violations"] == 0
    assert 0 < report["bandwidth_gbps"] <= 32.0
    commands = parse_command_log(log.read_text())
    counted = {}
    for cmd in commands:
        counted[cmd.op.name] = counted.get(cmd.op.name, 0) + 1
    assert counted == report["commands"]
    checker = TimingChecker(config.replace(wrap_rows=True))
    for cmd in commands:
        checker.check(cmd)
    assert report["row_hits"] + report["row_misses"] == len(lines)


def test_replay_trace_rejects_bad_input(tmp_path):
    import subprocess
    import sys
    trace = tmp_path / "bad.trace"
    trace.write_text("0x0 READ 0\n0x40 READ 1\n0x41 WRITE 2\n")
    out = subprocess.run([sys.executable, "-m", "sim.cli", "replay-trace", str(trace),
                          "--config", "small"], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "bad.trace:3: address 0x41 is not aligned" in out.stderr


@pytest.mark.xdist_group("controller-small")
@pytest.mark.parametrize("mode", ["dual", "blocked"])
def test_normal_traffic_beside_gemvs(mode, tmp_path):
    """GEMVs with reads and writes running beside them: results bit-exact in both modes;
    DUAL issues normal commands while PIM is active; BLOCKED never lets a RD/WR reach a
    locked bank (the monitor checks every command)."""
    result = run_controller(small(mode), "bench", tmp_path,
                            NEUPIMS_SCENARIO="mixed", NEUPIMS_REQUESTS=1500, NEUPIMS_GEMVS=60)
    assert result["gemvs"] == 60
    during = result["counters"]["normal_during_pim"]
    if mode == "dual":
        assert during > 0
    result["mode_during"] = during


#: Slow stress: four long runs of at least 250,000 cycles each (10^6 cycles in all).
LONG_RUN_CYCLES = 250_000


@pytest.mark.slow
@pytest.mark.xdist_group("controller-small")
@pytest.mark.parametrize("mode, seed", [("dual", 11), ("dual", 12), ("blocked", 13),
                                        ("dram", 14)])
def test_long_stress(mode, seed, tmp_path):
    config = small(mode)
    result = run_controller(config, "stress", tmp_path, NEUPIMS_SEED=seed,
                            NEUPIMS_REQUESTS=45_000, NEUPIMS_MOST_GEMVS=12)
    _check_stress(result, mode, config)
    assert result["counters"]["cycles"] >= LONG_RUN_CYCLES, result["counters"]["cycles"]


@pytest.mark.xdist_group("controller-attention")
@pytest.mark.parametrize("mode", ["dual", "blocked"])
def test_attention_through_the_controller(mode, tmp_path):
    """A request's KV cache laid out as NEUPIMS.md 4 (K token-per-bank, V transposed),
    written with normal writes, then logits and attention as GWRITE / HEADER / PIM_GEMV
    transactions: bit-exact with the golden PIM model."""
    config = small(mode)
    result = run_controller(config, "attention", tmp_path, NEUPIMS_TOKENS=20)
    assert result["gemvs"] > 0 and result["counters"]["GWRITE"] > 0
