"""Reports of decode runs on the RTL: a text table, a JSON summary and a timeline plot.

Input: ``results_by_mode`` = {mode: the result dict of ``sim.decode.rtl_run.run_on_rtl``
(the JSON of ``cocotb_tests.tb_decode``)}. Every number is derived from the RTL
counters in those results:

- tokens/s: the tokens of all steps over the time of all steps' cycles at the
  configured clock (``config.timing.clock_hz``);
- NPU util: the systolic arrays' busy clocks (``array_busy``, summed over the cores)
  over the cycles times the cores;
- PIM util: per channel, the controller's ``pim_busy_cycles`` (PIM_GEMVs running) over
  the cycles, the mean over channels; PIM occupancy: the same of ``pim_occupied_cycles``
  (the PIM has work: a transaction waiting at its queue's head, e.g. for its row set to
  open, or a GEMV or GWRITE running);
- normal during PIM: the controllers' ``normal_during_pim`` (normal commands issued
  while a PIM_GEMV runs), summed over channels;
- stages: the cycles of each stage name, summed over steps (and over repeats of a name).

A timing-only result (``datapath`` False: the RTL without its datapath, see
``sim.decode.rtl_run``) has no data checks: its ``bit_exact`` is ``None``, shown "n/a";
its device line says "timing-only".
"""
from __future__ import annotations

__all__ = ["summarize", "format_table", "to_json", "plot_timeline", "npu_line", "stage_busy",
           "stage_phases", "BUSY_UNITS", "PHASE_UNITS"]

#: The units of :func:`stage_busy`, in the order of its tables.
BUSY_UNITS = ("array", "gemm", "dma", "vector", "pim_port", "pim")


def _clock_hz(result: dict) -> float:
    if "clock_hz" in result:
        return float(result["clock_hz"])
    tck = result["config"]["timing"]["tCK_ps"]
    return 1e12 / tck


def _stage_cycles(steps) -> dict:
    out: dict[str, int] = {}
    for step in steps:
        for stage in step["stages"]:
            out[stage["name"]] = out.get(stage["name"], 0) + stage["cycles"]
    return out


def _bit_exact(result: dict):
    """True / False, or None when nothing was compared (a timing-only run)."""
    if "bit_exact" in result and result["bit_exact"] is None:
        return None
    return bool(result.get("bit_exact", False))


def summarize(result: dict) -> dict:
    """The figures of one mode's result (see the module docstring)."""
    steps = result["steps"]
    cycles = sum(s["cycles"] for s in steps)
    tokens = sum(s["tokens"] for s in steps)
    clock = _clock_hz(result)
    seconds = cycles / clock if clock else 0.0
    channels = len(steps[0]["controllers"]) if steps else 0
    array = sum(s["counters"]["array_busy"] for s in steps)
    cores = result.get("config", {}).get("npu", {}).get("arrays", 1)
    pim = [sum(s["controllers"][c]["pim_busy_cycles"] for s in steps) for c in range(channels)]
    per_channel = [p / cycles if cycles else 0.0 for p in pim]
    occupied = [sum(s["controllers"][c]["pim_occupied_cycles"] for s in steps) / cycles
                if cycles else 0.0 for c in range(channels)]
    return {
        "device": result.get("config_summary", ""),
        "tokens": tokens,
        "cycles": cycles,
        "seconds": seconds,
        "tokens_per_s": tokens / seconds if seconds else 0.0,
        "cores": cores,
        "npu_util": array / (cycles * cores) if cycles else 0.0,
        "pim_util": sum(per_channel) / channels if channels else 0.0,
        "pim_util_per_channel": per_channel,
        "pim_occupancy": sum(occupied) / channels if channels else 0.0,
        "normal_during_pim": sum(s["controllers"][c]["normal_during_pim"]
                                 for s in steps for c in range(channels)),
        "bit_exact": _bit_exact(result),
        "mismatches": result.get("mismatches", sum(s["mismatches"] or 0 for s in steps)),
        "complete": result.get("complete", True),
        "stages": _stage_cycles(steps),
        "steps": [{"label": s["label"], "tokens": s["tokens"], "cycles": s["cycles"],
                   "stages": _stage_cycles([s]), "bit_exact": s["bit_exact"],
                   "mismatches": s["mismatches"]} for s in steps],
        "commands_checked": result.get("commands_checked", 0),
        "timing_violations": result.get("timing_violations", 0),
        "sim_cycles_per_s": result.get("sim_cycles_per_s", 0.0),
    }


def stage_busy(step: dict) -> list[dict]:
    """Each stage of one step (``step["stages"]``, in order) with the mean busy fraction of
    every unit of :data:`BUSY_UNITS` over its clocks: ``{"name", "cycles", "array", "gemm",
    "dma", "vector", "pim_port", "pim", "phases"}`` (the cores' units, the mean over the
    cores: ``pim_port`` is a core's PIM unit with a transaction in flight; ``pim``: the
    controllers' PIM_GEMV clocks, the mean over the channels; ``phases``: its clocks by
    the units busy together, :func:`stage_phases`, as [label, clocks] lists). From the
    step's timeline, the RTL counters read every ``period`` clocks: a window that a stage
    end cuts counts for each side by its clocks there, as if busy evenly through it, so a
    stage's figures can be off by up to ``period`` / cycles at each of its ends."""
    line = step["timeline"]
    channels = len(line["pim"])
    pim = [sum(line["pim"][c][i] for c in range(channels)) / channels if channels else 0.0
           for i in range(len(line["start"]))]
    series = {k: (pim if k == "pim" else line[k]) for k in BUSY_UNITS}
    out = []
    for index, stage in enumerate(step["stages"]):
        totals = dict.fromkeys(BUSY_UNITS, 0.0)
        for i, overlap in _windows_in(step, index):
            for k in BUSY_UNITS:
                totals[k] += series[k][i] * overlap
        span = stage["end"] - (step["stages"][index - 1]["end"] if index else 0)
        out.append({"name": stage["name"], "cycles": stage["cycles"],
                    **{k: round(totals[k] / span, 4) if span > 0 else 0.0
                       for k in BUSY_UNITS},
                    "phases": [list(x) for x in stage_phases(step, index)]})
    return out


def _windows_in(step: dict, index: int):
    """(window, clocks of it inside stage ``index``) for the timeline windows it meets."""
    line = step["timeline"]
    begin = step["stages"][index - 1]["end"] if index else 0
    end = step["stages"][index]["end"]
    for i, (w0, w1) in enumerate(zip(line["start"], line["end"])):
        overlap = min(w1, end) - max(w0, begin)
        if overlap > 0:
            yield i, overlap


#: The units of :func:`stage_phases` (timeline series) and their names there.
PHASE_UNITS = {"dma": "DMA", "array": "array", "vector": "vector", "pim_port": "PIM"}


def stage_phases(step: dict, index: int, threshold: float = 0.05) -> list[tuple[str, int]]:
    """Stage ``index`` of one step cut by which of :data:`PHASE_UNITS` were busy: each
    timeline window is labelled by the units busy more than ``threshold`` of it (``DMA``,
    ``array``, ``vector``, ``PIM``: a core's PIM unit; the mean over the cores) joined by
    ``+``, or ``idle``; [(label, clocks)], most clocks first, the clocks of the windows
    inside the stage (a window a stage end cuts by its clocks inside)."""
    line = step["timeline"]
    clocks: dict[str, int] = {}
    for i, overlap in _windows_in(step, index):
        label = "+".join(name for key, name in PHASE_UNITS.items()
                         if line[key][i] > threshold) or "idle"
        clocks[label] = clocks.get(label, 0) + overlap
    return sorted(clocks.items(), key=lambda kv: -kv[1])


def _stage_names(summaries) -> list[str]:
    names: list[str] = []
    for s in summaries:
        for name in s["stages"]:
            if name not in names:
                names.append(name)
    return names


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    line = lambda r: "  ".join(str(v).rjust(w) if i else str(v).ljust(w)  # noqa: E731
                               for i, (v, w) in enumerate(zip(r, widths)))
    return [line(header), "  ".join("-" * w for w in widths)] + [line(r) for r in rows]


def _npu_line(result: dict) -> str:
    npu = result.get("config", {}).get("npu")
    return npu_line(npu) if npu else ""


def npu_line(npu: dict) -> str:
    """"N cores, each: R x C array, L vector lanes" from an NpuConfig's dict (and
    " (two weight buffers)", ", W-byte scratchpad words" when a word is wider than one
    64-byte burst, the DMA's response buffers and lanes when not the defaults, its
    requests in flight per channel, and its overlap of commands when on)."""
    cores = npu["arrays"]
    words = npu.get("word_bytes", 64)
    return (f"{cores} core{'s, each' if cores > 1 else ''}: {npu['array_rows']} x "
            f"{npu['array_cols']} array"
            + (" (two weight buffers)" if npu.get("weight_buffers", 1) == 2 else "")
            + f", {npu['vector_lanes']} vector lanes"
            + (f", {words}-byte scratchpad words" if words != 64 else "")
            + (f", {buffer} responses buffered per channel"
               if (buffer := npu.get("response_buffer", 0)) else "")
            + (f", {lanes} DMA responses per clock" if (lanes := npu.get("dma_responses", 1)) > 1
               else "")
            + (f", {tags} DMA requests in flight per channel"
               if (tags := npu.get("dma_in_flight")) else "")
            + (", DMA commands to several channels at once" if npu.get("dma_overlap") else ""))


def format_table(results_by_mode: dict, description: dict | None = None) -> str:
    """The configuration lines, one row per mode (tokens/s, cycles, NPU util, PIM util
    and occupancy, normal commands during PIM, bit-exact), then the stage cycles (mode x
    stage)."""
    summaries = {mode: summarize(r) for mode, r in results_by_mode.items()}
    lines = ["Decode on the RTL (NpuTop on Verilator, every DRAM command checked)"]
    for key, value in (description or {}).items():
        lines.append(f"  {key:<18} {value}")
    devices = {s["device"] for s in summaries.values() if s["device"]}
    for mode, s in summaries.items():
        if s["device"] and len(devices) > 1:
            lines.append(f"  {'device (' + mode + ')':<18} {s['device']}")
    if len(devices) == 1:
        lines.append(f"  {'device':<18} {devices.pop()}")
    npus = {_npu_line(r) for r in results_by_mode.values()} - {""}
    if len(npus) == 1:
        lines.append(f"  {'npu':<18} {npus.pop()}")
    lines.append("")
    rows = []
    for mode, s in summaries.items():
        exact = ("n/a" if s["bit_exact"] is None
                 else "yes" if s["bit_exact"] else f"NO ({s['mismatches']})")
        if not s["complete"]:
            exact += " incomplete"
        rows.append([mode, f"{s['tokens_per_s']:,.0f}", f"{s['cycles']:,}", str(s["tokens"]),
                     f"{100 * s['npu_util']:.1f} %", f"{100 * s['pim_util']:.1f} %",
                     f"{100 * s['pim_occupancy']:.1f} %", f"{s['normal_during_pim']:,}", exact])
    lines += _table(["mode", "tokens/s", "cycles", "tokens", "NPU util", "PIM util",
                     "PIM occupied", "normal cmds during PIM", "bit-exact"], rows)
    names = _stage_names(summaries.values())
    if names:
        lines += ["", "Stage cycles (summed over steps)"]
        lines += _table(["mode"] + names,
                        [[mode] + [f"{s['stages'].get(n, 0):,}" for n in names]
                         for mode, s in summaries.items()])
    lines += _pipeline_lines(summaries)
    return "\n".join(lines)


def _pipeline_lines(summaries: dict) -> list[str]:
    """NEUPIMS.md 5's stage structure against the measured total of each sub-batched
    mode: pipeline = A + B + (C + D)(N - 1) + E + F (C and D summed over their N - 1
    layers, as measured), the rest of the step (load, LM head, HALT) and the deviation."""
    out = []
    for mode, s in summaries.items():
        st = s["stages"]
        if not all(k in st for k in ("A", "B", "E", "F")):
            continue
        pipeline = sum(st.get(k, 0) for k in ("A", "B", "C", "D", "E", "F"))
        other = sum(v for k, v in st.items() if k not in ("A", "B", "C", "D", "E", "F"))
        rest = s["cycles"] - pipeline - other
        out.append(f"{mode}: A + B + (C + D)(N - 1) + E + F = {pipeline:,} cycles; with "
                   f"load + head ({other:,}) and the HALTs ({rest}) = {s['cycles']:,} measured "
                   f"(deviation {rest})")
    return [""] + out if out else []


def to_json(results_by_mode: dict, description: dict | None = None) -> dict:
    """``{"config": {...}, "modes": {mode: {tokens_per_s, cycles, stages, npu_util,
    pim_util, pim_occupancy, normal_during_pim, bit_exact, steps, ...}}}``."""
    summaries = {mode: summarize(r) for mode, r in results_by_mode.items()}
    first = next(iter(results_by_mode.values()), {})
    config = {"description": dict(description or {}),
              "clock_hz": _clock_hz(first) if first else None,
              "devices": {mode: s["device"] for mode, s in summaries.items()}}
    return {"config": config, "modes": summaries}


def _series(result: dict):
    """The steps' timelines end to end: (x of window starts + the last end, {series: y},
    [(x, stage name)] of stage ends, [x] of step ends)."""
    xs, ys, marks, bounds = [], {}, [], []
    offset = 0
    channels = len(result["steps"][0]["controllers"]) if result["steps"] else 0
    keys = ("array", "dma", "vector")
    for k in keys + ("pim",):
        ys[k] = []
    ys["pim_channels"] = [[] for _ in range(channels)]
    for step in result["steps"]:
        line = step["timeline"]
        xs += [offset + x for x in line["start"]]
        for k in keys:
            ys[k] += line[k]
        for c in range(channels):
            ys["pim_channels"][c] += line["pim"][c]
        ys["pim"] += [sum(line["pim"][c][i] for c in range(channels)) / channels
                      for i in range(len(line["start"]))] if channels else [0.0] * len(line["start"])
        for stage in step["stages"]:
            marks.append((offset + stage["end"], stage["name"]))
        offset += step["cycles"]
        bounds.append(offset)
    xs.append(offset)
    return xs, ys, marks, bounds


def plot_timeline(results_by_mode: dict, path) -> None:
    """A PNG: per mode, the busy fraction of the systolic array, DMA, vector unit and PIM
    (mean over channels; thin lines per channel) over the cycles, stage ends as labelled
    vertical lines; last, the tokens/s of each mode as bars."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = list(results_by_mode)
    fig, axes = plt.subplots(len(modes) + 1, 1, figsize=(12, 2.6 * len(modes) + 2.8),
                             squeeze=False)
    colors = {"array": "tab:blue", "dma": "tab:orange", "vector": "tab:green",
              "pim": "tab:red"}
    labels = {"array": "systolic array", "dma": "DMA", "vector": "vector", "pim": "PIM (mean)"}
    for ax, mode in zip(axes[:, 0], modes):
        xs, ys, marks, bounds = _series(results_by_mode[mode])
        for k in ("array", "pim"):
            y = ys[k] + ys[k][-1:] if ys[k] else [0.0]
            ax.fill_between(xs if ys[k] else [0], y, step="post", alpha=0.3, color=colors[k],
                            label=labels[k], linewidth=0)
        for k in ("dma", "vector"):
            if ys[k]:
                ax.step(xs, ys[k] + ys[k][-1:], where="post", color=colors[k], label=labels[k],
                        linewidth=0.9)
        if len(ys["pim_channels"]) > 1:
            for c, y in enumerate(ys["pim_channels"]):
                if y:
                    ax.step(xs, y + y[-1:], where="post", color=colors["pim"], linewidth=0.4,
                            alpha=0.6)
        show_names = len(marks) <= 40
        for x, name in marks:
            ax.axvline(x, color="0.3", linewidth=0.6, linestyle="--")
            if show_names:
                ax.text(x, 1.0, f"{name} ", rotation=90, fontsize=7, ha="right", va="top",
                        color="0.2", transform=ax.get_xaxis_transform())
        for x in bounds[:-1]:
            ax.axvline(x, color="black", linewidth=1.0)
        summary = summarize(results_by_mode[mode])
        ax.set_title(f"{mode}: {summary['cycles']:,} cycles in {len(bounds)} step(s), "
                     f"{summary['tokens_per_s']:,.0f} tokens/s (dashed: stage ends, solid: "
                     f"step ends)", fontsize=9, loc="left")
        ax.set_ylim(0, 1.25)
        ax.set_yticks([0, 0.25, 0.5, 0.75, 1.0])
        ax.set_xlim(0, max(xs[-1], 1))
        ax.set_ylabel("busy fraction")
        ax.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=7)
    axes[-2, 0].set_xlabel("cycles")
    bar = axes[-1, 0]
    rates = [summarize(results_by_mode[m])["tokens_per_s"] for m in modes]
    palette = {"npu-only": "tab:gray", "npu+pim": "tab:purple", "neupims": "tab:red"}
    bars = bar.bar(modes, rates, color=[palette.get(m, "tab:blue") for m in modes])
    for b, r in zip(bars, rates):
        bar.annotate(f"{r:,.0f}", (b.get_x() + b.get_width() / 2, b.get_height()),
                     ha="center", va="bottom", fontsize=8)
    bar.set_ylabel("tokens/s")
    bar.set_title("throughput at the configured clock", fontsize=9, loc="left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
