"""`neupims verilog` and `neupims lint`: deterministic export, signals.json, zero lint warnings.

Each preset is exported twice, once through the library (``sim.lint.export``) and once
through the command line in the same process: the two folders must be byte-identical.
Verilator then lints every block with ``lint_waivers.vlt``; no warning may remain.
The ``channel``/``neupims`` presets are left out to keep this file fast (they take
``make lint CONFIG=...``); ``decode`` runs in the slow suite, and so do the NPU core and
the device of ``small`` (``tiny`` exports every block in the default suite).
"""
import json
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rtl.config import preset  # noqa: E402
from sim import cli  # noqa: E402
from sim.lint import BLOCKS, export, lint_file  # noqa: E402

BLOCK_NAMES = [name for name, _ in BLOCKS]
BIG = ("npu_core", "device")     # 30 s to elaborate on `small`, twice per preset here
# (preset, blocks or None for all). ``decode`` (512 stored rows, 2 channels: the same
# blocks, bigger banks) takes minutes here: in the slow suite.
PRESETS = [("tiny", None),
           ("small", [name for name in BLOCK_NAMES if name not in BIG]),
           pytest.param(("small", None), marks=pytest.mark.slow, id="small-all"),
           pytest.param(("decode", None), marks=pytest.mark.slow, id="decode")]
#: one worker exports each preset once: the tests of a preset share one export per
#: process (pytest-xdist does not keep a parametrized fixture's tests together)
pytestmark = pytest.mark.xdist_group("export")
_EXPORTS: dict = {}


@pytest.fixture(scope="module", params=PRESETS)
def exported(request, tmp_path_factory):
    """(preset, blocks, folder written by export(), folder written by `neupims verilog`)."""
    name, blocks = request.param
    key = (name, tuple(blocks or ()))
    if key not in _EXPORTS:
        library = tmp_path_factory.mktemp(f"{name}-lib")
        export(preset(name), library, blocks=blocks)
        command = tmp_path_factory.mktemp(f"{name}-cli")
        cli.main(["verilog", "--config", name, "--out", str(command)]
                 + (["--blocks", ",".join(blocks)] if blocks else []))
        _EXPORTS[key] = (name, blocks or BLOCK_NAMES, library, command)
    return _EXPORTS[key]


def test_export_is_deterministic(exported):
    _, blocks, first, second = exported
    names = sorted(path.name for path in first.iterdir())
    assert names == sorted([f"{block}.v" for block in blocks] + ["signals.json"])
    assert names == sorted(path.name for path in second.iterdir())
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_signals_json_maps_ports(exported):
    name, blocks, _, folder = exported
    signals = json.loads((folder / "signals.json").read_text())
    assert signals["config"] == name
    assert sorted(signals["blocks"]) == sorted(blocks)
    for block, info in signals["blocks"].items():
        verilog = (folder / f"{block}.v").read_text()
        start = verilog.index(f"module {block}(") + len(f"module {block}(")
        declared = {port.strip() for port in verilog[start:verilog.index(");", start)].split(",")}
        for path, port in info["ports"].items():
            assert port["verilog"] == path.replace(".", "__")
            assert port["verilog"] in declared, (block, path)
            direction = "input" if port["direction"] == "in" else "output"
            assert f"{direction} {port['verilog']};" in verilog.replace(
                f"[{port['width'] - 1}:0] ", ""), (block, path)
    bank = signals["blocks"]["bank"]["ports"]
    assert bank["cmd"]["verilog"] == "cmd" and bank["cmd"]["direction"] == "in"
    assert "op" in bank["cmd"]["fields"]          # a struct port stays one vector
    assert "STATE" in signals["blocks"]["channel_top"]["ports"]["error_code"]["enum"]
    top = signals["blocks"]["channel_top"]["ports"]
    assert {"prog_start", "running", "cmd_log_payload", "backdoor_data"} <= set(top)
    assert signals["blocks"]["channel_top"]["implicit_ports"] == ["clk", "rst"]
    if "device" in blocks:      # the NPU core on every channel's controller
        device = signals["blocks"]["device"]["ports"]
        channels = preset(name).geometry.channels
        assert {"program_data", "start", "done", "error_code", "counters"} <= set(device)
        assert {f"cmd.{c}" for c in range(channels)} <= set(device)
        assert "dma_busy" in device["counters"]["fields"]


@pytest.mark.parametrize("block", BLOCK_NAMES)
def test_lint_clean(exported, block):
    _, blocks, folder, _ = exported
    if block not in blocks:
        pytest.skip(f"{block} is exported for this preset in the slow suite")
    assert lint_file(folder / f"{block}.v", block) == []


def test_lint_reports_warnings(exported, tmp_path):
    """Without the waivers the generated code does warn: the lint run is not vacuous."""
    _, _, folder, _ = exported
    empty = tmp_path / "none.vlt"
    empty.write_text("`verilator_config\n")
    problems = lint_file(folder / "global_buffer.v", "global_buffer", waivers=empty)
    assert problems and all(line.startswith("%Warning") for line in problems)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["channel", "neupims"])
def test_large_presets_export_lint_clean(name, tmp_path):
    """The 32-bank presets too (every preset exports): each block lint-clean. Their NPU is
    the paper's (128 x 128 arrays): its full-datapath Verilog (a 1.1-million-line array of
    16,384 PE instances) exports (`make verilog`, about 15 minutes) but Verilator's lint
    of it needs more than this machine's 24 GB, so the NPU blocks are linted here as
    elaborated without their datapath (the same control logic; the datapath modules are
    the ones linted at small sizes above)."""
    written = export(preset(name), tmp_path, npu_timing_only=True)
    assert sorted(written) == sorted(BLOCK_NAMES)
    for block, path in written.items():
        assert lint_file(path, block) == [], f"{name}/{block}"


def test_unknown_block_is_named(capsys):
    with pytest.raises(SystemExit):
        cli.main(["verilog", "--config", "tiny", "--blocks", "bank,npu"])
    assert "unknown block(s) npu" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown block"):
        export(preset("tiny"), Path("unused"), blocks=["nope"])


def test_npu_timing_only_keeps_the_other_blocks_whole(tmp_path):
    """`--npu-timing-only`: the NPU blocks without datapath, the PIM MAC unit in full."""
    cli.main(["verilog", "--config", "tiny", "--npu-timing-only", "--blocks",
              "pim_mac,systolic_array", "--out", str(tmp_path)])
    assert "_add" in (tmp_path / "pim_mac.v").read_text()
    full = export(preset("tiny"), tmp_path / "full", blocks=["systolic_array"])["systolic_array"]
    assert len((tmp_path / "systolic_array.v").read_text()) < len(full.read_text()) / 2


def test_timing_only_device_exports_lint_clean(tmp_path):
    """`--timing-only`: the device without its datapath (no vector lanes, no PIM MAC
    adders), still lint-clean."""
    cli.main(["verilog", "--config", "tiny", "--timing-only", "--blocks", "device,pim_mac",
              "--out", str(tmp_path)])
    signals = json.loads((tmp_path / "signals.json").read_text())
    assert "timing-only" in signals["summary"]
    modules = re.findall(r"^module ([^(\s]+)", (tmp_path / "device.v").read_text(), re.M)
    assert r"\device.core.sequencer" in modules and r"\device.channel0.controller" in modules
    assert not [name for name in modules if ".lane0" in name or "_add" in name]
    for block in ("device", "pim_mac"):
        assert lint_file(tmp_path / f"{block}.v", block) == []
