"""`neupims verilog` and `neupims lint`: deterministic export, signals.json, zero lint warnings.

Each preset is exported twice, once through the library (``sim.lint.export``) and once
through the command line in the same process: the two folders must be byte-identical.
Verilator then lints every block with ``lint_waivers.vlt``; no warning may remain.
The ``channel``/``neupims`` presets are left out to keep this file fast (they take
``make lint CONFIG=...``); ``decode`` runs in the slow suite.
"""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rtl.config import preset  # noqa: E402
from sim import cli  # noqa: E402
from sim.lint import BLOCKS, export, lint_file  # noqa: E402

# ``decode`` (256 stored rows, 2 channels: the same blocks, bigger banks) takes about a
# minute here: in the slow suite.
PRESETS = ["tiny", "small", pytest.param("decode", marks=pytest.mark.slow)]
BLOCK_NAMES = [name for name, _ in BLOCKS]


@pytest.fixture(scope="module", params=PRESETS)
def exported(request, tmp_path_factory):
    """(preset, folder written by export(), folder written by `neupims verilog`)."""
    name = request.param
    library = tmp_path_factory.mktemp(f"{name}-lib")
    export(preset(name), library)
    command = tmp_path_factory.mktemp(f"{name}-cli")
    cli.main(["verilog", "--config", name, "--out", str(command)])
    return name, library, command


def test_export_is_deterministic(exported):
    _, first, second = exported
    names = sorted(path.name for path in first.iterdir())
    assert names == sorted([f"{block}.v" for block in BLOCK_NAMES] + ["signals.json"])
    assert names == sorted(path.name for path in second.iterdir())
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_signals_json_maps_ports(exported):
    name, _, folder = exported
    signals = json.loads((folder / "signals.json").read_text())
    assert signals["config"] == name
    assert sorted(signals["blocks"]) == sorted(BLOCK_NAMES)
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


@pytest.mark.parametrize("block", BLOCK_NAMES)
def test_lint_clean(exported, block):
    _, folder, _ = exported
    assert lint_file(folder / f"{block}.v", block) == []


def test_lint_reports_warnings(exported, tmp_path):
    """Without the waivers the generated code does warn: the lint run is not vacuous."""
    _, folder, _ = exported
    empty = tmp_path / "none.vlt"
    empty.write_text("`verilator_config\n")
    problems = lint_file(folder / "global_buffer.v", "global_buffer", waivers=empty)
    assert problems and all(line.startswith("%Warning") for line in problems)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["channel", "neupims"])
def test_large_presets_export_lint_clean(name, tmp_path):
    """The 32-bank presets too (every preset exports): each block lint-clean."""
    written = export(preset(name), tmp_path)
    for block, path in written.items():
        assert lint_file(path, block) == [], f"{name}/{block}"
