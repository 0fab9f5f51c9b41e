"""``sim.decode.report`` on synthetic results (the schema of ``cocotb_tests.tb_decode``):
the table, the JSON summary (utilizations computed from the counters) and the plot.
Also ``sim.decode.run``: a DecodeRun survives pickling and bad steps are rejected."""
import json
import pickle

import pytest

from rtl.config import preset
from rtl.controller.interface import COUNTERS as CTRL_COUNTERS
from rtl.isa.npu import dma_load, halt, nop, wait
from rtl.npu.core import COUNTERS as NPU_COUNTERS
from sim.decode.report import (BUSY_UNITS, format_table, plot_timeline, stage_busy,
                               stage_phases, summarize, to_json)
from sim.decode.run import DecodeRun, StepProgram, load_run
from sim.npu_programs import HbmImage


def _step(label, cycles, tokens, array_busy, pim_busy, normal, stages, bit_exact=True):
    counters = {k: 0 for k in NPU_COUNTERS}
    counters.update(cycles=cycles, array_busy=array_busy, dma_busy=cycles // 2)
    controllers = []
    for busy, n in zip(pim_busy, normal):
        c = {k: 0 for k in CTRL_COUNTERS}
        c.update(cycles=cycles + 1, pim_busy_cycles=busy, normal_during_pim=n,
                 pim_occupied_cycles=3 * busy)
        controllers.append(c)
    ends, end = [], 0
    for name, length in stages:
        end += length
        ends.append({"name": name, "index": len(ends), "end": end, "cycles": length})
    windows = list(range(0, cycles, 64))
    timeline = {"period": 64, "start": windows, "end": [min(w + 64, cycles) for w in windows],
                "array": [0.5] * len(windows), "dma": [0.25] * len(windows),
                "gemm": [0.5] * len(windows), "vector": [0.1] * len(windows),
                "pim_port": [0.0] * len(windows),
                "pim": [[0.3] * len(windows) for _ in pim_busy]}
    return {"label": label, "index": 0, "tokens": tokens, "instructions": 10, "cycles": cycles,
            "counters": counters, "controllers": controllers, "commands_checked": 100,
            "commands_by_channel": [50, 50], "timing_violations": 0, "stages": ends,
            "timeline": timeline, "checks": 4, "mismatches": 0 if bit_exact else 1,
            "bit_exact": bit_exact, "first_mismatches": [], "wall_s": 1.0,
            "cycles_per_s": float(cycles)}


def _result(mode, steps, clock_hz=1e9):
    return {"mode": mode, "config_summary": f"decode: {mode}", "clock_hz": clock_hz,
            "complete": True, "steps": steps,
            "cycles": sum(s["cycles"] for s in steps),
            "tokens": sum(s["tokens"] for s in steps),
            "bit_exact": all(s["bit_exact"] for s in steps),
            "mismatches": sum(s["mismatches"] for s in steps), "commands_checked": 200,
            "timing_violations": 0, "sim_cycles_per_s": 1000.0}


@pytest.fixture
def results():
    return {
        "npu-only": _result("npu-only", [
            _step("step 0", 4000, 4, 1000, [0, 0], [0, 0], [("A", 3000), ("B", 1000)]),
            _step("step 1", 6000, 4, 3000, [0, 0], [0, 0], [("A", 4000), ("B", 2000)])]),
        "neupims": _result("neupims", [
            _step("step 0", 2000, 4, 1000, [1000, 600], [30, 12], [("A", 1500), ("B", 500)]),
            _step("step 1", 2000, 4, 500, [400, 0], [5, 0], [("A", 1200), ("B", 800)],
                  bit_exact=False)]),
    }


def test_summary_from_counters(results):
    s = summarize(results["neupims"])
    assert s["cycles"] == 4000 and s["tokens"] == 8
    assert s["tokens_per_s"] == pytest.approx(8 / (4000 / 1e9))
    assert s["npu_util"] == pytest.approx(1500 / 4000)
    assert s["pim_util_per_channel"] == pytest.approx([1400 / 4000, 600 / 4000])
    assert s["pim_util"] == pytest.approx((1400 + 600) / 2 / 4000)
    assert s["pim_occupancy"] == pytest.approx(3 * (1400 + 600) / 2 / 4000)
    assert s["normal_during_pim"] == 47
    assert s["stages"] == {"A": 2700, "B": 1300}
    assert not s["bit_exact"] and s["mismatches"] == 1
    n = summarize(results["npu-only"])
    assert n["npu_util"] == pytest.approx(4000 / 10000) and n["pim_util"] == 0
    # another clock: time scales
    slow = summarize(_result("x", results["npu-only"]["steps"], clock_hz=5e8))
    assert slow["tokens_per_s"] == pytest.approx(n["tokens_per_s"] / 2)


def test_json_keys(results):
    data = to_json(results, {"model": "tiny-gpt", "batch": 4})
    json.dumps(data)    # serializable
    assert data["config"]["description"] == {"model": "tiny-gpt", "batch": 4}
    assert set(data["modes"]) == {"npu-only", "neupims"}
    for mode in data["modes"].values():
        for key in ("tokens_per_s", "cycles", "stages", "npu_util", "pim_util",
                    "normal_during_pim", "bit_exact", "steps"):
            assert key in mode, key
        assert len(mode["steps"]) == 2 and "stages" in mode["steps"][0]
    assert data["modes"]["npu-only"]["bit_exact"] is True


def test_table(results):
    text = format_table(results, {"model": "tiny-gpt", "batch": 4})
    assert "model" in text and "tiny-gpt" in text
    main = text.split("Stage cycles")[0]
    rows = {line.split()[0]: line for line in main.splitlines() if line.split()}
    assert "yes" in rows["npu-only"] and "NO (1)" in rows["neupims"]
    assert "2,000,000" in rows["neupims"]      # 8 tokens in 4 us
    assert "47" in rows["neupims"] and "37.5 %" in rows["neupims"]
    assert "75.0 %" in rows["neupims"]             # PIM occupied: 3 x the GEMV clocks
    stage_header = [line for line in text.splitlines() if line.startswith("mode") and " A " in
                    line + " "]
    assert stage_header and "B" in stage_header[-1]
    assert "2,700" in text and "7,000" in text     # stage A of neupims and of npu-only


def test_plot(results, tmp_path):
    path = tmp_path / "timeline.png"
    plot_timeline(results, path)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_decode_run_pickles_and_validates(tmp_path):
    config = preset("decode")
    image = HbmImage(config)
    image.write(0, [1, 2, 3])
    step = StepProgram([dma_load(0, 0, 3), wait("dma"), halt()], [("load", 1), ("end", 2)],
                       {0: 1, 1: 2}, "step 0", 4)
    run = DecodeRun(config, "neupims", image, [step], {"model": "x"})
    run.validate()
    again = load_run(run.save(tmp_path / "run.pkl"))
    assert again.config == config and again.image.words == image.words
    assert again.steps[0].program == step.program and again.steps[0].marks == step.marks
    assert pickle.loads(pickle.dumps(run)).steps[0].checks == {0: 1, 1: 2}
    bad = [StepProgram([nop(), halt()], [("x", 0)]),                  # a mark on a NOP
           StepProgram([wait("dma"), halt()], [("b", 1), ("a", 0)]),  # out of order
           StepProgram([wait("dma")], []),                            # no HALT
           StepProgram([halt()], [], {config.npu.scratchpad_words: 0})]
    for s in bad:
        with pytest.raises(ValueError):
            DecodeRun(config, "neupims", image, [s]).validate()
    with pytest.raises(ValueError, match="mode"):
        DecodeRun(config, "gpu", image, [step]).validate()


def test_stage_busy_splits_the_windows_a_stage_end_cuts():
    """Windows [0, 100), [100, 200), [200, 300); stages end at 150 and 300: the first
    stage is window 0 and half of window 1, the second the other half and window 2."""
    step = _step("step 0", 300, 1, 0, [0, 0], [0, 0], [("X", 150), ("Y", 150)])
    step["timeline"] = {"period": 100, "start": [0, 100, 200], "end": [100, 200, 300],
                        "array": [1.0, 0.5, 0.0], "gemm": [1.0, 0.5, 0.0],
                        "dma": [0.0, 1.0, 0.2], "vector": [0.0, 0.0, 0.0],
                        "pim_port": [0.0, 0.3, 0.9], "pim": [[0.0, 0.2, 0.4], [0.0, 0.0, 0.2]]}
    x, y = stage_busy(step)
    near = lambda value: pytest.approx(value, abs=1e-4)   # noqa: E731 (4 decimals kept)
    assert (x["name"], x["cycles"], y["name"], y["cycles"]) == ("X", 150, "Y", 150)
    assert x["array"] == near((100 * 1.0 + 50 * 0.5) / 150)
    assert y["array"] == near(50 * 0.5 / 150)
    assert x["dma"] == near(50 / 150) and y["dma"] == near((50 + 20) / 150)
    assert x["pim"] == near(50 * 0.1 / 150)            # the mean over channels
    assert y["pim"] == near((50 * 0.1 + 100 * 0.3) / 150)
    assert y["pim_port"] == near((50 * 0.3 + 100 * 0.9) / 150)
    assert set(x) == {"name", "cycles", "phases", *BUSY_UNITS}
    # order of PHASE_UNITS: DMA, array, vector, PIM; by clocks, most first
    assert x["phases"] == [["array", 100], ["DMA+array+PIM", 50]]
    assert y["phases"] == [["DMA+PIM", 100], ["DMA+array+PIM", 50]]


def test_stage_phases_label_windows_by_the_units_busy_together():
    step = _step("step 0", 400, 1, 0, [0], [0], [("X", 400)])
    step["timeline"] = {"period": 100, "start": [0, 100, 200, 300], "end": [100, 200, 300, 400],
                        "array": [0.0, 0.0, 0.05, 0.6], "gemm": [0.0] * 4,
                        "dma": [0.9, 0.0, 0.04, 0.5], "vector": [0.0, 0.0, 0.0, 0.06],
                        "pim_port": [0.0, 0.0, 0.0, 0.0], "pim": [[0.0] * 4]}
    assert stage_phases(step, 0) == [("idle", 200), ("DMA", 100), ("DMA+array+vector", 100)]
    assert dict(stage_phases(step, 0, threshold=0.01)) == {
        "DMA": 100, "idle": 100, "DMA+array": 100, "DMA+array+vector": 100}


def test_stage_busy_of_a_uniform_timeline_is_its_level():
    step = _step("step 0", 4000, 4, 1000, [0, 0], [0, 0], [("A", 3000), ("B", 1000)])
    for stage in stage_busy(step):
        assert (stage["array"], stage["dma"], stage["vector"]) == (0.5, 0.25, 0.1)
        assert stage["pim"] == pytest.approx(0.3)
