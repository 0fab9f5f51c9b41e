"""``neupims reproduce``: the paper's comparison (NEUPIMS.md 6: NeuPIMs against NPU-only
and a naive NPU+PIM) over a grid of models, batch sizes and length datasets, every point
compiled for the three modes and run on the RTL.

What runs today. The paper's table needs GPT-3 7B-175B on the ``neupims`` preset (32
channels, 8 x 128 x 128 arrays, 512-byte scratchpad words): ``GRIDS["paper"]`` on
:func:`paper_config` (``--paper``) runs it timing-only, two layers per device simulated
and the rest extended (``sim.decode.layers``), at about an hour of one core per point and
mode; :func:`paper_scale_status` says whether each model plans there. What runs in
minutes is a **slice** built to keep the paper's ratios (:func:`slice_config`):

- two channels of the paper's geometry: 32 banks (2 ranks x 4 bank groups x 4), 1 KiB
  rows, 16 PIM lanes per bank, so the PIM's internal bandwidth is 16x the channel's bus as
  in the paper; 8,192 rows per bank so hundreds of long contexts fit the KV cache;
- a 16 x 16 systolic array and a 16-lane vector unit (the widest a 64-byte word holds),
  65,536 instructions and 2^18 scratchpad words so a step of a batch is one program;
- elaborated *timing-only* (``DeviceConfig.datapath = False``): the same RTL without its
  datapath and storage, whose cycles, counters and command streams equal the full RTL's
  (the correlation suite: ``cocotb_tests/test_decode_modes.py``,
  ``cocotb_tests/test_timing_only.py``, and this slice's geometry and NPU in
  ``cocotb_tests/test_reproduce.py``). Every DRAM command still goes through the timing
  checker.

Scaling. The slice has 4 NPU MACs per byte of HBM bandwidth, the paper 128
(:func:`macs_per_byte`): a weight-streaming GEMM is as compute- or bandwidth-bound at slice
batch b as the paper's at batch 32 b (:func:`batch_factor`), so the grid's batches 2-16
stand for the paper's 64-512. The models are GPT-3 7B-175B at 1/32 of their width
(``sim.models``: ``gpt3-7b-s32`` ... d_model / 32 in heads of 32, FFN 4 d, 2 layers;
``gpt3-7b-s32-h128`` and ``gpt3-175b-s32-h128`` keep the paper's heads of 128):
with batch / 32 and width / 32 the ratio of KV-cache to weight traffic per layer,
L B / 6 d, is the paper's at the same context lengths, so the lengths are not scaled:
ShareGPT-like and Alpaca-like requests drawn from the paper's per-turn means, and the
Azure conversation trace, each caught at a uniform random point of its decode and clipped
to ``max_len`` (2,048; every clip is counted in the point's ``source``). What the slice
cannot keep: the vector unit has 16 lanes (the paper's NPU 8 x 128), and it does the
softmax and the gathers around the PIM GEMVs, so the NPU side of attention weighs more
here than in the paper.

Every figure comes from the RTL's counters (``sim.decode.report.summarize``): tokens/s
(tokens of the step over its cycles at the configured clock), NPU utilization (the array's
busy clocks over the cycles), PIM utilization (the controllers' ``pim_busy_cycles`` over
the cycles, mean over channels) and PIM occupancy (``pim_occupied_cycles``: the PIM has
work, a row set opening included), stage cycles (stage ends seen on the sequencer's ``pc``).

Points run in parallel (one process per point, ``jobs`` at a time); the Verilator model is
built once and cached (the row-buffer mode, dual or blocked, is a run-time input).
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import json
import math
import os
import pickle
import textwrap
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from rtl.config import ConfigError, DeviceConfig, preset

from .decode.golden import MODES
from .decode.report import npu_line
from .gpu_roofline import Gpu, decode_step
from .interconnect import Interconnect, step_communication
from .models import get_model

__all__ = ["Grid", "GRIDS", "DATASETS", "PAPER", "ReproduceError", "slice_config", "paper_config",
           "paper_scale_status", "run_grid", "ratios", "with_communication", "gpu_estimate",
           "format_report", "to_json", "plot_throughput", "plot_utilization"]

#: Length datasets (``sim.decode.job.draw_workload``): ShareGPT-like and Alpaca-like
#: lengths drawn from the paper's per-turn means, and the Azure conversation trace.
DATASETS = ("sharegpt-like", "alpaca-like", "azure-conv")
#: Lengths x this before clipping: the paper's means as they are; the Azure trace's
#: contexts (about 1,150 prompt tokens) x 1/8 so most fit the slice's 256.
LENGTH_SCALE = {"sharegpt-like": 1.0, "alpaca-like": 1.0, "azure-conv": 1.0}

#: The paper's figures (NEUPIMS.md 6): average throughput ratios (``neupims/gpu``: over
#: a real A100 40 GB) and the utilization of GPT3-30B at batch 256.
PAPER = {"neupims/npu-only": 2.4, "neupims/npu+pim": 1.6, "neupims/gpu": 3.0,
         "utilization": {"model": "gpt3-30b", "batch": 256, "npu": 0.649, "pim": 0.264}}

PAPER_MODELS = ("gpt3-7b", "gpt3-13b", "gpt3-30b", "gpt3-175b")
PAPER_BATCHES = (64, 128, 256, 384, 512)


class ReproduceError(ValueError):
    """A bad grid or option; the message names the field."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class Grid:
    """Models x batches x datasets, each point run in every mode of ``modes``.
    ``reference``: (model, batch, dataset) whose utilization is set against the paper's
    GPT3-30B at batch 256. ``layers_run``: None runs every layer of the device's share;
    a number runs that many and extends each step by the steady-state layer the RTL
    measured (``sim.decode.layers``: the full-scale points). ``vocab``: the LM head's
    columns (kept small, as the paper's figures are of the decoder layers; a multiple of
    the FP16 of a scratchpad word times the cores)."""
    models: tuple
    batches: tuple
    datasets: tuple = DATASETS
    modes: tuple = MODES
    length_scale: dict = dataclasses.field(default_factory=lambda: dict(LENGTH_SCALE))
    max_len: int = 2048
    seed: int = 0
    reference: tuple = ("gpt3-30b-s32", 8, "sharegpt-like")
    layers_run: int | None = None
    vocab: int = 128

    def validate(self) -> None:
        from .models import MODELS
        for m in self.models:
            if m not in MODELS:
                raise ReproduceError("models", f"unknown model {m!r}; known: {', '.join(MODELS)}")
        for b in self.batches:
            if not isinstance(b, int) or b < 1:
                raise ReproduceError("batches", f"batch sizes are positive integers, got {b!r}")
        for d in self.datasets:
            if d not in DATASETS:
                raise ReproduceError("datasets", f"unknown dataset {d!r}; choose from "
                                     f"{', '.join(DATASETS)}")
        for mode in self.modes:
            if mode not in MODES:
                raise ReproduceError("modes", f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
        for d in self.datasets:
            scale = self.length_scale.get(d)
            if scale is None or not 0 < scale <= 1:
                raise ReproduceError("length_scale", f"{d}: must be in (0, 1], got {scale}")
        if self.max_len < 2:
            raise ReproduceError("max_len", f"must be >= 2, got {self.max_len}")
        if self.layers_run is not None and (not isinstance(self.layers_run, int)
                                            or self.layers_run < 2):
            raise ReproduceError("layers_run", f"at least 2 layers (a steady-state layer), "
                                 f"got {self.layers_run!r}")
        if not (self.models and self.batches and self.datasets and self.modes):
            raise ReproduceError("grid", "needs at least one model, batch, dataset and mode")

    def points(self) -> list[tuple]:
        """(model, batch, dataset) in table order."""
        return [(m, b, d) for m in self.models for d in self.datasets for b in self.batches]

    def reference_point(self) -> tuple | None:
        """The grid's point closest to ``reference``: the reference model (else the last
        model), its dataset (else the first), the largest batch <= the reference's (else
        the smallest)."""
        model, batch, dataset = self.reference
        model = model if model in self.models else self.models[-1]
        dataset = dataset if dataset in self.datasets else self.datasets[0]
        below = [b for b in self.batches if b <= batch]
        return model, max(below) if below else min(self.batches), dataset


SLICE_MODELS = ("gpt3-7b-s32", "gpt3-13b-s32", "gpt3-30b-s32", "gpt3-175b-s32")

#: Layers per device run on the RTL at full scale (the rest extended, ``sim.decode.layers``)
PAPER_LAYERS_RUN = 2
#: Simulated clocks between a full-scale point's progress lines (about 2 minutes)
FULL_SCALE_PROGRESS = 200_000
#: The full-scale LM head's columns: one 256-FP16 word per core of the ``neupims`` NPU
#: (GPT-3's 50,257 would make the head, not the layers, most of a 2-layer run)
PAPER_VOCAB = 2048

GRIDS = {
    "full": Grid(models=SLICE_MODELS, batches=(2, 4, 8, 12, 16)),
    "paper": Grid(models=PAPER_MODELS, batches=PAPER_BATCHES, layers_run=PAPER_LAYERS_RUN,
                  vocab=PAPER_VOCAB, reference=("gpt3-30b", 256, "sharegpt-like")),
    "paper-quick": Grid(models=("gpt3-7b",), batches=(64,), datasets=("sharegpt-like",),
                        layers_run=PAPER_LAYERS_RUN, vocab=PAPER_VOCAB,
                        reference=("gpt3-7b", 64, "sharegpt-like")),
    "quick": Grid(models=("gpt3-7b-s32",), batches=(4, 8, 16),
                  datasets=("sharegpt-like", "alpaca-like"),
                  reference=("gpt3-7b-s32", 8, "sharegpt-like")),
}


def macs_per_byte(config: DeviceConfig) -> float:
    """The NPU's MACs per cycle over the HBM's peak bytes per cycle: the batch at which a
    weight-streaming GEMM turns from bandwidth- to compute-bound is proportional to it."""
    g = config.geometry
    return config.npu.macs_per_cycle / (g.channels * g.burst_bytes / (g.burst_length // 2))


def batch_factor(config: DeviceConfig) -> float:
    """Paper batch per slice batch at the same GEMM compute-to-bandwidth balance."""
    return macs_per_byte(preset("neupims")) / macs_per_byte(config)


def slice_config(cores: int = 1, array: tuple | None = None, word_bytes: int = 64,
                 lanes: int = 16, weight_buffers: int = 2) -> DeviceConfig:
    """The slice (see the module docstring): two channels of the paper's geometry (32 banks
    = 2 ranks x 4 bank groups x 4, 1 KiB rows, 16 PIM lanes; the ``decode`` preset's
    timing), 8,192 rows per bank, a 16 x 16 array with two weight buffers, 16 vector
    lanes, timing-only.
    ``cores``: NPU cores (``sim.decode.compiler.with_cores``), each with ``array`` (rows,
    columns; default 16 x 16) and ``lanes`` vector lanes, on scratchpad words of
    ``word_bytes`` (default one 64-byte burst; a wider word for a wider vector unit:
    ``lanes`` FP32 must fit one word). The scratchpad has 2^18 words whatever their size
    (its size does not enter any timing; buffers of one burst per word take as many words
    on any word). ``weight_buffers``: 2 (default, as the paper's NPU) preloads each array
    pass's weights under the pass before; 1 waits for the array to drain
    (``NpuConfig.weight_buffers``)."""
    from .decode.compiler import with_cores
    base = preset("decode")
    rows, cols = array or (16, 16)
    config = base.replace(
        name="reproduce-slice", stored_rows=8192, datapath=False,
        geometry=dataclasses.replace(base.geometry, bankgroups=4, banks_per_group=4,
                                     rows=8192, columns=64),
        npu=dataclasses.replace(base.npu, array_rows=rows, array_cols=cols, vector_lanes=lanes,
                                instruction_words=65536, word_bytes=word_bytes,
                                scratchpad_words=1 << 18, weight_buffers=weight_buffers))
    from rtl.npu.vector_engine import engine_supported
    if not engine_supported(config):     # the built-in vector engine, as the decode runs need
        raise ConfigError("NpuConfig.vector_lanes", f"{lanes} lanes must divide the "
                          f"{word_bytes // 4} FP32 of a {word_bytes}-byte scratchpad word "
                          f"(NpuConfig.word_bytes)")
    config = config if cores == 1 else with_cores(config, cores)
    from rtl.npu.gemm_engine import check_array_shape
    from rtl.npu.top import check_cores
    check_array_shape(config)           # fail here, naming the field, not in a worker
    check_cores(config)
    return config


#: Instructions per core of :func:`paper_config`.
PAPER_INSTRUCTION_WORDS = 1 << 20


def paper_config(weight_buffers: int = 2) -> DeviceConfig:
    """The ``neupims`` preset (32 channels of 32 banks, 8 cores of a 128 x 128 array and
    128 vector lanes on 512-byte words) as the full-scale points run it: timing-only; the
    ``decode`` preset's address map (the KV layout's K and V tiles are contiguous
    bursts); every row of a bank stored (a timing-only bank stores nothing: the rows are
    where the compiler places the model's weights and KV cache); 2^20 instructions (a
    step is straight-line code: the largest paper point that compiles, GPT3-30B at batch
    384 on the Azure conversation trace in ``npu+pim``, needs 219,551) and
    2^20 scratchpad words per core, since the compiler keeps a layer's weights (and the
    next one's, prefetched) and the batch's activations on chip where the paper's NPU
    streams tiles (the scratchpad's size enters no timing: a timing-only scratchpad has
    no storage, only its ports)."""
    config = preset("neupims")
    return config.replace(
        datapath=False, address_map=preset("decode").address_map,
        stored_rows=config.geometry.rows,
        npu=dataclasses.replace(config.npu, instruction_words=PAPER_INSTRUCTION_WORDS,
                                scratchpad_words=1 << 20, weight_buffers=weight_buffers))


@functools.cache
def paper_scale_status() -> list[dict]:
    """Whether each of the paper's models compiles on the full-scale configuration
    (:func:`paper_config`, ``--paper``) at the paper's largest batch (512 requests of 100
    tokens, :data:`PAPER_LAYERS_RUN` layers per device) in every mode: HBM rows,
    scratchpad and instruction memory (a compile without values, 10-45 s per mode); the
    decode compiler's own errors when not (checked, not assumed). Computed once per
    process and cached in ``build/paper_scale/``, keyed by the configuration and every
    source of ``sim/`` and ``rtl/`` (parallel processes wait for one computation)."""
    from .harness import BUILD_ROOT, _file_lock
    root = Path(__file__).resolve().parent.parent
    key = hashlib.sha256(paper_config().to_json().encode())
    for source in sorted([*(root / "sim").rglob("*.py"), *(root / "rtl").rglob("*.py")]):
        key.update(source.read_bytes())
    path = BUILD_ROOT / "paper_scale" / f"{key.hexdigest()[:16]}.json"
    with _file_lock(path.with_suffix(".lock")):
        if not path.exists():
            path.write_text(json.dumps(_paper_scale_status()))
        return json.loads(path.read_text())


def _paper_scale_status() -> list[dict]:
    from .decode.compiler import compile_decode
    from .decode.layers import truncated
    from .decode.workload import DecodeError, DecodeWorkload
    from .models import get_model
    config = paper_config()
    out = []
    for name in PAPER_MODELS:
        reasons = []
        model = truncated(get_model(name), PAPER_LAYERS_RUN)
        batch = max(PAPER_BATCHES)
        workload = DecodeWorkload(model, (100,) * batch, vocab=PAPER_VOCAB)
        for mode in MODES:
            try:
                compile_decode(workload, mode, config, values=False)
            except (ConfigError, DecodeError) as error:
                reasons.append(f"{mode}: {error}")
        out.append({"model": name, "config": "neupims (full scale, --paper)",
                    "batches": list(PAPER_BATCHES), "run": not reasons,
                    "reason": (f"batch {batch}: " + "; ".join(reasons)) if reasons else None})
    return out


# ----------------------------------------------------------------------------- running

def _point_file(out: Path, model: str, batch: int, dataset: str, mode: str) -> Path:
    return out / "points" / f"{model}-b{batch}-{dataset}-{mode.replace('+', '_')}.json"


def _finished_file(out: Path, model: str, batch: int, dataset: str, mode: str) -> Path:
    return _point_file(out, model, batch, dataset, mode).with_suffix(".point.json")


#: NpuConfig fields added after points were saved, with the value that is the behaviour
#: of the code before them (a saved key without the field matches a config at it)
ADDED_NPU_FIELDS = {"response_buffer": 0, "dma_responses": 1, "dma_overlap": False}


def _point_key(grid: Grid, config_json: str) -> dict:
    """What a finished point's result depends on besides the code: the device and the
    grid's workload parameters (not its lists of models, batches, datasets and modes).
    The instruction memory's depth is left out: it decides which programs fit, not how
    many clocks a program that fits takes (``tests/test_npu_core.py``)."""
    config = json.loads(config_json)
    config["npu"].pop("instruction_words")
    return {"config": config, "seed": grid.seed, "max_len": grid.max_len,
            "length_scale": dict(sorted(grid.length_scale.items())),
            "layers_run": grid.layers_run, "vocab": grid.vocab}


def _finished_point(out: Path, task: tuple, grid: Grid, config_json: str) -> dict | None:
    """The point ``task`` saved by an earlier run of the same key (``--resume``), else
    None."""
    path = _finished_file(out, *task)
    if not path.exists():
        return None
    saved = json.loads(path.read_text())
    key = saved.get("key")
    if key and isinstance(key.get("config"), dict):
        npu = key["config"].get("npu", {})
        npu.pop("instruction_words", None)             # a key saved with the depth in it
        for name, value in ADDED_NPU_FIELDS.items():    # saved before the field existed
            npu.setdefault(name, value)
    if key != _point_key(grid, config_json):
        return None
    point = saved["point"]
    result = _point_file(out, *task)
    if "stage_busy" not in point and result.exists():    # saved before the field
        point.update(_stage_busy(json.loads(result.read_text())))
    return point


def _compiled_file(out: Path, model: str, batch: int, dataset: str, mode: str) -> Path:
    return _point_file(out, model, batch, dataset, mode).with_suffix(".compiled.pkl")


def _workload(model: str, batch: int, dataset: str, grid: Grid):
    """The point's workload (and its source line): ``batch`` requests drawn from
    ``dataset``; with ``grid.layers_run``, the model cut to that many layers per device."""
    from .decode.job import draw_workload
    from .decode.layers import truncated
    workload, source = draw_workload(model, dataset, batch, 1, grid.length_scale[dataset],
                                     grid.max_len, grid.seed)
    model = workload.model if grid.layers_run is None else truncated(workload.model,
                                                                       grid.layers_run)
    return dataclasses.replace(workload, model=model, vocab=grid.vocab), source


def _compile_point(model: str, batch: int, dataset: str, grid: Grid, out: str,
                   config_json: str) -> str | None:
    """Draw and compile one point in every mode (a worker process), saving each compiled
    run for :func:`_run_point`; the reason as text when the point cannot run (None when
    it can). Full-scale grids (``layers_run``) compile without values (programs and
    addresses only: seconds, where the data, golden and image take minutes and GBs)."""
    from .decode.layers import LayersError
    from .decode.workload import DecodeError
    from .models import ModelError
    from .workloads import WorkloadError
    config = DeviceConfig.from_json(config_json)
    try:
        began = time.perf_counter()
        workload, source = _workload(model, batch, dataset, grid)
        for mode in grid.modes:
            run = _compile(workload, mode, config, grid)
            path = _compiled_file(Path(out), model, batch, dataset, mode)
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "wb") as f:
                pickle.dump((run, list(workload.kv_lens), source,
                             time.perf_counter() - began), f, protocol=pickle.HIGHEST_PROTOCOL)
            began = time.perf_counter()
    except (DecodeError, ModelError, WorkloadError, ConfigError, LayersError,
            ValueError) as error:
        return f"point {model} batch {batch} {dataset}: {error}"
    return None


def _compile(workload, mode: str, config: DeviceConfig, grid: Grid):
    """A point's compiled run: at full scale (``layers_run``, a timing-only device whose
    runs skip the image load) without values, else with the data, golden and image."""
    from .decode.compiler import compile_decode
    lean = grid.layers_run is not None and not config.datapath
    return compile_decode(workload, mode, config, values=not lean)


def _run_point(model: str, batch: int, dataset: str, mode: str, grid: Grid, out: str,
               config_json: str) -> dict:
    """One point in one mode (a worker process): the run :func:`_compile_point` saved
    (else draw and compile it here), then the RTL."""
    from .decode.report import summarize
    from .decode.rtl_run import run_on_rtl
    config = DeviceConfig.from_json(config_json)
    began = time.perf_counter()
    compiled_file = _compiled_file(Path(out), model, batch, dataset, mode)
    if compiled_file.exists():
        with open(compiled_file, "rb") as f:
            run, kv_lens, source, compiled = pickle.load(f)
        compiled_file.unlink()
    else:
        workload, source = _workload(model, batch, dataset, grid)
        kv_lens = list(workload.kv_lens)
        run = _compile(workload, mode, config, grid)
        compiled = time.perf_counter() - began
    if grid.layers_run is None:         # seconds to minutes: a line when the point ends
        every, show = 10 ** 9, (lambda line: None)
    else:                               # full scale: hours; the simulated clocks and rate
        every = FULL_SCALE_PROGRESS

        def show(line):
            if "cycles/s" in line or "loading" in line:
                print(f"  {model} b{batch} {dataset} {mode}: {line.strip()}", flush=True)
    result = run_on_rtl(run, _point_file(Path(out), model, batch, dataset, mode),
                        progress_every=every, show=show,
                        image_clocks=grid.layers_run is None)
    s = summarize(result)
    measured = s["cycles"]          # the utilizations are over the clocks simulated
    layers = _whole_model(result, s, mode, grid, model, config)
    point = _point_fields(model, batch, dataset, mode, run, result, s, measured, config)
    point.update(kv_lens=kv_lens, source=source, compile_s=round(compiled, 1),
                 wall_s=round(time.perf_counter() - began, 1), **layers)
    _finished_file(Path(out), model, batch, dataset, mode).write_text(json.dumps(
        {"key": _point_key(grid, config_json), "commit": _commit(), "point": point}))
    return point


def _commit() -> str:
    """The code's git commit (with ``-dirty`` for uncommitted changes), or ``unknown``."""
    import subprocess
    try:
        head = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True,
                              text=True, cwd=Path(__file__).parent, timeout=10)
        return head.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _point_fields(model, batch, dataset, mode, run, result, s, measured, config) -> dict:
    """A finished run's point (``points[]`` of the report), before the workload's fields;
    ``measured``: the clocks simulated (``s`` may be extended to the whole model)."""
    busy = {k: sum(step["counters"][k] for step in result["steps"])
            for k in ("vector_busy", "dma_busy", "gemm_busy", "macs")}
    return {"model": model, "batch": batch, "dataset": dataset, "mode": mode,
            "tokens_per_s": s["tokens_per_s"], "cycles": s["cycles"], "tokens": s["tokens"],
            "stages": s["stages"], "npu_util": s["npu_util"], "pim_util": s["pim_util"],
            "pim_occupancy": s["pim_occupancy"],
            "mac_util": busy["macs"] / (measured * config.npu.macs_per_cycle),
            "vector_util": busy["vector_busy"] / (measured * config.npu.arrays),
            "dma_util": busy["dma_busy"] / (measured * config.npu.arrays),
            "gemm_util": busy["gemm_busy"] / (measured * config.npu.arrays),
            "normal_during_pim": s["normal_during_pim"],
            "timing_violations": s["timing_violations"],
            "commands_checked": s["commands_checked"], "complete": s["complete"],
            "instructions": sum(len(step.program) for step in run.steps),
            "sim_cycles_per_s": s["sim_cycles_per_s"], "build_s": result.get("build_s", 0.0),
            **_stage_busy(result)}


def _stage_busy(result: dict) -> dict:
    """``stage_busy``: the first step's stages with their units' busy fractions
    (``sim.decode.report.stage_busy``); ``timeline_period``: the clocks between the
    counter reads they come from."""
    from .decode.report import stage_busy
    if not result.get("steps"):
        return {"stage_busy": [], "timeline_period": None}
    step = result["steps"][0]
    return {"stage_busy": stage_busy(step), "timeline_period": step["timeline"]["period"]}


def _whole_model(result: dict, s: dict, mode: str, grid: Grid, model: str,
                 config: DeviceConfig) -> dict:
    """With ``grid.layers_run``: ``s``'s cycles, stages and tokens/s made those of the
    whole model (each step extended by ``sim.decode.layers.extrapolate``), and the fields
    ``layers_run``, ``layers`` (per device), ``cycles_run`` and ``unit_cycles`` (the
    measured steady-state layer, summed over steps). The utilizations stay those
    measured over the layers run."""
    if grid.layers_run is None:
        return {}
    from .decode.layers import extrapolate
    from .models import get_model
    layers = get_model(model).layers_per_device
    whole = [extrapolate(step["stages"], mode, grid.layers_run, layers, step["cycles"])
             for step in result["steps"]]
    s["cycles"] = sum(w["cycles"] for w in whole)
    s["tokens_per_s"] = s["tokens"] * config.timing.clock_hz / s["cycles"]
    s["stages"] = {}
    for w in whole:
        for name, cycles in w["stages"].items():
            s["stages"][name] = s["stages"].get(name, 0) + cycles
    return {"layers_run": grid.layers_run, "layers": layers,
            "cycles_run": sum(w["cycles_run"] for w in whole),
            "unit_cycles": sum(w["unit_cycles"] for w in whole)}


def _check_points(grid: Grid, config: DeviceConfig, out: Path, jobs: int, log) -> None:
    """Compile every point before running any, ``jobs`` at a time (a point that cannot run
    stops the grid with its reason; nothing is dropped); the runs are kept for the RTL."""
    began = time.perf_counter()
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        reasons = list(pool.map(_compile_point, *zip(*grid.points()),
                                *([x] * len(grid.points()) for x in (grid, str(out),
                                                                    config.to_json()))))
    failed = [reason for reason in reasons if reason]
    if failed:
        raise ReproduceError("grid", failed[0])
    done = "compiled (without values)" if grid.layers_run and not config.datapath \
        else "compiled"
    log(f"neupims reproduce: {done} {len(reasons)} point{'s' if len(reasons) != 1 else ''} x "
        f"{len(grid.modes)} modes in {time.perf_counter() - began:.0f} s")


def _on_failure(message: str, waiting, running: dict, out: Path, log) -> None:
    """Say at once that a point failed: the points not started are left out, the ones
    still running run to their end, each saved for ``--resume`` (Ctrl-C stops them)."""
    names = [f"{m} b{b} {d} {mode}" for m, b, d, mode in running.values()]
    log(f"neupims reproduce: {message}")
    log(f"neupims reproduce: {len(waiting)} point{'s' if len(waiting) != 1 else ''} not "
        f"started left out; " + (f"waiting for {len(names)} in flight ({', '.join(names)}): "
                                 f"each one that finishes is kept in {out / 'points'} for "
                                 f"--resume; Ctrl-C stops them" if names
                                 else "none in flight"))


def run_grid(grid: Grid, out: Path = Path("build/reproduce"), config: DeviceConfig | None = None,
             jobs: int | None = None, log=print, precheck: bool = False,
             resume: bool = False, link: Interconnect | None = None,
             report_only: bool = False) -> dict:
    """Run every point of ``grid`` in every mode on the RTL; the report dict (see
    :func:`to_json`). ``jobs``: worker processes (default: the CPU count). ``log``:
    receives one line per finished point (with the count, the simulated cycles and the
    rate). ``precheck``: compile every point first (fail before any run). ``resume``: take
    the points an earlier run in ``out`` finished with the same device and workload
    parameters (``points/*.point.json``; each records its code's git commit) instead of
    running them again. ``link``: the links between the devices of a TP/PP group, for the
    report's communication estimate (default :class:`sim.interconnect.Interconnect`).
    ``report_only``: run nothing; the report of the points an earlier run in ``out``
    finished (as ``resume``), the others listed in its ``unfinished``."""
    grid.validate()
    config = config or slice_config()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = max(1, jobs or os.cpu_count() or 1)
    if precheck and not report_only:
        _check_points(grid, config, out, jobs, log)
    tasks = [(m, b, d, mode) for m, b, d in grid.points() for mode in grid.modes]
    total, points, cycles = len(tasks), [], 0
    if report_only:
        points = [p for p in (_finished_point(out, t, grid, config.to_json()) for t in tasks)
                  if p is not None]
        done = {(p["model"], p["batch"], p["dataset"], p["mode"]) for p in points}
        unfinished = [t for t in tasks if t not in done]
        log(f"neupims reproduce: the report of {len(points)} finished point"
            f"{'s' if len(points) != 1 else ''} in {out / 'points'}, {len(unfinished)} not "
            f"finished (--report-only: nothing run)")
        report = to_json(grid, config, points, jobs=jobs, link=link)
        report["unfinished"] = [dict(zip(("model", "batch", "dataset", "mode"), t))
                                for t in unfinished]
        return report
    if resume:
        points = [p for p in (_finished_point(out, t, grid, config.to_json()) for t in tasks)
                  if p is not None]
        done = {(p["model"], p["batch"], p["dataset"], p["mode"]) for p in points}
        tasks = [t for t in tasks if t not in done]
        for task in done:                   # compiled by the precheck, not needed
            _compiled_file(out, *task).unlink(missing_ok=True)
        log(f"neupims reproduce: {len(points)} finished point{'s' if len(points) != 1 else ''}"
            f" taken from {out / 'points'} (--resume)")
    # the longest points first, so the pool does not end on one long point
    tasks.sort(key=lambda t: -t[1] * (2 if t[3] == "npu-only" else 1))
    log(f"neupims reproduce: {len(grid.points())} points x {len(grid.modes)} modes = "
        f"{len(tasks)} RTL runs on {config.summary()}, {jobs} at a time")
    began = time.perf_counter()
    failures: list[str] = []
    waiting = collections.deque(tasks)
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        # no more submitted than run at once: a point not started can still be left out
        running: dict = {}
        while waiting or running:
            while waiting and len(running) < jobs:     # emptied by a failure
                task = waiting.popleft()
                running[pool.submit(_run_point, *task, grid, str(out),
                                    config.to_json())] = task
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                model, batch, dataset, mode = running.pop(future)
                try:
                    point = future.result()
                except Exception as error:
                    failures.append(f"point {model} batch {batch} {dataset} {mode} failed: "
                                    f"{error}")
                    _on_failure(failures[-1], waiting, running, out, log)
                    waiting.clear()
                    continue
                points.append(point)
                cycles += point["cycles"]
                elapsed = time.perf_counter() - began
                log(f"  [{len(points)}/{total}] {model} b{batch} {dataset} {mode}: "
                    f"{point['cycles']:,} cycles, {point['tokens_per_s']:,.0f} tokens/s "
                    f"({point['wall_s']:.0f} s; {cycles:,} cycles simulated in "
                    f"{elapsed:.0f} s, {cycles / max(elapsed, 1e-9):,.0f} cycles/s over all "
                    f"workers)")
    if failures:
        more = f" (and {len(failures) - 1} more: {'; '.join(failures[1:])})" \
            if len(failures) > 1 else ""
        raise RuntimeError(failures[0] + more)
    order = {t: i for i, t in enumerate((m, b, d, mode) for m, b, d in grid.points()
                                        for mode in grid.modes)}
    points.sort(key=lambda p: order[(p["model"], p["batch"], p["dataset"], p["mode"])])
    return to_json(grid, config, points, wall_s=time.perf_counter() - began, jobs=jobs,
                   link=link)


# ----------------------------------------------------------------------------- report

def _by_key(points) -> dict:
    return {(p["model"], p["batch"], p["dataset"], p["mode"]): p for p in points}


def ratios(points: list[dict]) -> list[dict]:
    """Per (model, batch, dataset) with neupims and another mode: neupims tokens/s over
    npu-only's and over npu+pim's (None where that mode was not run)."""
    table = _by_key(points)
    out = []
    seen = []
    for p in points:
        key = (p["model"], p["batch"], p["dataset"])
        if key in seen:
            continue
        seen.append(key)
        modes = {mode: table.get(key + (mode,)) for mode in MODES}
        if modes["neupims"] is None or modes["npu-only"] is modes["npu+pim"] is None:
            continue
        neu = modes["neupims"]["tokens_per_s"]
        out.append({"model": key[0], "batch": key[1], "dataset": key[2]} | {
            f"neupims/{mode}": neu / modes[mode]["tokens_per_s"] if modes[mode] else None
            for mode in ("npu-only", "npu+pim")})
    return out


def _ratio(value) -> str:
    """``value`` as ``1.23x``; ``-`` when there is none (a mode not run)."""
    return "-" if value is None or math.isnan(value) else f"{value:.2f}x"


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")


def _geomean(values) -> float:
    values = list(values)
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def with_communication(points: list[dict], link: Interconnect, clock_hz: float) -> dict:
    """The points of models split over devices (TP or PP) with the time their devices spend
    communicating added to each step (:func:`sim.interconnect.step_communication`, an
    estimate beside the RTL's cycles, nothing overlapped): ``{"link": ..., "points": [...],
    "ratios": [...]}``; ``points[]``: model, batch, dataset, mode, ``comm_s`` (over the
    point's steps), ``share`` (of the step's time with it), ``tokens_per_s``."""
    out = []
    for p in points:
        model = get_model(p["model"])
        if model.devices == 1:
            continue
        comm = step_communication(model, p["batch"], link)
        steps = max(1, math.ceil(p["tokens"] / p["batch"]))
        comm_s = steps * comm["total_s"]
        seconds = p["cycles"] / clock_hz + comm_s
        out.append({"model": p["model"], "batch": p["batch"], "dataset": p["dataset"],
                    "mode": p["mode"], "bytes": comm["bytes"], "comm_s": comm_s,
                    "share": comm_s / seconds, "tokens_per_s": p["tokens"] / seconds})
    return {"link": dataclasses.asdict(link), "points": out, "ratios": ratios(out)}


def gpu_estimate(points: list[dict], gpu: Gpu) -> dict:
    """The GPU-only column at full scale: per (model, batch, dataset) a GPU holding the
    device's share, its decode step a roofline estimate over the point's KV lengths
    (:func:`sim.gpu_roofline.decode_step`, not simulated), and neupims over it:
    ``{"gpu": ..., "points": [...], "paper": 3.0}``."""
    out = []
    for p in points:
        if p["mode"] != "neupims":
            continue
        step = decode_step(get_model(p["model"]), list(p["kv_lens"]), gpu)
        out.append({"model": p["model"], "batch": p["batch"], "dataset": p["dataset"],
                    "tokens_per_s": step["tokens_per_s"], "gemm_s": step["gemm_s"],
                    "attention_s": step["attention_s"],
                    "neupims/gpu": p["tokens_per_s"] / step["tokens_per_s"]})
    return {"gpu": dataclasses.asdict(gpu), "points": out, "paper": PAPER["neupims/gpu"]}


def to_json(grid: Grid, config: DeviceConfig, points: list[dict], wall_s: float = 0.0,
            jobs: int = 1, link: Interconnect | None = None) -> dict:
    """``{"config": ..., "points": [...], "ratios": [...], "summary": {...}, "paper": ...,
    "communication": {...}, "gpu": {...} or None, "not_run": [...]}``; ``points[]``: model,
    batch, dataset, mode, tokens_per_s, stages, npu_util, pim_util, cycles, ... (one per
    point and mode); ``communication``: :func:`with_communication` over ``link``;
    ``gpu``: :func:`gpu_estimate` on the paper's device (None on the slice)."""
    link = link or Interconnect()
    r = ratios(points)
    reference = grid.reference_point()
    table = _by_key(points)
    keys = ("npu_util", "mac_util", "pim_util", "pim_occupancy", "vector_util", "dma_util",
            "gemm_util")
    utilization = {mode: {k: table[reference + (mode,)][k] for k in keys
                          if k in table[reference + (mode,)]}
                   for mode in grid.modes if reference + (mode,) in table}
    summary = {}
    for key in ("neupims/npu-only", "neupims/npu+pim"):
        values = [x[key] for x in r if x[key] is not None]
        stats = {"mean": _mean(values), "geomean": _geomean(values), "min": min(values),
                 "max": max(values)} if values else dict.fromkeys(("mean", "geomean", "min",
                                                                    "max"))
        summary[key] = stats | {"paper": PAPER[key], "points": len(values)}
    return {
        "config": {"device": config.summary(), "device_config": config.to_dict(),
                   "clock_hz": config.timing.clock_hz,
                   "grid": dataclasses.asdict(grid), "jobs": jobs, "wall_s": round(wall_s, 1),
                   "macs_per_byte": macs_per_byte(config),
                   "paper_macs_per_byte": macs_per_byte(preset("neupims")),
                   "batch_factor": batch_factor(config),
                   "timing_only": not config.datapath},
        "points": points,
        "ratios": r,
        "communication": with_communication(points, link, config.timing.clock_hz),
        "gpu": gpu_estimate(points, Gpu()) if config.name == "neupims" else None,
        "summary": {"ratios": summary,
                    "utilization": {"point": dict(zip(("model", "batch", "dataset"), reference)),
                                    "modes": utilization,
                                    "paper": PAPER["utilization"]}},
        "not_run": [] if config.name == "neupims" else paper_scale_status(),
    }


def _table(header, rows) -> list[str]:
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    fmt = lambda r: "  ".join(str(v).rjust(w) if i else str(v).ljust(w)  # noqa: E731
                              for i, (v, w) in enumerate(zip(r, widths)))
    return [fmt(header), "  ".join("-" * w for w in widths)] + [fmt(r) for r in rows]


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def format_report(report: dict) -> str:
    """The configuration, the throughput table with ratios, the ratio summary against the
    paper, the utilization at the reference point against the paper, the stage cycles,
    and what was not run."""
    cfg, grid = report["config"], report["config"]["grid"]
    lines = ["NeuPIMs reproduction on the RTL (every DRAM command timing-checked)",
             f"  device        {cfg['device']}",
             f"  clock         {cfg['clock_hz'] / 1e9:g} GHz"]
    npu = cfg["device_config"]["npu"]
    lines.append(f"  npu           {npu_line(npu)}")
    lines += [
             f"  models        {', '.join(grid['models'])}",
             f"  batches       {', '.join(map(str, grid['batches']))}",
             "  datasets      " + ", ".join(f"{d} (lengths x {grid['length_scale'][d]:g})"
                                            for d in grid["datasets"])
             + f", clipped to {grid['max_len']} tokens, seed {grid['seed']}",
             f"  balance       {cfg['macs_per_byte']:g} NPU MACs per byte of HBM bandwidth "
             f"(paper: {cfg['paper_macs_per_byte']:g}): slice batch b ~ paper batch "
             f"{cfg['batch_factor']:g} b in the GEMMs' compute-to-bandwidth balance",
             f"  runs          {len(report['points'])} in {cfg['wall_s']:.0f} s, "
             f"{cfg['jobs']} at a time"]
    if grid.get("layers_run"):
        lines.append(f"  layers        {grid['layers_run']} per device run on the RTL, the rest "
                     f"extended by the steady-state layer it measured (sim.decode.layers); "
                     f"utilizations over the layers run")
    lines.append("")
    table = _by_key(report["points"])
    rmap = {(x["model"], x["batch"], x["dataset"]): x for x in report["ratios"]}
    rows = []
    for key in dict.fromkeys((p["model"], p["batch"], p["dataset"]) for p in report["points"]):
        row = [key[0], str(key[1]), f"{key[1] * cfg['batch_factor']:g}", key[2]]
        for mode in MODES:
            p = table.get(key + (mode,))
            row.append(f"{p['tokens_per_s']:,.0f}" if p else "-")
        x = rmap.get(key, {})
        row += [_ratio(x.get("neupims/npu-only")), _ratio(x.get("neupims/npu+pim"))]
        p = table.get(key + ("neupims",))
        row += [_pct(p["npu_util"]) if p else "-", _pct(p["pim_util"]) if p else "-"]
        rows.append(row)
    lines += ["Throughput (tokens/s at the configured clock)"]
    lines += _table(["model", "batch", "~paper batch", "dataset"] + [f"{m}" for m in MODES]
                    + ["neupims/npu-only", "neupims/npu+pim", "NPU util*", "PIM util*"], rows)
    lines += ["  * neupims mode", ""]
    s = report["summary"]["ratios"]
    lines += ["Ratios over the grid (ours) and the paper's average (GPT-3 7B-175B, batch "
              "64-512, on the paper's device)"]
    lines += _table(["ratio", "points", "mean", "geomean", "min", "max", "paper"],
                    [[k, str(v.get("points", "")), _ratio(v["mean"]), _ratio(v["geomean"]),
                      _ratio(v["min"]), _ratio(v["max"]), f"{v['paper']:.1f}x"]
                     for k, v in s.items()])
    lines += _communication_lines(report.get("communication"))
    lines += _gpu_lines(report.get("gpu"))
    u = report["summary"]["utilization"]
    pt, paper = u["point"], u["paper"]
    lines += ["", f"Utilization at {pt['model']} batch {pt['batch']} {pt['dataset']} (paper: "
                  f"{paper['model']} batch {paper['batch']}, neupims: NPU "
                  f"{_pct(paper['npu'])}, PIM {_pct(paper['pim'])})"]
    lines += _table(["mode", "NPU util", "MAC util", "PIM util", "PIM occupied",
                     "vector busy", "DMA busy", "GEMM busy"],
                    [[mode, _pct(v["npu_util"])]
                     + [_pct(v[k]) if k in v else "-" for k in ("mac_util",)]
                     + [_pct(v["pim_util"])]
                     + [_pct(v[k]) if k in v else "-" for k in ("pim_occupancy", "vector_util",
                                                                "dma_util", "gemm_util")]
                     for mode, v in u["modes"].items()])
    lines += ["  NPU util: clocks the systolic array is busy (weight preload, fill, stream, "
              "drain); MAC util: rows streamed x H x W over the array's peak; GEMM busy: clocks a GEMM "
              "is in flight (array and operand moves); PIM util: the controllers' PIM_GEMV "
              "clocks, PIM occupied: clocks the PIM has work (a transaction at its queue's "
              "head, e.g. opening a row set, or a GEMV or GWRITE running), each a mean over "
              "channels; all over the step's cycles"]
    names = list(dict.fromkeys(n for p in report["points"] for n in p["stages"]))
    lines += ["", "Stage cycles (per point and mode)"]
    lines += _table(["model", "batch", "dataset", "mode", "cycles"] + names,
                    [[p["model"], str(p["batch"]), p["dataset"], p["mode"], f"{p['cycles']:,}"]
                     + [f"{p['stages'][n]:,}" if n in p["stages"] else "" for n in names]
                     for p in report["points"]])
    lines += _stage_busy_lines(report["points"], grid.get("layers_run"))
    if report.get("unfinished"):
        lines += ["", "Not finished (no point saved in --out; --report-only runs none)"]
        lines += [f"  {u['model']} batch {u['batch']} {u['dataset']} {u['mode']}"
                  for u in report["unfinished"]]
    if report["not_run"]:
        lines += ["", "The paper's models at full scale (not in this grid)"]
    for x in report["not_run"]:
        state = ("compile; run with `neupims reproduce --paper`" if x["run"]
                 else f"not every batch compiles: {x['reason']}")
        lines.append(f"  {x['model']} on {x['config']}, batches "
                     f"{', '.join(map(str, x['batches']))}: {state}")
    return "\n".join(lines)


def _stage_busy_lines(points: list[dict], layers_run: int | None) -> list[str]:
    """Full-scale grids: per point and mode, the steady-state layer's stages (the unit
    that ``sim.decode.layers`` repeats) with each unit's busy fraction."""
    from .decode.layers import repeating_unit
    from .decode.report import BUSY_UNITS
    rows, periods = [], set()
    for p in points:
        if not layers_run or not p.get("stage_busy"):
            continue
        periods.add(p["timeline_period"])
        for stage in repeating_unit(p["stage_busy"], p["mode"], layers_run):
            rows.append([p["model"], str(p["batch"]), p["dataset"], p["mode"], stage["name"],
                         f"{stage['cycles']:,}"] + [_pct(stage[k]) for k in BUSY_UNITS]
                        + [_phases(stage)])
    if not rows:
        return []
    return (["", "Where the steady-state layer's clocks go (each unit's busy clocks over the "
             "stage's, from the RTL counters read every "
             f"{' or '.join(f'{x:,}' for x in sorted(periods))} clocks)"]
            + _table(["model", "batch", "dataset", "mode", "stage", "cycles", "array", "GEMM",
                      "DMA", "vector", "PIM unit", "PIM GEMV", "busy together (most clocks)"],
                     rows)
            + ["  array, GEMM, DMA, vector, PIM unit (a PIM transaction in flight): the cores' "
               "units, the mean over the cores; PIM GEMV: the controllers' PIM_GEMV clocks, "
               "the mean over the channels; busy together: the stage's clocks by which of DMA, "
               "array, vector and PIM unit were busy over 5 % in each window, the three largest "
               "(sim.decode.report.stage_phases)"])


def _phases(stage: dict, shown: int = 3) -> str:
    """The largest ``shown`` phases of a ``stage_busy`` stage as "DMA 41 %, ..."."""
    phases = stage.get("phases") or []
    return ", ".join(f"{label} {100 * clocks / stage['cycles']:.0f} %"
                     for label, clocks in phases[:shown]) if stage["cycles"] else ""


def _communication_lines(comm: dict | None) -> list[str]:
    """The throughput table again with the devices' communication added (an estimate)."""
    if not comm or not comm["points"]:
        return []
    link = comm["link"]
    table = _by_key(comm["points"])
    rmap = {(x["model"], x["batch"], x["dataset"]): x for x in comm["ratios"]}
    rows = []
    for key in dict.fromkeys((p["model"], p["batch"], p["dataset"]) for p in comm["points"]):
        some = next(p for p in comm["points"] if (p["model"], p["batch"], p["dataset"]) == key)
        row = [key[0], str(key[1]), key[2], f"{some['comm_s'] * 1e6:,.1f}"]
        for mode in MODES:
            p = table.get(key + (mode,))
            row.append(f"{p['tokens_per_s']:,.0f} ({_pct(p['share'])})" if p else "-")
        x = rmap.get(key, {})
        rows.append(row + [_ratio(x.get("neupims/npu-only")), _ratio(x.get("neupims/npu+pim"))])
    return ["", f"With the devices' communication (an estimate, not simulated: per step a ring "
                f"all-reduce of the batch's activations twice per layer over the TP group and "
                f"a hand-over between PP stages, over {link['gbytes_per_s']:g} GB/s links, "
                f"{link['hop_us']:g} us per hop, nothing overlapped; sim.interconnect)"] + \
        _table(["model", "batch", "dataset", "comm us/step"]
               + [f"{m} (comm share)" for m in MODES]
               + ["neupims/npu-only", "neupims/npu+pim"], rows)


def _gpu_lines(gpu: dict | None) -> list[str]:
    """The GPU-only column (a roofline estimate) against neupims."""
    if not gpu or not gpu["points"]:
        return []
    g = gpu["gpu"]
    rows = [[p["model"], str(p["batch"]), p["dataset"], f"{p['tokens_per_s']:,.0f}",
             f"{p['gemm_s'] * 1e3:,.2f}", f"{p['attention_s'] * 1e3:,.2f}",
             _ratio(p["neupims/gpu"]), f"{gpu['paper']:.1f}x"] for p in gpu["points"]]
    return ["", f"GPU-only: one {g['name']} per device, holding its share (a roofline "
                f"estimate, not simulated: every GEMM and attention at the longer of its FLOPs "
                f"at {g['fp16_tflops']:g} TFLOPS and its bytes at {g['hbm_gbytes_per_s']:g} "
                f"GB/s; a best case for the GPU; the paper's 3x is over a real A100; "
                f"sim.gpu_roofline)"] + \
        _table(["model", "batch", "dataset", "GPU tokens/s", "GEMMs ms/step",
                "attention ms/step", "neupims/GPU", "paper"], rows)


_PALETTE = {"npu-only": "tab:gray", "npu+pim": "tab:purple", "neupims": "tab:red"}


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _batch_axis(ax, batches, title: str, ylabel: str) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(batches, [str(b) for b in batches])
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("batch")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)


def plot_throughput(report: dict, path) -> None:
    """Tokens/s against batch size, one panel per model and dataset, a line per mode."""
    plt = _pyplot()
    grid = report["config"]["grid"]
    models, datasets = grid["models"], grid["datasets"]
    table = _by_key(report["points"])
    fig, axes = plt.subplots(len(models), len(datasets), squeeze=False,
                             figsize=(4.2 * len(datasets), 3.2 * len(models)))
    for i, model in enumerate(models):
        for j, dataset in enumerate(datasets):
            ax = axes[i, j]
            for mode in grid["modes"]:
                xs = [b for b in grid["batches"] if (model, b, dataset, mode) in table]
                ys = [table[(model, b, dataset, mode)]["tokens_per_s"] for b in xs]
                ax.plot(xs, ys, marker="o", color=_PALETTE.get(mode), label=mode)
            _batch_axis(ax, grid["batches"], f"{model}, {dataset}", "tokens/s")
    axes[0, 0].legend(fontsize=8)
    title = f"Throughput on {report['config']['device']}"
    fig.suptitle(textwrap.fill(title, int(fig.get_figwidth() * 12)), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_utilization(report: dict, path) -> None:
    """NPU and PIM utilization against batch size per mode (first dataset, each model),
    and the reference point's bars next to the paper's."""
    plt = _pyplot()
    grid = report["config"]["grid"]
    table = _by_key(report["points"])
    dataset = report["summary"]["utilization"]["point"]["dataset"]
    models = grid["models"]
    fig, axes = plt.subplots(1, len(models) + 1, squeeze=False,
                             figsize=(4.2 * (len(models) + 1), 3.4))
    for ax, model in zip(axes[0], models):
        for mode in grid["modes"]:
            xs = [b for b in grid["batches"] if (model, b, dataset, mode) in table]
            for key, style in (("npu_util", "-"), ("pim_util", "--")):
                ax.plot(xs, [100 * table[(model, b, dataset, mode)][key] for b in xs], style,
                        marker="o", color=_PALETTE.get(mode),
                        label=f"{mode} {key[:3].upper()}")
        _batch_axis(ax, grid["batches"], f"{model}, {dataset}: NPU (solid), PIM (dashed)",
                    "utilization (%)")
    axes[0, 0].legend(fontsize=7)
    u = report["summary"]["utilization"]
    ax = axes[0, -1]
    labels = list(u["modes"]) + [f"paper ({u['paper']['model']})"]
    npu = [100 * v["npu_util"] for v in u["modes"].values()] + [100 * u["paper"]["npu"]]
    pim = [100 * v["pim_util"] for v in u["modes"].values()] + [100 * u["paper"]["pim"]]
    xs = range(len(labels))
    ax.bar([x - 0.2 for x in xs], npu, 0.4, label="NPU", color="tab:blue")
    ax.bar([x + 0.2 for x in xs], pim, 0.4, label="PIM", color="tab:red")
    ax.set_xticks(list(xs), labels, fontsize=7, rotation=15)
    pt = u["point"]
    ax.set_title(f"{pt['model']} b{pt['batch']} vs the paper's neupims", fontsize=9)
    ax.set_ylabel("utilization (%)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(report: dict, out: Path) -> list[Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "reproduce.json", out / "reproduce.txt", out / "throughput.png",
             out / "utilization.png"]
    files[0].write_text(json.dumps(report, indent=1))
    files[1].write_text(format_report(report) + "\n")
    plot_throughput(report, files[2])
    plot_utilization(report, files[3])
    return files
