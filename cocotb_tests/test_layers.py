"""Whole models from a few simulated layers (``sim.decode.layers``), checked on the RTL: a
6-layer model run in full against its first 2 layers run and the steady-state layer
repeated, in every mode (``decode`` preset timing-only, every command timing-checked).
Layers differ a little (each layer's KV cache and weights sit in other DRAM rows, refresh
falls elsewhere), so the bound is a tolerance, printed with both numbers when broken."""
from __future__ import annotations

import pytest

from rtl.config import preset
from sim.decode.compiler import compile_decode
from sim.decode.golden import MODES
from sim.decode.layers import extrapolate, truncated
from sim.decode.rtl_run import run_on_rtl
from sim.decode.workload import DecodeWorkload
from sim.models import ModelShape

DEEP = ModelShape("deep-gpt", 64, 2, 6, ffn=256, d_head=32)
LENS = (1, 30, 7, 17)
#: |extrapolated - measured| / measured at most this (measured: 0.03 % - 0.73 %)
TOLERANCE = 0.015


@pytest.mark.xdist_group("decode")       # the timing-only decode build of test_decode_modes
@pytest.mark.parametrize("mode", MODES)
def test_two_layers_extrapolate_to_six(mode, tmp_path):
    config = preset("decode").replace(datapath=False)
    steps = {}
    for layers in (2, DEEP.layers):
        run = compile_decode(DecodeWorkload(truncated(DEEP, layers), LENS), mode, config)
        result = run_on_rtl(run, tmp_path / f"{layers}.json", show=lambda line: None)
        assert result["complete"] and result["timing_violations"] == 0
        steps[layers] = result["steps"][0]
    short, full = steps[2], steps[DEEP.layers]
    estimate = extrapolate(short["stages"], mode, 2, DEEP.layers, short["cycles"])
    assert estimate["cycles_run"] == short["cycles"]
    measured = full["cycles"]
    error = (estimate["cycles"] - measured) / measured
    assert abs(error) <= TOLERANCE, (f"{mode}: {DEEP.layers} layers measured {measured:,} "
                                     f"cycles, extrapolated from 2: {estimate['cycles']:,} "
                                     f"({100 * error:+.2f} %)")
    assert estimate["cycles"] > short["cycles"] + 3 * estimate["unit_cycles"]


@pytest.mark.xdist_group("decode")
def test_full_scale_runs_start_without_the_image_clocks(tmp_path):
    """``image_clocks=False`` (the full-scale points): a timing-only run skips the HBM
    image's load; the step is the same program, only the refresh phase moves. The same
    program compiled without values (as the full-scale points are) runs identically."""
    config = preset("decode").replace(datapath=False)
    run = compile_decode(DecodeWorkload(truncated(DEEP, 2), LENS), "neupims", config)
    with_load = run_on_rtl(run, tmp_path / "load.json", show=lambda line: None)
    without = run_on_rtl(run, tmp_path / "none.json", show=lambda line: None,
                         image_clocks=False)
    assert with_load["load_image"]["bursts"] == len(run.image.words) > 0
    assert without["load_image"]["bursts"] == 0
    for result in (with_load, without):
        assert result["complete"] and result["timing_violations"] == 0
    a, b = with_load["steps"][0], without["steps"][0]
    assert a["instructions"] == b["instructions"]
    assert [s["name"] for s in a["stages"]] == [s["name"] for s in b["stages"]]
    assert abs(a["cycles"] - b["cycles"]) <= TOLERANCE * a["cycles"], (a["cycles"], b["cycles"])
    # compiled without values (the full-scale points' compile): the same run, clock for clock
    lean = compile_decode(DecodeWorkload(truncated(DEEP, 2), LENS), "neupims", config,
                          values=False)
    with pytest.raises(ValueError, match="image_clocks=False"):
        run_on_rtl(lean, tmp_path / "lean_load.json", show=lambda line: None)
    c = run_on_rtl(lean, tmp_path / "lean.json", show=lambda line: None,
                   image_clocks=False)["steps"][0]
    for key in ("cycles", "stages", "counters", "controllers", "command_digests", "checks"):
        assert c[key] == b[key], key
