"""Launch the multi-core NpuTop tests (``tb_multicore``) on Verilator: the ``tiny`` preset
with two 4 x 4 arrays (two NPU cores) on two channels, 32 stored rows per bank."""
import dataclasses
import json

import pytest

from rtl.config import ConfigError, preset
from rtl.npu.top import NpuTop
from sim.harness import npu_top_verilog, simulate


def multicore_config(arrays: int = 2):
    base = preset("tiny")
    return base.replace(geometry=dataclasses.replace(base.geometry, channels=2),
                        npu=dataclasses.replace(base.npu, arrays=arrays), stored_rows=32)


@pytest.mark.xdist_group("multicore")
def test_two_cores_share_two_channels(tmp_path):
    """GEMMs bit-exact on each core alone and on both at once (faster than one after the
    other), PIM GEMV results routed to their core, an error named with its core; every
    command timing-checked. About a minute from scratch (the Verilator build)."""
    config = multicore_config()
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
