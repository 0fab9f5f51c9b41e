"""Launch the NpuTop cocotb tests on Verilator: the ``small`` preset (8 banks per channel,
8 x 8 array) with one and with two memory channels (one build each, cached)."""
import dataclasses
import json

import pytest

from rtl.config import preset
from sim.harness import npu_top_verilog, simulate


def npu_config(channels: int):
    base = preset("small")
    return preset("small", geometry=dataclasses.replace(base.geometry, channels=channels))


def run_npu(channels, tmp_path, testcase=None, **env):
    config = npu_config(channels)
    report = tmp_path / "report.json"
    simulate(npu_top_verilog(config), "npu_top", "cocotb_tests.tb_npu", testcase=testcase,
             env={"NEUPIMS_CONFIG": config.to_json(), "NEUPIMS_REPORT": str(report),
                  **{k: str(v) for k, v in env.items()}},
             tag=f"npu-{channels}ch-{tmp_path.name}")
    return json.loads(report.read_text()) if report.exists() else {}


def _summary(channels, result):
    dma = result["dma"]
    print(f"{channels} channel(s): DMA load {dma['load']['gbps_per_channel']:.2f} GB/s per "
          f"channel, store {dma['store']['gbps_per_channel']:.2f} GB/s per channel; "
          f"resident-weights GEMM of {result['util_rows']} rows: "
          f"{100 * result['utilization_gemm']:.1f} % of the GEMM's clocks "
          f"({100 * result['utilization_array_busy']:.1f} % of array-busy clocks); "
          f"Verilator {result['cycles_per_s']:,.0f} clocks/s")


def _check(channels, tmp_path):
    result = run_npu(channels, tmp_path)
    _summary(channels, result)
    assert result["utilization_gemm"] >= 0.9
    assert "tRCD" in result["violation"]
    assert result["dma"]["load"]["gbps_per_channel"] >= 20
    assert result["dma"]["store"]["gbps_per_channel"] >= 20


@pytest.mark.xdist_group("npu")
def test_npu_top_two_channels(tmp_path):
    """GEMMs from HBM bit-exact, illegal programs, DMA bandwidth, utilization, VECTOR
    programs on the built-in VectorEngine (softmax of attention logits, FP16 softmax,
    LayerNorm: bit-exact), PIM GEMV; every command of every channel checked. About 2
    minutes from scratch, most of it the Verilator build (cached afterwards: ~20 s)."""
    _check(2, tmp_path)


@pytest.mark.slow
@pytest.mark.xdist_group("npu")
def test_npu_top_one_channel(tmp_path):
    """The same on one channel (a second build of about 100 s)."""
    _check(1, tmp_path)
