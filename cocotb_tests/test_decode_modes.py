"""Every mode on eight small workloads, compiled and run on the RTL (NpuTop on Verilator,
every DRAM command timing-checked): hidden states and logits of every step bit-exact with
the golden decode; stage cycles add up to the step; the neupims stages are A-F.

Each run is also the correlation suite of the fast timing path (issue 6, DESIGN.md
contract 5): the same programs on the timing-only elaboration (``datapath=False``) must
give, step by step, the same cycles, stage ends, NPU and controller counters and command
streams (``test_timing_only.compare``): 8 workloads x 3 modes = 24 points, plus 3
refresh-heavy ones (4x refresh, the same builds) in ``test_timing_only.py`` and the slow
32-bank ones there."""
from __future__ import annotations

import pytest

from rtl.config import preset
from sim.decode.golden import MODES
from sim.decode.workload import DecodeWorkload

from .test_timing_only import compare, run_both

#: batch sizes 1 to 8; first tokens, short pairs over two steps, wide spreads, contexts
#: past the GEMM accumulator (npu-only cuts its logit GEMM), an Azure draw, and heads of
#: 64 (two scratchpad words and K bursts per head; npu-only chains its logit GEMMs)
WORKLOADS = {
    "b2-two-steps": ((3, 9), 2),
    "b4-spread": ((1, 30, 7, 17), 1),
    "b6-long": ((40, 63, 12, 55, 5, 70), 1),
    "b1-first-token": ((0,), 2),
    "b3-past-accumulator": ((150, 20, 200), 1),
    "b5-equal": ((24, 24, 24, 24, 24), 1),
    "b8-azure": ((82, 71, 95, 27, 81, 69, 79, 86), 1),
    "b3-head64": ((150, 9, 31), 1),
}
#: the model of each workload (default ``tiny-gpt``): one head of 64, two words and bursts
MODEL = {"b3-head64": "tiny-gpt-h64"}


#: one pytest-xdist group for the decode builds (full and timing-only): every mode runs on
#: them (the row-buffer mode is a run-time input), so one worker builds once and runs all
GROUPED = [pytest.param(mode, marks=pytest.mark.xdist_group("decode")) for mode in MODES]


@pytest.mark.parametrize("name", WORKLOADS)
@pytest.mark.parametrize("mode", GROUPED)
def test_mode_on_rtl(mode, name, tmp_path):
    lens, steps = WORKLOADS[name]
    workload = DecodeWorkload(MODEL.get(name, "tiny-gpt"), lens, steps=steps, seed=len(lens))
    result, timing = run_both(workload, mode, preset("decode"), tmp_path)
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
        assert all(c["REF"] >= 2 for c in step["controllers"])    # refresh runs throughout
        if mode == "npu-only":
            assert step["counters"]["dma_bytes_read"] > 0
    compare(result, timing)


@pytest.mark.xdist_group("decode")
@pytest.mark.parametrize("name", ["b3-past-accumulator",
                                  pytest.param("b3-head64", marks=pytest.mark.slow)])
def test_npu_weights_form_on_rtl(name, tmp_path):
    """npu-only in its ``weights`` form (``sim.decode.npu_kv``: q . K^T and s . V with K
    and V as the array's weights; ``auto`` picks it on large arrays, the paper's device)
    on the decode builds: bit-exact on the full RTL, every command timing-checked, and the
    timing-only build in the same clocks."""
    lens, steps = WORKLOADS[name]
    workload = DecodeWorkload(MODEL.get(name, "tiny-gpt"), lens, steps=steps, seed=len(lens),
                              npu_attention="weights")
    result, timing = run_both(workload, "npu-only", preset("decode"), tmp_path)
    assert result["complete"] and result["timing_violations"] == 0
    assert result["commands_checked"] > 0 and result["bit_exact"]
    assert all(step["bit_exact"] and step["checks"] > 0 for step in result["steps"])
    compare(result, timing)


def _overlapping(config):
    import dataclasses
    return config.replace(npu=dataclasses.replace(config.npu, dma_overlap=True))


def _attention(result) -> int:
    return sum(s["cycles"] for step in result["steps"] for s in step["stages"]
               if s["name"] in ("MHA", "C", "D"))


@pytest.mark.xdist_group("decode")
def test_dma_overlap_on_rtl(tmp_path):
    """``NpuConfig.dma_overlap`` (the DMA takes a command while others still issue to
    other channels; the KV append's loads and stores go in turns over the channels) on
    the timing-only RTL (a build of its own; the full RTL bit-exact is in the slow test
    below, the DMA's data path bit for bit in ``tests/test_npu_core.py``): it completes,
    every command timing-checked, with the attention stages shorter than on the decode
    preset's DMA (the timing-only build the tests above share) for the same workload (8
    requests over the 2 channels), and the other stages as long."""
    from sim.decode.compiler import compile_decode
    from sim.decode.rtl_run import run_on_rtl
    lens, steps = WORKLOADS["b8-azure"]
    workload = DecodeWorkload("tiny-gpt", lens, steps=steps, seed=len(lens))
    base = preset("decode").replace(datapath=False)
    result, plain = (run_on_rtl(compile_decode(workload, "npu+pim", config), tmp_path / name)
                     for config, name in ((_overlapping(base), "overlap.json"),
                                          (base, "plain.json")))
    for run in (result, plain):
        assert run["complete"] and run["timing_violations"] == 0 and run["commands_checked"] > 0
    assert _attention(result) < _attention(plain), (_attention(result), _attention(plain))
    stages = [[(s["name"], s["cycles"]) for s in run["steps"][0]["stages"]
               if s["name"] not in ("MHA", "head")] for run in (result, plain)]
    assert stages[0] == stages[1]


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_dma_overlap_timing_only_matches_full_rtl(mode, tmp_path):
    """``dma_overlap`` on the full RTL: bit-exact, and the timing-only elaboration in the
    same clocks, counters and command streams (the correlation suite's check, on builds
    of their own)."""
    lens, steps = WORKLOADS["b8-azure"]
    workload = DecodeWorkload("tiny-gpt", lens, steps=steps, seed=len(lens))
    result, timing = run_both(workload, mode, _overlapping(preset("decode")), tmp_path)
    assert result["complete"] and result["timing_violations"] == 0 and result["bit_exact"]
    compare(result, timing)


#: Several NPU cores (``sim.decode.compiler``: GEMMs split by output columns, attention by
#: channel, exchanges through the HBM around SYNCs): slow, their own Verilator builds.
CORE_WORKLOADS = {"b8-azure x2": ("tiny-gpt", (82, 71, 95, 27, 81, 69, 79, 86), 1, 2),
                  "b3-head64 x2": ("tiny-gpt-h64", (150, 9, 31), 2, 2)}


@pytest.mark.slow
@pytest.mark.parametrize("name", CORE_WORKLOADS)
@pytest.mark.parametrize("mode", GROUPED)
def test_cores_on_rtl(mode, name, tmp_path):
    """Every core's checks bit-exact on the full RTL, the timing-only build identical,
    every core ran (its own GEMMs), and core 0's stage ends are the shared barriers."""
    from sim.decode.compiler import with_cores
    model, lens, steps, cores = CORE_WORKLOADS[name]
    workload = DecodeWorkload(model, lens, steps=steps, seed=len(lens))
    result, timing = run_both(workload, mode, with_cores(preset("decode"), cores), tmp_path)
    assert result["complete"] and result["timing_violations"] == 0
    assert result["bit_exact"], result["steps"][0].get("first_mismatches")
    for step in result["steps"]:
        assert step["bit_exact"] and step["checks"] > 0
        stages = [s["name"] for s in step["stages"]]
        assert stages == (["load", "A", "B", "C", "D", "E", "F", "head"] if mode == "neupims"
                          else ["load"] + ["QKV", "MHA", "Proj/FFN"] * 2 + ["head"])
        assert 0 <= step["cycles"] - sum(s["cycles"] for s in step["stages"]) < 8
        assert step["counters"]["sync_wait"] > 0          # the cores met at the SYNCs
    compare(result, timing)
