"""Every mode on three small workloads, compiled and run on the RTL (NpuTop on Verilator,
every DRAM command timing-checked): hidden states and logits of every step bit-exact with
the golden decode; stage cycles add up to the step; the neupims stages are A-F."""
from __future__ import annotations

import pytest

from sim.decode.compiler import compile_decode
from sim.decode.golden import MODES
from sim.decode.rtl_run import run_on_rtl
from sim.decode.workload import DecodeWorkload

#: batch sizes 2, 4 and 6; a short pair over two steps, a wide spread, longer contexts
WORKLOADS = {
    "b2-two-steps": ((3, 9), 2),
    "b4-spread": ((1, 30, 7, 17), 1),
    "b6-long": ((40, 63, 12, 55, 5, 70), 1),
}


@pytest.mark.xdist_group("decode")
@pytest.mark.parametrize("name", WORKLOADS)
@pytest.mark.parametrize("mode", MODES)
def test_mode_on_rtl(mode, name, tmp_path):
    lens, steps = WORKLOADS[name]
    workload = DecodeWorkload("tiny-gpt", lens, steps=steps, seed=len(lens))
    run = compile_decode(workload, mode)
    result = run_on_rtl(run, tmp_path / "result.json")
    assert result["complete"] and result["timing_violations"] == 0
    assert result["commands_checked"] > 0
    assert result["bit_exact"], result["steps"][0].get("first_mismatches")
    for step in result["steps"]:
        assert step["bit_exact"] and step["mismatches"] == 0 and step["checks"] > 0
        stages = [s["name"] for s in step["stages"]]
        assert 0 <= step["cycles"] - sum(s["cycles"] for s in step["stages"]) < 8   # the HALT
        if mode == "neupims":
            assert stages == ["load", "A", "B", "C", "D", "E", "F", "head"]
        else:
            assert stages == ["load"] + ["QKV", "MHA", "Proj/FFN"] * 2 + ["head"]
        pim = sum(c["PIM_GEMV"] for c in step["controllers"])
        assert (pim == 0) == (mode == "npu-only")
        if mode == "npu-only":
            assert step["counters"]["dma_bytes_read"] > 0
