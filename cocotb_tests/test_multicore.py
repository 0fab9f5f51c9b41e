"""Launch the multi-core NpuTop tests (``tb_multicore``) on Verilator: the ``tiny`` preset
with two 4 x 4 arrays (two NPU cores) on two channels, 32 stored rows per bank."""
import dataclasses
import json

import pytest

from rtl.config import ConfigError, preset
from rtl.npu.top import NpuTop
from sim.harness import npu_top_verilog, simulate
from sim.npu_programs import row_words


def multicore_config(arrays: int = 2, response_buffer: int = 0, dma_responses: int = 1):
    base = preset("tiny")
    return base.replace(geometry=dataclasses.replace(base.geometry, channels=2),
                        npu=dataclasses.replace(base.npu, arrays=arrays,
                                                response_buffer=response_buffer,
                                                dma_responses=dma_responses),
                        stored_rows=32)


@pytest.mark.xdist_group("multicore")
@pytest.mark.parametrize("buffer, lanes", [(0, 1), (2, 1), (2, 2)])
def test_two_cores_share_two_channels(tmp_path, buffer, lanes):
    """GEMMs bit-exact on each core alone and on both at once (faster than one after the
    other), PIM GEMV results routed to their core, an error named with its core, SYNC
    between the cores (a store on one, then a load on the other); every
    command timing-checked; responses routed straight and through 2-deep buffers per
    channel and core, and with two DMA response lanes per core. About a minute from
    scratch (the Verilator build)."""
    config = multicore_config(response_buffer=buffer, dma_responses=lanes)
    report = tmp_path / "report.json"
    simulate(npu_top_verilog(config, "npu_multicore"), "npu_multicore", "cocotb_tests.tb_multicore",
             env={"NEUPIMS_CONFIG": config.to_json(), "NEUPIMS_REPORT": str(report)},
             tag=f"multicore-{tmp_path.name}")
    result = json.loads(report.read_text())
    print(f"two cores: alone {result['alone']} clocks, together {result['together']}")
    assert result["together"] < sum(result["alone"])


def test_too_few_tags_names_the_field():
    base = multicore_config()
    config = base.replace(npu=dataclasses.replace(base.npu, arrays=4),
                          controller=dataclasses.replace(base.controller, tags=64))
    with pytest.raises(ConfigError, match="NpuConfig.dma_in_flight"):
        NpuTop(config)


@pytest.mark.xdist_group("multicore")
@pytest.mark.parametrize("buffer, datapath, lanes", [(0, True, 1), (2, True, 1), (2, False, 1),
                                                    (2, True, 2)])
def test_device_benchmark_on_two_cores(buffer, datapath, lanes):
    """``neupims bench device`` on the same builds (and a timing-only one, whose response
    buffers keep tags only): both cores stream weight tiles under their GEMMs; MACs,
    bytes and clocks from the RTL counters add up."""
    from sim.device_bench import bench_device, format_device
    config = multicore_config(response_buffer=buffer,
                              dma_responses=lanes).replace(datapath=datapath)
    tiles, rows = 6, 16
    report = bench_device(config, tiles=tiles, rows=rows, name="npu_multicore")
    print(format_device(report))
    npu, wb, burst = config.npu, config.npu.word_bytes, config.geometry.burst_bytes
    K, W = 2 * npu.array_rows, npu.array_cols
    words = {"A": rows * row_words(K, 16, wb), "W": K * row_words(W, 16, wb),
             "C": rows * row_words(W, 32, wb)}
    counters = report["counters"]
    assert counters["dma_bytes_read"] == npu.arrays * (words["A"] + tiles * words["W"]) * wb
    assert counters["dma_bytes_written"] == npu.arrays * words["C"] * wb
    assert counters["macs"] == npu.arrays * tiles * rows * K * W
    assert report["cycles"] > tiles * 2 * rows and 0 < report["array_util"] <= 1
    assert report["commands"] >= counters["dma_bytes_read"] // burst and report["cycles_per_s"] > 0
