"""``neupims reproduce``'s grid checks and report (the RTL runs are in
``cocotb_tests/test_reproduce.py``), and the decode compiler's split of long VECTORs."""
from __future__ import annotations

import dataclasses
import json
import pickle

import pytest

from rtl.config import preset
from rtl.npu.vector import VectorOp
from rtl.npu.vector_engine import FLAG_SCALAR_B
from sim.cli import main
from sim.decode.compiler import Costs, Stream
from sim.decode.golden import MODES
from sim.decode.report import BUSY_UNITS, npu_line
from sim.models import get_model
from sim.reproduce import (GRIDS, PAPER, PAPER_LAYERS_RUN, PAPER_VOCAB, SLICE_MODELS, Grid,
                           ReproduceError, _check_points, _compiled_file, _finished_file,
                           _finished_point, _point_file, _point_key, _whole_model, _workload,
                           batch_factor, format_report, paper_config, paper_scale_status,
                           ratios, run_grid, slice_config, to_json, write_outputs)

#: one worker: several tests report on the slice, and a report computes
#: ``paper_scale_status()`` (about 100 s, once per process)
pytestmark = pytest.mark.xdist_group("reproduce")


@pytest.mark.parametrize("change, field", [
    ({"models": ("gpt9",)}, "models"), ({"batches": (0,)}, "batches"),
    ({"datasets": ("books",)}, "datasets"), ({"modes": ("gpu",)}, "modes"),
    ({"length_scale": {"sharegpt-like": 0.0, "alpaca-like": 1.0}}, "length_scale"),
    ({"max_len": 1}, "max_len"),
    ({"batches": ()}, "grid")])
def test_bad_grid_names_the_field(change, field):
    with pytest.raises(ReproduceError) as error:
        dataclasses.replace(GRIDS["quick"], **change).validate()
    assert error.value.field == field and str(error.value).startswith(field)


def test_precheck_compiles_every_point_and_keeps_the_runs(tmp_path):
    grid = Grid(models=("gpt3-7b-s32",), batches=(2,), datasets=("alpaca-like",))
    _check_points(grid, slice_config(), tmp_path, 2, lambda line: None)
    for mode in MODES:
        path = _compiled_file(tmp_path, "gpt3-7b-s32", 2, "alpaca-like", mode)
        with open(path, "rb") as f:
            run, kv_lens, source, seconds = pickle.load(f)
        assert run.mode == mode and len(kv_lens) == 2 and "alpaca" in source
        assert run.config.geometry == slice_config().geometry
        assert seconds > 0 and len(run.steps) == 1


def test_full_scale_precheck_compiles_without_values(tmp_path):
    grid = Grid(models=("gpt3-7b-s32",), batches=(2,), datasets=("alpaca-like",),
                layers_run=2)
    _check_points(grid, slice_config(), tmp_path, 1, lambda line: None)
    for mode in MODES:
        with open(_compiled_file(tmp_path, "gpt3-7b-s32", 2, "alpaca-like", mode), "rb") as f:
            run, kv_lens, source, seconds = pickle.load(f)
        assert run.mode == mode and run.golden is None and not run.image.words
        assert run.steps[0].checks and not any(run.steps[0].checks.values())
    small = slice_config().replace(stored_rows=8)
    with pytest.raises(ReproduceError, match="stored_rows"):
        _check_points(grid, small, tmp_path, 1, lambda line: None)


def test_precheck_names_the_point_that_cannot_run(tmp_path):
    config = slice_config()
    config = config.replace(npu=dataclasses.replace(config.npu, instruction_words=256))
    grid = Grid(models=("gpt3-7b-s32",), batches=(2,), datasets=("alpaca-like",))
    with pytest.raises(ReproduceError) as error:
        run_grid(grid, tmp_path, config=config, jobs=1, log=lambda line: None, precheck=True)
    assert error.value.field == "grid"
    assert "point gpt3-7b-s32 batch 2 alpaca-like" in str(error.value)
    assert "instruction" in str(error.value)


def test_cli_rejects_a_bad_dataset(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["reproduce", "--datasets", "books", "--out", "/nonexistent/never-written"])
    assert "datasets" in str(stop.value) and "books" in str(stop.value)


@pytest.mark.parametrize("option", [["--cores", "2"], ["--array", "8x8"],
                                    ["--word-bytes", "128"], ["--lanes", "8"]])
def test_cli_paper_refuses_the_slice_options(option):
    with pytest.raises(SystemExit) as stop:
        main(["reproduce", "--paper", *option, "--out", "/nonexistent/never-written"])
    assert option[0] in str(stop.value) and "--paper" in str(stop.value)


def test_cli_dma_options_reach_the_device(monkeypatch):
    """``--response-buffer``, ``--dma-responses``, ``--dma-in-flight`` and
    ``--[no-]dma-overlap`` shape the reproduced device (the paper's earlier DMA back with
    0, 1 and no overlap; more requests in flight
    than the controllers' tags give every core raise the tags); without them the
    configuration's stay; a bad value names the field."""
    import sim.reproduce
    seen = []

    def fake_run_grid(grid, out, config, **kwargs):
        seen.append(config)
        raise sim.reproduce.ReproduceError("test", "stop here")
    monkeypatch.setattr(sim.reproduce, "run_grid", fake_run_grid)
    for extra in (["--response-buffer", "0", "--dma-responses", "1", "--no-dma-overlap"], [],
                  ["--dma-in-flight", "16"], ["--dma-in-flight", "4"]):
        with pytest.raises(SystemExit, match="stop here"):
            main(["reproduce", "--paper", "--quick", *extra, "--out", "/nonexistent/never"])
    earlier, preset_dma, more_tags, fewer_tags = seen
    assert (earlier.npu.response_buffer, earlier.npu.dma_responses) == (0, 1)
    assert not earlier.npu.dma_overlap and preset_dma.npu.dma_overlap
    assert preset_dma == paper_config()
    # 8 cores x 16 requests need 128 controller tags; 8 x 4 fit the preset's 64
    assert (more_tags.npu.dma_in_flight, more_tags.controller.tags) == (16, 128)
    assert (fewer_tags.npu.dma_in_flight, fewer_tags.controller.tags) == (4, 64)
    assert "16 DMA requests in flight per channel" in npu_line(more_tags.npu.__dict__)
    for option, field in (("--dma-responses", "NpuConfig.dma_responses"),
                          ("--dma-in-flight", "NpuConfig.dma_in_flight")):
        with pytest.raises(SystemExit, match=field):
            main(["reproduce", option, "0", "--out", "/nonexistent/never"])


def test_cli_rejects_one_layer_run():
    with pytest.raises(SystemExit) as stop:
        main(["reproduce", "--paper", "--layers-run", "1", "--out",
              "/nonexistent/never-written"])
    assert "layers_run" in str(stop.value)


def test_reference_point_falls_back_inside_the_grid():
    grid = Grid(models=("tiny-gpt",), batches=(16, 64), datasets=("alpaca-like",),
                reference=("gpt3-30b-s32", 256, "sharegpt-like"))
    assert grid.reference_point() == ("tiny-gpt", 64, "alpaca-like")
    assert dataclasses.replace(grid, batches=(300, 512)).reference_point()[1] == 300


def test_slice_has_the_paper_channel_geometry_timing_only():
    config, paper, decode = slice_config(), preset("neupims"), preset("decode")
    assert not config.datapath and config.geometry.channels == 2
    for field in ("ranks", "bankgroups", "banks_per_group", "row_bytes", "burst_bytes"):
        assert getattr(config.geometry, field) == getattr(paper.geometry, field), field
    assert config.pim.lanes == paper.pim.lanes
    assert config.timing == decode.timing
    assert config.npu.word_bytes == config.geometry.burst_bytes == 64
    assert config.npu.weight_buffers == paper.npu.weight_buffers == 2
    assert batch_factor(config) == 32          # 4 MACs per byte here, the paper 128


def test_slice_of_several_cores():
    """``--cores 2 --array 16x8``: the same MACs per byte, two cores sharing the tags; a
    bad array or core count fails before any run, naming the field."""
    from rtl.config import ConfigError
    two = slice_config(2, (16, 8))
    assert two.npu.arrays == 2 and (two.npu.array_rows, two.npu.array_cols) == (16, 8)
    assert batch_factor(two) == batch_factor(slice_config())
    assert 2 * two.npu.dma_in_flight <= two.controller.tags
    with pytest.raises(ConfigError, match="array_cols"):
        slice_config(array=(16, 7))
    for args, word in ((["--array", "16"], "array"), (["--cores", "0"], "cores"),
                       (["--modes", "gpu"], "modes")):
        with pytest.raises(SystemExit) as stop:
            main(["reproduce", *args, "--out", "/nonexistent/never-written"])
        assert word in str(stop.value)


def test_slice_models_keep_the_papers_traffic_ratio():
    """d / 32 with batch / 32: L B / (6 d) unchanged."""
    for name in SLICE_MODELS:
        shape, paper = get_model(name), get_model(name.removesuffix("-s32"))
        assert shape.d_model * 32 == paper.d_model and shape.ffn == 4 * shape.d_model
        assert shape.d_head == 32 and shape.heads <= slice_config().geometry.banks // 2
    for name, heads in (("gpt3-7b-s32-h128", 1), ("gpt3-175b-s32-h128", 3)):
        shape = get_model(name)
        same_width = get_model(name.removesuffix("-h128"))
        assert (shape.d_model, shape.ffn) == (same_width.d_model, same_width.ffn)
        assert (shape.d_head, shape.heads) == (128, heads)


def test_paper_models_compile_at_batch_512():
    """At batch 512 every paper model compiles on the full-scale configuration in every
    mode (a compile without values, the same as the runs'); on 65,536 instructions per
    core (the size before) GPT3-7B's step in ``npu+pim`` does not, and the error names
    the field (``npu-only``'s ``weights`` form now fits in it)."""
    status = paper_scale_status()
    assert [s["model"] for s in status] == ["gpt3-7b", "gpt3-13b", "gpt3-30b", "gpt3-175b"]
    for s in status:
        assert s["run"] and s["reason"] is None and s["batches"] == [64, 128, 256, 384, 512]
    from sim.decode.compiler import compile_decode
    from sim.decode.layers import truncated
    from sim.decode.workload import DecodeError, DecodeWorkload
    config = paper_config()
    small = config.replace(npu=dataclasses.replace(config.npu, instruction_words=65536))
    workload = DecodeWorkload(truncated(get_model("gpt3-7b"), PAPER_LAYERS_RUN), (100,) * 512,
                              vocab=PAPER_VOCAB)
    with pytest.raises(DecodeError, match="NpuConfig.instruction_words"):
        compile_decode(workload, "npu+pim", small, values=False)


def test_paper_config_is_the_neupims_preset_timing_only():
    config, paper = paper_config(), preset("neupims")
    assert config.geometry == paper.geometry and config.timing == paper.timing
    assert (config.npu.arrays, config.npu.array_rows, config.npu.array_cols,
            config.npu.vector_lanes, config.npu.word_bytes) == (8, 128, 128, 128, 512)
    assert not config.datapath and config.stored_rows == paper.geometry.rows
    assert config.npu.weight_buffers == 2 and paper_config(1).npu.weight_buffers == 1
    assert (config.npu.response_buffer, config.npu.dma_responses) == (4, 2)
    assert config.npu.dma_overlap and paper.npu.dma_overlap
    assert batch_factor(config) == 1


def test_paper_grid_runs_two_layers_of_the_device_share():
    grid = GRIDS["paper"]
    grid.validate()
    assert grid.models == ("gpt3-7b", "gpt3-13b", "gpt3-30b", "gpt3-175b")
    assert grid.batches == (64, 128, 256, 384, 512) and grid.layers_run == 2
    workload, _ = _workload("gpt3-175b", 64, "alpaca-like", grid)
    assert workload.layers == 2 and workload.model.tp == 8 and workload.vocab == grid.vocab
    assert workload.batch == 64
    with pytest.raises(ReproduceError, match="layers_run"):
        dataclasses.replace(grid, layers_run=1).validate()


def test_whole_model_extends_the_measured_steps():
    grid = dataclasses.replace(GRIDS["quick"], layers_run=2)
    stages = [("load", 5), ("A", 10), ("B", 20), ("C", 30), ("D", 40), ("E", 50), ("F", 60),
              ("head", 7)]
    result = {"steps": [{"cycles": 225, "stages": [{"name": n, "cycles": c}
                                                   for n, c in stages]}]}
    s = {"cycles": 225, "tokens": 4, "tokens_per_s": 0.0, "stages": {}}
    config = slice_config()
    extra = _whole_model(result, s, "neupims", grid, "gpt3-7b", config)
    assert extra == {"layers_run": 2, "layers": 32, "cycles_run": 225, "unit_cycles": 70}
    assert s["cycles"] == 225 + 30 * 70
    assert s["stages"]["C"] == 31 * 30 and s["stages"]["A"] == 10
    assert s["tokens_per_s"] == pytest.approx(4 * config.timing.clock_hz / s["cycles"])
    assert _whole_model(result, dict(s), "neupims", GRIDS["quick"], "gpt3-7b", config) == {}


def _points(grid):
    """Synthetic points (the report's arithmetic, not the design's figures)."""
    out = []
    for i, (model, batch, dataset) in enumerate(grid.points()):
        for j, mode in enumerate(MODES):
            cycles = 1000 * (i + 1) * (3 - j)
            out.append({"model": model, "batch": batch, "dataset": dataset, "mode": mode,
                        "tokens_per_s": batch * 1e9 / cycles, "cycles": cycles,
                        "tokens": batch, "stages": {"load": 10, "QKV": cycles - 10},
                        "npu_util": 0.1 * (j + 1), "pim_util": 0.05 * j})
    return out


def test_ratios_and_report(tmp_path):
    grid = GRIDS["quick"]
    points = _points(grid)
    r = ratios(points)
    assert len(r) == len(grid.points())
    for x in r:                # npu-only 3 x, npu+pim 2 x the cycles of neupims
        assert x["neupims/npu-only"] == pytest.approx(3.0)
        assert x["neupims/npu+pim"] == pytest.approx(2.0)
    report = to_json(grid, slice_config(), points, wall_s=1.0, jobs=2)
    assert report["summary"]["ratios"]["neupims/npu-only"]["mean"] == pytest.approx(3.0)
    assert report["summary"]["ratios"]["neupims/npu+pim"]["paper"] == PAPER["neupims/npu+pim"]
    u = report["summary"]["utilization"]
    assert u["point"] == {"model": "gpt3-7b-s32", "batch": 8, "dataset": "sharegpt-like"}
    assert u["modes"]["neupims"]["npu_util"] == pytest.approx(0.3)
    for p in report["points"]:
        assert {"model", "batch", "dataset", "mode", "tokens_per_s", "stages", "npu_util",
                "pim_util"} <= set(p)
    text = format_report(report)
    assert "3.00x" in text and "2.00x" in text and "2.4x" in text and "1.6x" in text
    assert "64.9 %" in text and "26.4 %" in text
    assert text.count("compile; run with `neupims reproduce --paper`") == 4
    files = write_outputs(report, tmp_path)
    assert json.loads(files[0].read_text())["points"] == points
    for png in files[2:]:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ratios_of_the_modes_that_ran():
    """A grid without npu-only (e.g. a full-scale run stopped early): neupims/npu+pim per
    point and in the summary, neupims/npu-only shown as missing, never as a number."""
    grid = dataclasses.replace(GRIDS["quick"], modes=("npu+pim", "neupims"))
    points = [p for p in _points(GRIDS["quick"]) if p["mode"] != "npu-only"]
    r = ratios(points)
    assert len(r) == len(grid.points())
    assert all(x["neupims/npu-only"] is None and x["neupims/npu+pim"] == pytest.approx(2.0)
               for x in r)
    report = to_json(grid, slice_config(), points, wall_s=1.0, jobs=2)
    s = report["summary"]["ratios"]
    assert s["neupims/npu+pim"]["points"] == len(r) and s["neupims/npu-only"]["points"] == 0
    assert s["neupims/npu-only"]["mean"] is None and "NaN" not in json.dumps(report)
    text = format_report(report)
    assert "nan" not in text and "2.00x" in text
    assert ratios([p for p in points if p["mode"] != "neupims"]) == []


def test_resume_takes_finished_points_of_the_same_key(tmp_path):
    grid, config = GRIDS["quick"], slice_config()
    points = _points(grid)
    for p in points:
        path = _finished_file(tmp_path, p["model"], p["batch"], p["dataset"], p["mode"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"key": _point_key(grid, config.to_json()), "point": p}))
    lines = []
    report = run_grid(grid, tmp_path, config=config, jobs=1, log=lines.append, resume=True)
    assert report["points"] == points                   # nothing run, nothing lost
    assert f"{len(points)} finished points taken" in lines[0] and "= 0 RTL runs" in lines[1]
    task = (points[0]["model"], points[0]["batch"], points[0]["dataset"], points[0]["mode"])
    assert _finished_point(tmp_path, task, grid, config.to_json()) == points[0]
    deeper = config.replace(npu=dataclasses.replace(config.npu, instruction_words=1 << 17))
    assert _finished_point(tmp_path, task, grid, deeper.to_json()) == points[0]
    saved = json.loads(_finished_file(tmp_path, *task).read_text())   # saved with the depth
    saved["key"]["config"] = json.loads(config.to_json())
    _finished_file(tmp_path, *task).write_text(json.dumps(saved))
    assert _finished_point(tmp_path, task, grid, deeper.to_json()) == points[0]
    del saved["key"]["config"]["npu"]["response_buffer"]     # saved before the fields
    del saved["key"]["config"]["npu"]["dma_responses"]
    del saved["key"]["config"]["npu"]["dma_overlap"]
    _finished_file(tmp_path, *task).write_text(json.dumps(saved))
    assert _finished_point(tmp_path, task, grid, config.to_json()) == points[0]
    buffered = config.replace(npu=dataclasses.replace(config.npu, response_buffer=2))
    two_lanes = config.replace(npu=dataclasses.replace(config.npu, dma_responses=2))
    overlap = config.replace(npu=dataclasses.replace(config.npu, dma_overlap=True))
    for other_grid, other_config in ((dataclasses.replace(grid, vocab=256), config),
                                     (dataclasses.replace(grid, seed=1), config),
                                     (grid, slice_config(cores=2)), (grid, buffered),
                                     (grid, two_lanes), (grid, overlap)):
        assert _finished_point(tmp_path, task, other_grid, other_config.to_json()) is None
    _finished_file(tmp_path, *task).unlink()
    assert _finished_point(tmp_path, task, grid, config.to_json()) is None


def test_report_only_runs_nothing_and_lists_what_did_not_finish(tmp_path):
    grid, config = GRIDS["quick"], slice_config()
    points = _points(grid)
    kept = [p for p in points if p["mode"] != "npu-only" or p["batch"] != 16]
    for p in kept:
        path = _finished_file(tmp_path, p["model"], p["batch"], p["dataset"], p["mode"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"key": _point_key(grid, config.to_json()), "point": p}))
    lines = []
    report = run_grid(grid, tmp_path, config=config, jobs=1, log=lines.append,
                      precheck=True, report_only=True)
    assert report["points"] == kept and "nothing run" in lines[0]
    assert report["unfinished"] == [{"model": "gpt3-7b-s32", "batch": 16, "dataset": d,
                                     "mode": "npu-only"} for d in grid.datasets]
    assert not list((tmp_path / "points").glob("*.compiled.pkl"))     # not even compiled
    text = format_report(report)
    assert "Not finished" in text and "gpt3-7b-s32 batch 16 alpaca-like npu-only" in text


def test_long_elementwise_vector_is_split_into_whole_words():
    s = Stream(Costs(preset("decode")))
    s.vec(VectorOp.CVT32TO16, a=100, d=5000, length=70_000)
    pieces = [op.ins for op in s.ops]
    assert [p["length"] for p in pieces] == [32768, 32768, 70_000 - 65536]
    assert [p["a"] for p in pieces] == [100, 100 + 2048, 100 + 4096]        # FP32 words
    assert [p["d"] for p in pieces] == [5000, 5000 + 1024, 5000 + 2048]     # FP16 words
    s = Stream(Costs(preset("decode")))
    s.vec(VectorOp.ADD, a=0, b=7, d=9, length=65535)
    assert len(s.ops) == 1
    with pytest.raises(ValueError):     # a scalar operand cannot be cut: the field overflows
        s.vec(VectorOp.MUL, a=0, b=7, d=9, length=70_000, flags=FLAG_SCALAR_B)


def test_slice_word_and_lane_options():
    """``--word-bytes`` / ``--lanes``: the slice on wider words with a wider vector unit;
    lanes that do not divide a word's FP32 are refused, naming the field."""
    from rtl.config import ConfigError
    wide = slice_config(word_bytes=256, lanes=64)
    assert (wide.npu.word_bytes, wide.npu.vector_lanes) == (256, 64)
    assert wide.npu.scratchpad_words == slice_config().npu.scratchpad_words
    for word_bytes, lanes in ((64, 32), (256, 48)):
        with pytest.raises(ConfigError, match="NpuConfig.vector_lanes"):
            slice_config(word_bytes=word_bytes, lanes=lanes)


def test_slice_weight_buffers_option():
    """``--weight-buffers 1`` builds the slice whose array drains before each preload; any
    other count is refused, naming the field."""
    from rtl.config import ConfigError
    assert slice_config(weight_buffers=1).npu.weight_buffers == 1
    assert "two weight buffers" in npu_line(slice_config().npu.__dict__)
    assert "weight buffers" not in npu_line(slice_config(weight_buffers=1).npu.__dict__)
    assert "2 DMA responses per clock" in npu_line(dict(slice_config().npu.__dict__, dma_responses=2))
    assert "4 responses buffered" in npu_line(dict(slice_config().npu.__dict__, response_buffer=4))
    assert "several channels at once" in npu_line(dict(slice_config().npu.__dict__, dma_overlap=True))
    assert "at once" not in npu_line(slice_config().npu.__dict__)
    with pytest.raises(ConfigError, match="NpuConfig.weight_buffers"):
        slice_config(weight_buffers=3)


def _busy_stages(names, level):
    """Stages of one step, unit k of stage i busy level + i / 100 + k / 1000."""
    return [{"name": n, "cycles": 100 * (i + 1),
             **{k: round(level + i / 100 + j / 1000, 4) for j, k in enumerate(BUSY_UNITS)},
             "phases": [["DMA", 60 * (i + 1)], ["array", 30 * (i + 1)], ["idle", 6 * (i + 1)],
                        ["vector", 4 * (i + 1)]]}
            for i, n in enumerate(names)]


SERIAL = ["load", "QKV", "MHA", "Proj/FFN", "QKV", "MHA", "Proj/FFN", "head"]
NEUPIMS = ["load", "A", "B", "C", "D", "E", "F", "head"]


def test_report_shows_where_the_steady_layers_clocks_go():
    """Full-scale grids: the repeating unit's stages (the first layer of a serial run of
    2, the C and D of neupims) with each unit's busy fraction, not the other stages."""
    grid = dataclasses.replace(GRIDS["quick"], layers_run=2)
    points = [dict(p) for p in _points(GRIDS["quick"])[:3]]
    for p in points:
        p.update(stage_busy=_busy_stages(NEUPIMS if p["mode"] == "neupims" else SERIAL, 0.1),
                 timeline_period=2048)
    text = format_report(to_json(grid, slice_config(), points))
    table = text[text.index("Where the steady-state layer"):].splitlines()
    assert "every 2,048 clocks" in table[0]
    rows = [line.split() for line in table[3:] if line.startswith(points[0]["model"])]
    assert [(r[3], r[4]) for r in rows] == [("npu-only", "QKV"), ("npu-only", "MHA"),
                                            ("npu-only", "Proj/FFN"), ("npu+pim", "QKV"),
                                            ("npu+pim", "MHA"), ("npu+pim", "Proj/FFN"),
                                            ("neupims", "C"), ("neupims", "D")]
    assert rows[0][5:] == ["200", "11.0", "%", "11.1", "%", "11.2", "%", "11.3", "%",
                           "11.4", "%", "11.5", "%", "DMA", "60", "%,", "array", "30", "%,",
                           "idle", "6", "%"]              # stage 1 of SERIAL, 3 phases
    assert rows[-1][5] == "500" and rows[-1][6:8] == ["14.0", "%"]   # D: stage 4
    assert "Where the steady-state" not in format_report(to_json(GRIDS["quick"],
                                                                 slice_config(), points))


def test_a_saved_point_gets_its_stage_busy_from_its_result(tmp_path):
    """Points saved before ``stage_busy`` existed get it from the run's result file."""
    grid, config = GRIDS["quick"], slice_config()
    point = _points(grid)[0]
    task = (point["model"], point["batch"], point["dataset"], point["mode"])
    path = _finished_file(tmp_path, *task)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"key": _point_key(grid, config.to_json()), "point": point}))
    stages = [{"name": "load", "index": 0, "end": 100, "cycles": 100},
              {"name": "head", "index": 1, "end": 300, "cycles": 200}]
    timeline = {"period": 100, "start": [0, 100, 200], "end": [100, 200, 300],
                "array": [0.0, 1.0, 0.5], "gemm": [0.0, 1.0, 0.5], "dma": [1.0, 0.0, 0.0],
                "vector": [0.0, 0.0, 1.0], "pim_port": [0.0] * 3, "pim": [[0.0] * 3]}
    _point_file(tmp_path, *task).write_text(json.dumps(
        {"steps": [{"stages": stages, "timeline": timeline}]}))
    saved = _finished_point(tmp_path, task, grid, config.to_json())
    assert saved["timeline_period"] == 100
    assert [(s["name"], s["array"], s["dma"], s["vector"]) for s in saved["stage_busy"]] == \
        [("load", 0.0, 1.0, 0.0), ("head", 0.75, 0.0, 0.5)]


def _fake_run_point(model, batch, dataset, mode, grid, out, config_json):
    """Fails the ``npu+pim`` point at once; the ``neupims`` one ends a while later."""
    import time
    from pathlib import Path
    if mode == "npu+pim":
        raise RuntimeError("NPU error BAD_SHAPE")
    time.sleep(1.0)
    Path(out, f"{mode}.finished").write_text("yes")
    return {"model": model, "batch": batch, "dataset": dataset, "mode": mode,
            "cycles": 1, "tokens_per_s": 1.0, "wall_s": 1.0}


def test_a_failed_point_is_reported_at_once_and_the_others_in_flight_kept(
        tmp_path, monkeypatch):
    import sim.reproduce
    monkeypatch.setattr(sim.reproduce, "_run_point", _fake_run_point)
    grid = Grid(models=("gpt3-7b-s32",), batches=(2, 4), datasets=("alpaca-like",),
                modes=("npu+pim", "neupims"))
    lines = []
    with pytest.raises(RuntimeError) as error:
        run_grid(grid, tmp_path, jobs=2, log=lines.append)
    failed = next(i for i, line in enumerate(lines) if "failed: NPU error BAD_SHAPE" in line)
    # said before the point in flight finished, with what was cancelled and what runs on
    assert "2 points not started left out" in lines[failed + 1]
    assert "waiting for 1 in flight" in lines[failed + 1] and "--resume" in lines[failed + 1]
    assert any("neupims:" in line and "tokens/s" in line for line in lines[failed + 2:])
    assert (tmp_path / "neupims.finished").exists()
    assert sum("tokens/s" in line for line in lines) == 1      # the b2 points never ran
    assert "point gpt3-7b-s32 batch" in str(error.value) and "BAD_SHAPE" in str(error.value)
