"""The timing-only elaboration (``DeviceConfig.datapath`` False, DESIGN.md contract 5)
against the full RTL: the same decode programs on ``NpuTop(decode)`` with and without its
datapath (systolic PEs, vector lanes, PIM MAC units, bank / global buffer / scratchpad
storage) give, step by step, the same cycles, stage ends, NPU counters, controller
counters of every channel and command stream of every channel (cycle by cycle); the
timing-only run reports no data check (``bit_exact`` None, "n/a" in the table)."""
from __future__ import annotations

import dataclasses

import pytest

from rtl.config import preset
from rtl.config.dram import DramGeometry
from sim.decode.compiler import compile_decode
from sim.decode.golden import MODES
from sim.decode.report import format_table
from sim.decode.rtl_run import run_on_rtl
from sim.decode.workload import DecodeWorkload
from sim.models import ModelShape

#: two steps of a batch of 2 (the device state and the refresh phase carry over a step
#: boundary) and one step of a batch of 4 with a wide spread of lengths
WORKLOADS = {
    "b2-two-steps": ((3, 9), 2),
    "b4-spread": ((1, 30, 7, 17), 1),
}
#: slow: test_decode_modes runs every one of its 21 full-RTL runs against the timing-only
#: twin in the default suite (these two workloads are among them)
CASES = [pytest.param(name, marks=pytest.mark.slow) for name in WORKLOADS]

#: per step: what must be equal between the two elaborations
SAME = ("cycles", "instructions", "counters", "controllers", "commands_checked",
        "commands_by_channel", "command_digests", "timeline", "tokens")


def compare(full: dict, timing: dict) -> None:
    """Every step of the two results: identical timing, counters and command streams."""
    assert full["complete"] and timing["complete"]
    assert full["datapath"] is True and timing["datapath"] is False
    assert full["bit_exact"] is True
    assert timing["bit_exact"] is None and timing["mismatches"] is None
    assert len(full["steps"]) == len(timing["steps"]) == full["steps_total"]
    for a, b in zip(full["steps"], timing["steps"]):
        for key in SAME:
            assert a[key] == b[key], (a["label"], key, a[key], b[key])
        assert [(s["name"], s["index"], s["end"]) for s in a["stages"]] == \
               [(s["name"], s["index"], s["end"]) for s in b["stages"]], a["label"]
        assert a["bit_exact"] is True and b["bit_exact"] is None and b["mismatches"] is None
        assert b["checks"] == a["checks"] > 0      # read (same clocks), not compared
    for key in ("cycles", "tokens", "commands_checked"):
        assert full[key] == timing[key], key


def run_both(workload: DecodeWorkload, mode: str, base, tmp_path):
    """Compile ``workload`` for ``mode`` on ``base`` and on ``base`` without datapath (the
    same programs), run both on the RTL; (full result, timing-only result)."""
    runs = [compile_decode(workload, mode, base.replace(datapath=datapath))
            for datapath in (True, False)]
    assert runs[0].config.datapath and not runs[1].config.datapath
    assert runs[0].config.mode == runs[1].config.mode
    for a, b in zip(runs[0].steps, runs[1].steps):
        assert a.program == b.program and a.marks == b.marks and a.checks == b.checks
        assert a.cores == b.cores                   # several cores: the others' programs
    assert runs[0].image.words == runs[1].image.words
    return tuple(run_on_rtl(run, tmp_path / f"{'full' if run.config.datapath else 'timing'}.json")
                 for run in runs)


@pytest.mark.xdist_group("decode")       # shares the full builds with test_decode_modes
@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("mode", MODES)
def test_timing_only_matches_full_rtl(mode, name, tmp_path):
    lens, steps = WORKLOADS[name]
    workload = DecodeWorkload("tiny-gpt", lens, steps=steps, seed=len(lens))
    full, timing = run_both(workload, mode, preset("decode"), tmp_path)
    compare(full, timing)
    assert "timing-only" in timing["config_summary"]
    assert "timing-only" not in full["config_summary"]
    table = format_table({"full": full, "timing-only": timing}).splitlines()
    header = next(i for i, line in enumerate(table) if line.startswith("mode "))
    assert table[header].rstrip().endswith("bit-exact")
    assert table[header + 2].startswith("full ") and table[header + 2].endswith(" yes")
    assert table[header + 3].startswith("timing-only ") and table[header + 3].endswith(" n/a")


#: a 32-bank channel (2 ranks x 4 bank groups x 4), the decode preset's address map order
BANKS_32 = DramGeometry(channels=2, ranks=2, bankgroups=4, banks_per_group=4, rows=1024,
                        columns=32)


@pytest.mark.slow
@pytest.mark.xdist_group("decode32")
@pytest.mark.parametrize("mode", MODES)
def test_timing_only_matches_full_rtl_32_banks(mode, tmp_path):
    workload = DecodeWorkload("tiny-gpt", (3, 9), steps=2, seed=2)
    full, timing = run_both(workload, mode, preset("decode").replace(geometry=BANKS_32),
                            tmp_path)
    compare(full, timing)


#: the decode builds' pytest-xdist group (test_decode_modes.GROUPED): every mode shares
#: them, whatever the refresh rate (like the row-buffer mode, a run-time input)
REFRESH_GROUPED = [pytest.param(mode, marks=pytest.mark.xdist_group("decode"))
                   for mode in MODES]


@pytest.mark.parametrize("mode", REFRESH_GROUPED)
def test_timing_only_matches_full_rtl_refresh_heavy(mode, tmp_path):
    """4x refresh (an all-bank REF due every 975 clocks instead of 3,900, the controllers'
    ``refresh_rate`` input; the same Verilator builds as every decode run): refresh holds
    PIM headers and closes row buffers four times as often; the two elaborations still
    agree clock for clock, and the REF count follows the rate."""
    base = preset("decode", refresh_rate=4)
    workload = DecodeWorkload("tiny-gpt", (12, 30, 5, 21), steps=1, seed=4)
    full, timing = run_both(workload, mode, base, tmp_path)
    compare(full, timing)
    assert "4x refresh" in full["config_summary"] and full["config"]["refresh_rate"] == 4
    step = full["steps"][0]
    for counters in step["controllers"]:
        assert counters["REF"] >= step["cycles"] // (base.refresh_interval
                                                      + base.timing.refresh_max_late)
        assert counters["REF"] > 2 * step["cycles"] // base.timing.tREFI + 1


#: the decode preset with 128-byte scratchpad words (2 bursts): four heads of 32, two to a
#: word (queries gathered and outputs scattered from lane 32 of a word); K and query
#: bursts stored from their word slices, V and K tiles loaded one burst per word
#: (``spread``)
WIDE_MODEL = ModelShape("gpt-4xh32", 128, 4, 2, ffn=256, d_head=32)


@pytest.mark.slow       # two Verilator builds of their own (3 min); the interpreter checks
@pytest.mark.xdist_group("decode-wide")     # wide words bit for bit in the default suite
@pytest.mark.parametrize("mode", ["npu-only", "neupims"])
def test_wide_words_on_rtl(mode, tmp_path):
    """The decode compiler on 128-byte scratchpad words, with two weight buffers in the
    array (``neupims``: sub-batches, the PIM's attention; ``npu-only``: the NPU's):
    bit-exact on the full RTL, and the timing-only twin in the same clocks."""
    base = preset("decode")
    config = base.replace(npu=dataclasses.replace(base.npu, word_bytes=128, weight_buffers=2))
    workload = DecodeWorkload(WIDE_MODEL, (3, 40, 17), steps=1, seed=5, vocab=256)
    full, timing = run_both(workload, mode, config, tmp_path)
    compare(full, timing)
    assert full["config"]["npu"]["word_bytes"] == 128
    assert full["config"]["npu"]["weight_buffers"] == 2


#: neupims (NPU and PIM commands overlapping) in the default suite, the others slow
PORT_MODES = [pytest.param(mode, marks=() if mode == "neupims" else pytest.mark.slow)
              for mode in MODES]


@pytest.mark.xdist_group("decode")       # the timing-only decode build, and one of its own
@pytest.mark.parametrize("mode", PORT_MODES)
def test_registered_ports_change_nothing(mode, tmp_path):
    """The builds register NpuTop's reset, mode and command ports
    (``sim.harness.with_registered_ports``, for Verilator's speed): the same program on a
    build without them gives, step by step, the same cycles, stage ends, counters and
    command streams (two steps: the refresh phase carries over the step boundary)."""
    workload = DecodeWorkload("tiny-gpt", (12, 30, 5), steps=2, seed=3)
    run = compile_decode(workload, mode, preset("decode").replace(datapath=False))
    plain = run_on_rtl(run, tmp_path / "plain.json", registered_ports=False)
    registered = run_on_rtl(run, tmp_path / "registered.json")
    assert plain["complete"] and registered["complete"] and plain["steps_total"] == 2
    for a, b in zip(plain["steps"], registered["steps"], strict=True):
        for key in SAME:
            assert a[key] == b[key], (a["label"], key, a[key], b[key])
        assert a["stages"] == b["stages"], a["label"]
    for key in ("cycles", "tokens", "commands_checked"):
        assert plain[key] == registered[key], key
