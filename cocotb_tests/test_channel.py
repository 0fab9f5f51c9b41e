"""Launch the channel cocotb tests on Verilator (one build per configuration)."""
import pytest

from rtl.channel import ChannelTestTop
from rtl.config import preset
from sim.harness import simulate


def _run(config, testcase=None, **env):
    simulate(ChannelTestTop(config), "channel_top", "cocotb_tests.tb_channel", testcase=testcase,
             env={"NEUPIMS_CONFIG": config.to_json(), **{k: str(v) for k, v in env.items()}},
             tag=f"{config.name}-{config.mode.value}-{testcase or 'all'}")


@pytest.mark.xdist_group("channel-tiny")
@pytest.mark.parametrize("mode", ["dual", "blocked"])
def test_tiny_channel(mode):
    _run(preset("tiny", mode=mode))


@pytest.mark.xdist_group("channel-neupims")
def test_neupims_channel_gemv():
    """The paper's channel: 32 banks x 16 lanes, 1 KB rows."""
    _run(preset("channel"))


@pytest.mark.xdist_group("channel-neupims")
def test_neupims_channel_long_gemv_with_refresh(tmp_path):
    """The benchmark program (a program memory full of row sets, with a refresh), twice."""
    import json
    config = preset("channel")
    report = tmp_path / "report.json"
    simulate(ChannelTestTop(config), "channel_top", "cocotb_tests.tb_bench",
             env={"NEUPIMS_CONFIG": config.to_json(), "NEUPIMS_REPORT": str(report),
                  "NEUPIMS_REPEAT": "2"}, tag="long-gemv")
    result = json.loads(report.read_text())
    assert result["refreshes_per_program"] >= 1
    assert result["gemv_results"] == 2 * result["row_sets_per_run"]
    assert result["cycles_per_program"] > config.timing.tREFI
