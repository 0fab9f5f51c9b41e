"""Launch the systolic-array cocotb tests on Verilator (one build per array size)."""
import json

import pytest

from rtl.config import NpuConfig, preset
from rtl.npu.systolic import SystolicArray
from sim.harness import simulate


def _config(rows, cols):
    return preset("small", npu=NpuConfig(arrays=1, array_rows=rows, array_cols=cols,
                                         vector_lanes=cols))


def _run(rows, cols, tmp_path, **env):
    config = _config(rows, cols)
    report = tmp_path / "report.json"
    simulate(SystolicArray(config, shared_modules=True), "systolic", "cocotb_tests.tb_systolic",
             env={"NEUPIMS_CONFIG": config.to_json(), "NEUPIMS_REPORT": str(report),
                  **{k: str(v) for k, v in env.items()}},
             tag=f"{rows}x{cols}")
    result = json.loads(report.read_text())
    print(f"{rows}x{cols}: utilization {100 * result['utilization']:.1f} % "
          f"({result['macs']} MACs / {result['busy']} busy cycles), "
          f"{result['cycles_per_s']:.0f} cycles/s driven per clock from Python, "
          f"{result['raw_cycles_per_s']:.0f} cycles/s free-running, tiled GEMM "
          f"{100 * result['tiled']['utilization_total']:.1f} % of all cycles")
    assert result["utilization"] >= 0.9
    return result


@pytest.mark.xdist_group("systolic")
@pytest.mark.parametrize("rows,cols", [(8, 8), (4, 6)])
def test_systolic(rows, cols, tmp_path):
    _run(rows, cols, tmp_path)


@pytest.mark.slow
@pytest.mark.xdist_group("systolic")
def test_systolic_16x16(tmp_path):
    """About 100 s, most of it the Verilator build (cached afterwards)."""
    _run(16, 16, tmp_path)
