"""``neupims sim``: the main job. A batch drawn from a real trace, compiled for the three
modes, each run on the RTL (NpuTop on Verilator, every DRAM command timing-checked,
every step's hidden states and logits compared bit for bit with the golden decode),
reported as a table, a JSON file and a PNG timeline.

Lengths: the trace's requests go through ``sim.workloads.snapshot`` (seeded pick, each
request caught at a uniformly random point of its decode). The RTL slice holds short
contexts, so prompt and output lengths are first multiplied by ``length_scale`` (default
1/16: Azure conversation prompts of ~1k tokens become ~64), then clipped to the slice's
limit; the clip counts are printed with the table.
"""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from ..models import get_model
from ..workloads import generate_requests, load_workload, snapshot
from .compiler import compile_decode
from .golden import MODES
from .workload import DecodeError, DecodeWorkload

__all__ = ["draw_workload", "run_modes", "DEFAULTS", "TRACES", "PROFILES"]

TRACES = ("azure-conv", "azure-code", "sharegpt", "mooncake")
#: Generated lengths (``sim.workloads.generate_requests``) from the paper's per-turn means
#: (NEUPIMS.md 6): name -> ``sim.workloads.PAPER_PROFILES`` key.
PROFILES = {"sharegpt-like": "sharegpt", "alpaca-like": "alpaca"}

#: The default workload of ``make sim``.
DEFAULTS = {"model": "tiny-gpt", "trace": "azure-conv", "batch": 16, "steps": 1,
            "length_scale": 1 / 16, "max_len": 96, "seed": 0}


def draw_workload(model: str = DEFAULTS["model"], trace: str = DEFAULTS["trace"],
                  batch: int = DEFAULTS["batch"], steps: int = DEFAULTS["steps"],
                  length_scale: float = DEFAULTS["length_scale"],
                  max_len: int = DEFAULTS["max_len"], seed: int = DEFAULTS["seed"],
                  root=None) -> tuple[DecodeWorkload, str]:
    """A :class:`DecodeWorkload` of ``batch`` requests of ``trace`` (a name in
    :data:`TRACES`, a generated profile of :data:`PROFILES`, or a path to an Azure-format
    CSV) and a line describing the limits."""
    shape = get_model(model)
    if batch < 1:
        raise DecodeError("batch", f"must be >= 1, got {batch}")
    if not 0 < length_scale <= 1:
        raise DecodeError("length_scale", f"must be in (0, 1], got {length_scale}")
    limit = min(max_len, shape.max_seq_len) - steps + 1
    if limit < 2:
        raise DecodeError("max_len", f"{max_len} leaves no room for {steps} steps")
    if trace in TRACES:
        requests = load_workload(trace, root)
    elif trace in PROFILES:
        requests = generate_requests(PROFILES[trace], max(4 * batch, 2000), seed=seed)
    else:
        from ..workloads import load_azure
        if not Path(trace).is_file():
            raise DecodeError("trace", f"{trace!r} is neither a known trace "
                              f"({', '.join(TRACES + tuple(PROFILES))}) nor a readable file")
        requests = load_azure(trace)
    scaled = [replace(r, prompt_tokens=max(1, round(r.prompt_tokens * length_scale)),
                      output_tokens=max(1, round(r.output_tokens * length_scale)))
              for r in requests]
    try:
        snap = snapshot(scaled, batch, progress="uniform", seed=seed, max_seq_len=limit,
                        policy="clip", pick="random")
    except ValueError as error:
        raise DecodeError("batch", str(error)) from None
    source = (f"{trace}: {batch} requests (seeded pick, seed {seed}), lengths x "
              f"{length_scale:g}, {snap.summary.describe()}")
    workload = DecodeWorkload(shape, tuple(snap.kv_lens), steps=steps, seed=seed,
                              source=source)
    return workload, source


def run_modes(workload: DecodeWorkload, modes=MODES, out_dir: Path = Path("build/sim"),
              config=None, log=print) -> dict:
    """Compile and run ``workload`` in each mode on the RTL; results by mode."""
    from .rtl_run import run_on_rtl
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = {mode: compile_decode(workload, mode, config) for mode in modes}   # fail early
    results = {}
    for i, (mode, run) in enumerate(runs.items(), 1):
        began = time.perf_counter()
        cores = run.config.npu.arrays
        count = sum(len(p) for s in run.steps for p, _ in s.core_programs())
        log(f"[{i}/{len(modes)}] {mode}: {run.config.mode.value} row buffers, "
            f"{count} instructions in {len(run.steps)} step(s)"
            + (f" on {cores} cores" if cores > 1 else "")
            + "; building (cached) and running on Verilator ...")
        results[mode] = run_on_rtl(run, out_dir / f"{mode.replace('+', '_')}.json")
        r = results[mode]
        log(f"      {mode}: {r.get('cycles', '?')} cycles, bit-exact "
            f"{_exact(r)}, {time.perf_counter() - began:.0f} s")
    return results


def _exact(result: dict) -> str:
    if "bit_exact" in result and result["bit_exact"] is None:
        return "n/a (timing-only)"
    return "yes" if result.get("bit_exact") else "NO"
