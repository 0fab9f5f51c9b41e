"""Whole models from a few simulated layers (``sim.decode.layers``): the repeating unit is
found in the compiler's own stage marks, and the extension is the arithmetic it claims."""
import pytest

from sim.decode.compiler import compile_decode
from sim.decode.golden import MODES
from sim.decode.layers import LayersError, extrapolate, repeating_unit, truncated
from sim.decode.workload import DecodeWorkload
from sim.models import ModelShape, get_model

DEEP = ModelShape("deep-gpt", 64, 2, 5, ffn=256, d_head=32)


def _stages(run):
    """The compiled step's marks with made-up, distinct cycles (the index of each mark
    times 10 plus one)."""
    return [{"name": name, "cycles": 10 * i + 1} for i, (name, _) in
            enumerate(run.steps[0].marks)]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("layers_run", [2, 3])
def test_unit_is_a_steady_state_layer_of_the_compiled_step(mode, layers_run):
    model = truncated(DEEP, layers_run)
    assert model.layers == layers_run and model.name == DEEP.name
    run = compile_decode(DecodeWorkload(model, (3, 9, 5, 7)), mode)
    stages = _stages(run)
    unit = repeating_unit(stages, mode, layers_run)
    names = [s["name"] for s in unit]
    if mode == "neupims":
        assert names == ["C", "D"]
        at = [i for i, s in enumerate(stages) if s["name"] == "C"][-1]   # the last pair
    else:
        assert names == ["QKV", "MHA", "Proj/FFN"]
        at = [i for i, s in enumerate(stages) if s["name"] == "QKV"][layers_run - 2]
    assert unit == stages[at:at + len(unit)]
    full = extrapolate(stages, mode, layers_run, DEEP.layers)
    run_cycles = sum(s["cycles"] for s in stages)
    unit_cycles = sum(s["cycles"] for s in unit)
    assert full["cycles_run"] == run_cycles and full["unit_cycles"] == unit_cycles
    assert full["cycles"] == run_cycles + (DEEP.layers - layers_run) * unit_cycles
    assert sum(full["stages"].values()) == full["cycles"]
    same = extrapolate(stages, mode, layers_run, layers_run)
    assert same["cycles"] == run_cycles


def test_truncated_keeps_the_device_split():
    m = get_model("gpt3-175b")            # TP 8, PP 4: 24 layers per device
    two = truncated(m, 2)
    assert two.layers_per_device == 2 and (two.tp, two.pp) == (m.tp, m.pp)
    assert two.gemms(1) == m.gemms(1)
    with pytest.raises(LayersError, match="layers_run"):
        truncated(m, 1)
    with pytest.raises(LayersError, match="layers_run: 25 layers"):
        truncated(m, 25)


def test_stages_of_another_shape_are_refused():
    stages = [{"name": n, "cycles": 1} for n in ("load", "QKV", "MHA", "Proj/FFN", "head")]
    with pytest.raises(LayersError, match="stages"):
        repeating_unit(stages, "npu+pim", 2)       # one layer's stages, not two
    with pytest.raises(LayersError, match="layers: 1 layers"):
        extrapolate(stages, "npu+pim", 2, 1)
