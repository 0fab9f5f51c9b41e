"""Launch the decoder-block cocotb test (``cocotb_tests.tb_decoder_block``) on the
Verilator ``NpuTop`` build of ``cocotb_tests/test_npu.py``'s two-channel ``small`` config
(same config: the cached build is reused; two channels so that the block's 408 HBM bursts
lie in the rows the RTL stores)."""
import json

import pytest

from sim.harness import npu_top_verilog, simulate

from cocotb_tests.test_npu import npu_config


@pytest.mark.xdist_group("npu")
def test_decoder_block_npu_top(tmp_path):
    config = npu_config(2)
    report = tmp_path / "report.json"
    simulate(npu_top_verilog(config), "npu_top", "cocotb_tests.tb_decoder_block",
             env={"NEUPIMS_CONFIG": config.to_json(), "NEUPIMS_REPORT": str(report)},
             tag=f"decoder-{tmp_path.name}")
    result = json.loads(report.read_text())
    print(f"decoder block on NpuTop (Verilator): {result['cycles']} clocks, rel err vs "
          f"float64 {result['rel_err']:.3g}, {result['cycles_per_s']:,.0f} clocks/s")
    assert result["rel_err"] < 2e-3
