"""``neupims reproduce`` on the RTL (slow: new Verilator builds of the slice).

- A small grid on the slice (timing-only): every point complete, every DRAM command
  checked with zero violations, stages adding up to the step, the ratios and utilization
  of the report derived from the points' own counters.
- The correlation of the slice itself (32-bank channels with 1 KiB rows, a 16 x 16 array,
  16 vector lanes; the default correlation suite runs the ``decode`` preset), with the
  memories the full RTL can hold (512 stored rows, 32,768 scratchpad words, 8,192
  instructions; sizes that do not enter any timing): the full RTL and the timing-only
  build give identical cycles, stage ends, counters and command streams on a small
  workload of a slice model in every mode, with a context over two V chunks; the same
  for the slice with 256-byte scratchpad words and 64 vector lanes on heads of 128.
"""
from __future__ import annotations

import dataclasses

import pytest

from sim.decode.golden import MODES
from sim.decode.workload import DecodeWorkload
from sim.models import get_model
from sim.reproduce import Grid, format_report, run_grid, slice_config

from .test_timing_only import compare, run_both

pytestmark = pytest.mark.slow


def test_small_grid_on_the_slice(tmp_path):
    grid = Grid(models=("gpt3-7b-s32",), batches=(2, 4), datasets=("alpaca-like",),
                reference=("gpt3-7b-s32", 4, "alpaca-like"))
    lines = []
    report = run_grid(grid, tmp_path, jobs=2, log=lines.append, precheck=True)
    assert len(lines) == 2 + 6 and "6/6" in "".join(lines)     # precheck, grid, 6 points
    config = slice_config()
    assert len(report["points"]) == 6
    for p in report["points"]:
        assert p["complete"] and p["timing_violations"] == 0 and p["commands_checked"] > 0
        assert p["tokens"] == p["batch"]
        assert p["tokens_per_s"] == pytest.approx(p["tokens"] * config.timing.clock_hz
                                                  / p["cycles"])
        assert 0 <= p["cycles"] - sum(p["stages"].values()) < 8
        assert (p["pim_util"] == 0) == (p["mode"] == "npu-only")
        assert 0 < p["npu_util"] < 1
        if p["mode"] == "neupims":
            assert list(p["stages"]) == ["load", "A", "B", "C", "D", "E", "F", "head"]
    by = {(p["batch"], p["mode"]): p for p in report["points"]}
    for r in report["ratios"]:
        assert r["neupims/npu+pim"] == pytest.approx(
            by[(r["batch"], "neupims")]["tokens_per_s"] / by[(r["batch"], "npu+pim")]["tokens_per_s"])
    text = format_report(report)
    assert "gpt3-7b-s32" in text and "The paper's models at full scale" in text
    again = run_grid(grid, tmp_path, jobs=2, log=lines.append, resume=True)
    assert again["points"] == report["points"] and "6 finished points taken" in lines[-2]


#: the slice (16 lanes on 64-byte words, heads of 32) and the slice on 256-byte words with
#: 64 lanes (``neupims reproduce --word-bytes 256 --lanes 64``, heads of 128): (word
#: bytes, lanes, model, scratchpad words the full RTL holds)
SLICES = {"slice": (64, 16, "gpt3-7b-s32", 32768),
          "wide": (256, 64, "gpt3-7b-s32-h128", 16384)}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", SLICES)
def test_slice_timing_only_matches_full_rtl(name, mode, tmp_path):
    word_bytes, lanes, model, words = SLICES[name]
    base = slice_config(word_bytes=word_bytes, lanes=lanes)
    base = base.replace(datapath=True, stored_rows=512,
                        geometry=dataclasses.replace(base.geometry, rows=1024),
                        npu=dataclasses.replace(base.npu, scratchpad_words=words,
                                                instruction_words=8192))
    workload = DecodeWorkload(get_model(model), (5, 530, 17), steps=1, seed=4)
    full, timing = run_both(workload, mode, base, tmp_path)
    compare(full, timing)
