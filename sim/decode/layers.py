"""Whole models from a few simulated layers: a decode step of a deep model (GPT-3 175B has
24 layers per device) repeats one layer's work, so the RTL runs the first ``layers_run``
layers of the device's share and the step's cycles are extended by the layers not run,
each costing what the RTL measured for a layer in the steady state.

The stage marks of a step (``sim.decode.compiler``, in program order) are

- ``npu-only``, ``npu+pim``: ``load``, then ``QKV``, ``MHA``, ``Proj/FFN`` per layer,
  then ``head``. A middle layer of a deep model starts on weights prefetched during the
  layer before and prefetches the next layer's: in a run of ``layers_run`` layers that is
  layer ``layers_run - 2`` (the last layer prefetches the LM head instead, the first
  starts after the ``load`` barrier), whose three stages are the repeating unit;
- ``neupims``: ``load``, ``A``, ``B``, (``C``, ``D``) per layer after the first, ``E``,
  ``F``, ``head`` (NEUPIMS.md 5: total = A + B + (C + D) (N - 1) + E + F): the repeating
  unit is the last (``C``, ``D``) pair.

So ``cycles(N) = cycles(layers_run) + (N - layers_run) x unit``: the paper's own formula
for NeuPIMs, with every term measured on the RTL. What it leaves out is how the unit
varies from layer to layer (refresh falls at different points of each layer, DRAM state
at a layer's start): ``cocotb_tests/test_layers.py`` bounds that by running more layers
and comparing.
"""
from __future__ import annotations

from dataclasses import replace

from ..models import ModelShape

__all__ = ["LayersError", "truncated", "repeating_unit", "extrapolate"]

SERIAL_LAYER = ("QKV", "MHA", "Proj/FFN")
NEUPIMS_LAYER = ("C", "D")


class LayersError(ValueError):
    """Stages that do not have the shape of a decode step (names the field)."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


def truncated(model: ModelShape, layers_run: int) -> ModelShape:
    """``model`` with ``layers_run`` layers per device (its name, TP and PP kept)."""
    if layers_run < 2:
        raise LayersError("layers_run", f"needs at least 2 layers for a steady-state layer, "
                          f"got {layers_run}")
    if layers_run > model.layers_per_device:
        raise LayersError("layers_run", f"{layers_run} layers, {model.name} has "
                          f"{model.layers_per_device} per device")
    return replace(model, layers=layers_run * model.pp)


def _names(stages) -> list[str]:
    return [s["name"] for s in stages]


def repeating_unit(stages: list, mode: str, layers_run: int) -> list:
    """The stages (dicts with ``name``, ``cycles``, in program order, one step) that one
    more layer adds (see the module docstring)."""
    names = _names(stages)
    if mode == "neupims":
        expect = ["load", "A", "B"] + list(NEUPIMS_LAYER) * (layers_run - 1) + ["E", "F", "head"]
        at = 3 + 2 * (layers_run - 2)
        width = len(NEUPIMS_LAYER)
    else:
        expect = ["load"] + list(SERIAL_LAYER) * layers_run + ["head"]
        at = 1 + len(SERIAL_LAYER) * (layers_run - 2)
        width = len(SERIAL_LAYER)
    if names != expect:
        raise LayersError("stages", f"a {mode} step of {layers_run} layers has the stages "
                          f"{expect}, got {names}")
    return stages[at:at + width]


def extrapolate(stages: list, mode: str, layers_run: int, layers: int,
                cycles_run: int | None = None) -> dict:
    """One step's cycles for ``layers`` layers per device from its run of ``layers_run``:
    ``{"cycles", "cycles_run", "unit_cycles", "stages": {name: cycles}}`` (``stages``
    summed by name as ``sim.decode.report`` does, the repeated ones extended).
    ``cycles_run``: the step's measured cycles (default: the sum of its stages; the RTL's
    step also counts the few clocks of its HALT)."""
    if layers < layers_run:
        raise LayersError("layers", f"{layers} layers is fewer than the {layers_run} run")
    unit = repeating_unit(stages, mode, layers_run)
    extra = layers - layers_run
    totals: dict[str, int] = {}
    for s in stages:
        totals[s["name"]] = totals.get(s["name"], 0) + s["cycles"]
    for s in unit:
        totals[s["name"]] += extra * s["cycles"]
    run = sum(s["cycles"] for s in stages) if cycles_run is None else cycles_run
    unit_cycles = sum(s["cycles"] for s in unit)
    return {"cycles": run + extra * unit_cycles, "cycles_run": run,
            "unit_cycles": unit_cycles, "stages": totals}
