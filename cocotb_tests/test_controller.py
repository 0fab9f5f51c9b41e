"""Launch the controller cocotb tests on Verilator (one build per configuration and mode)."""
import json

import pytest

from rtl.config import preset
from rtl.controller import ControllerTop
from sim.harness import simulate

#: Every command type the stress runs must have issued, per mode.
PIM_COMMANDS = {"ACT", "RD", "WR", "PRE", "REF", "GWRITE", "G_ACT", "PIM_GEMV", "PIM_PRECHARGE"}
DRAM_COMMANDS = {"ACT", "RD", "WR", "PRE", "REF"}


def run_controller(config, testcase, tmp_path, **env):
    report = tmp_path / f"{testcase}.json"
    simulate(ControllerTop(config), "controller_top", "cocotb_tests.tb_controller",
             testcase=testcase,
             env={"NEUPIMS_CONFIG": config.to_json(), "NEUPIMS_REPORT": str(report),
                  **{k: str(v) for k, v in env.items()}},
             tag=f"{config.name}-{config.mode.value}-{testcase}-{tmp_path.name}")
    return json.loads(report.read_text())


def _check_stress(result, mode):
    coverage = result["coverage"]
    wanted = DRAM_COMMANDS if mode == "dram" else PIM_COMMANDS
    assert wanted <= set(coverage["commands"]), coverage["commands"]
    assert coverage["queue_full"] and coverage["row_conflicts"], coverage
    if mode != "dram":
        assert coverage["refresh_deferred_pim"], coverage
        assert result["completed"]["gemvs"] > 0


@pytest.mark.xdist_group("controller-tiny")
@pytest.mark.parametrize("seed", [1, 2])
def test_tiny_stress(seed, tmp_path):
    result = run_controller(preset("tiny"), "stress", tmp_path, NEUPIMS_SEED=seed,
                            NEUPIMS_REQUESTS=1500)
    _check_stress(result, "dual")
