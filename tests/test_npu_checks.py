"""``rtl.npu.checks.DispatchCheck`` against the sequencer's own dispatch check
(``Sequencer._checks`` on Amaranth's simulator): the same NpuError for random
instructions whose fields sit at and around every limit of the configuration."""
from __future__ import annotations

import dataclasses
import random

import pytest
from amaranth.hdl import Module, Signal
from amaranth.sim import Simulator

from rtl.config import preset
from rtl.isa.npu import ARGUMENTS, Instruction, NpuOp, encode, instruction_layout
from rtl.npu.checks import DispatchCheck
from rtl.npu.scratchpad import word_lanes
from rtl.npu.sequencer import NpuError, Sequencer


def _edges(config) -> list[int]:
    """Values at, below and above the limits the checks compare fields with."""
    g, npu, lanes = config.geometry, config.npu, word_lanes(config)
    limits = {npu.scratchpad_words, npu.array_rows, npu.accumulator_rows, lanes, lanes // 2,
              g.channels, g.ranks, g.bankgroups, g.banks_per_group, g.rows,
              config.bus.comps_per_row, config.bus.comps_per_row * 1024, 1024,
              g.capacity_bytes // g.burst_bytes, g.burst_bytes, 3, 8, 16}
    return sorted({v + d for v in limits for d in (-2, -1, 0, 1) if v + d >= 0})


def _limits(config, op: NpuOp) -> dict[str, int]:
    """Each field's first value the checks refuse (or a size that keeps it in range)."""
    g, npu, bus = config.geometry, config.npu, config.bus
    spw, lanes = npu.scratchpad_words, word_lanes(config)
    if op in (NpuOp.DMA_LOAD, NpuOp.DMA_STORE):
        return {"hbm": g.capacity_bytes // 4, "sp": spw // 2, "count": 64,
                "slice": config.npu.word_bytes // g.burst_bytes, "spread": 2}
    if op is NpuOp.GEMM:
        return {"fp32": 2, "acc": 2, "a": spw // 4, "b": spw // 4, "c": spw // 4,
                "a_pitch": 8, "b_pitch": 8, "c_pitch": 8, "m": npu.accumulator_rows + 1,
                "k": 2 * npu.array_rows, "n": lanes}
    if op is NpuOp.VECTOR:
        return {"vop": 16, "flags": 16, "a": spw // 2, "b": spw // 2, "d": spw // 2,
                "length": spw // 2, "imm": 1 << 16}
    if op is NpuOp.PIM:
        return {"pim_op": 3, "channel": g.channels, "rank": g.ranks,
                "bankgroup": g.bankgroups, "bank": g.banks_per_group, "row": g.rows,
                "column": bus.comps_per_row, "comps": bus.comps_per_row * 1024 + 1,
                "gemvs": 1025, "sp": spw}
    return {name: 2 for name in ARGUMENTS[op]}


def _random_instruction(rng: random.Random, config, edges) -> Instruction:
    """Half the time every field at random; otherwise every field inside its limit
    but one or two set at, just below or just above a limit."""
    op = rng.choice([NpuOp.DMA_LOAD, NpuOp.DMA_STORE, NpuOp.GEMM, NpuOp.VECTOR, NpuOp.PIM,
                     NpuOp.NOP, NpuOp.WAIT])
    spw = config.npu.scratchpad_words
    limits = _limits(config, op)
    valid = rng.random() < 0.5
    args = {}
    for name, width in ARGUMENTS[op].items():
        top = (1 << width) - 1
        pick = rng.random()
        if valid:
            value = rng.randrange(0, max(1, limits[name]))
        elif pick < 0.35:
            value = rng.choice(edges)
        elif pick < 0.55:
            value = rng.randrange(0, 4)
        elif pick < 0.8:
            value = rng.randrange(0, min(top, 2 * spw) + 1)
        else:
            value = rng.randrange(0, top + 1)
        args[name] = min(max(value, 0), top)
    if valid and args:
        for name in rng.sample(sorted(args), min(len(args), rng.choice([1, 1, 2]))):
            edge = limits[name] + rng.choice([-1, 0, 1])
            args[name] = min(max(edge, 0), (1 << ARGUMENTS[op][name]) - 1)
    if "hbm" in args and rng.random() < 0.7:
        args["hbm"] -= args["hbm"] % config.geometry.burst_bytes
    if valid and rng.random() < 0.3:                # an operand's last word at the end
        _end_at(args, op, config, spw - 1 + rng.choice([-1, 0, 1]), rng)
    if op is NpuOp.VECTOR and rng.random() < 0.5:   # strided gather / scatter, unary ops
        args["flags"] = rng.choice([4, 8, 12]) | (args["flags"] & 3)
        args["vop"] = rng.randrange(0, 16)
        args["imm"] = rng.randrange(0, 40) | rng.randrange(0, 40) << 8
    return Instruction(op, args)


def _end_at(args: dict, op: NpuOp, config, last: int, rng: random.Random) -> None:
    """Move one scratchpad operand of ``args`` so that its last word is ``last``."""
    lanes = word_lanes(config)
    if op in (NpuOp.DMA_LOAD, NpuOp.DMA_STORE):
        k = config.npu.word_bytes // config.geometry.burst_bytes
        span = args["count"] - 1 if k == 1 or args["spread"] \
            else (args["slice"] + args["count"] - 1) // k
        args["sp"] = max(0, last - span)
    elif op is NpuOp.GEMM and 0 not in (args["m"], args["k"], args["n"]):
        words = {"a": -(-args["k"] // lanes), "b": -(-args["n"] // lanes),
                 "c": -(-args["n"] // (lanes // 2)) if args["fp32"] else -(-args["n"] // lanes)}
        name = rng.choice("abc")
        rows = args["k"] if name == "b" else args["m"]
        args[name] = max(0, last + 1 - words[name] - (rows - 1) * args[f"{name}_pitch"])
    elif op is NpuOp.VECTOR:
        args[rng.choice("abd")] = max(0, last + 1 - args["length"])


def _rtl_faults(config, instructions) -> list[NpuError]:
    m = Module()
    ins = Signal(instruction_layout())
    fault = Sequencer(config)._checks(m, ins)
    sim = Simulator(m)
    got = []

    async def bench(ctx):
        for instruction in instructions:
            ctx.set(ins.as_value(), encode(instruction))
            got.append(NpuError(ctx.get(fault)))

    sim.add_testbench(bench)
    sim.run()
    return got


@pytest.mark.filterwarnings("ignore:.*created but never used")   # only its check is used
@pytest.mark.parametrize("name, changes", [
    ("tiny", {}), ("small", {}), ("decode", {}),
    ("decode", {"npu": {"word_bytes": 128}}),      # two bursts per word: burst slices
    ("neupims", {})])
def test_python_checks_equal_the_sequencers(name, changes):
    config = preset(name)
    if changes:
        config = config.replace(npu=dataclasses.replace(config.npu, **changes["npu"]))
    rng = random.Random(f"{name}{changes}")
    edges = _edges(config)
    instructions = [_random_instruction(rng, config, edges) for _ in range(3000)]
    rtl = _rtl_faults(config, instructions)
    check = DispatchCheck(config)
    python = [check(i)[0] for i in instructions]
    wrong = [(str(i), r, p) for i, r, p in zip(instructions, rtl, python) if r != p]
    assert not wrong, f"{len(wrong)} differ, first (instruction, RTL, Python): {wrong[:3]}"
    # the sample reaches every fault the checks can give an encoded instruction
    assert set(rtl) >= {NpuError.NONE, NpuError.BAD_SHAPE, NpuError.SCRATCHPAD_RANGE,
                        NpuError.HBM_RANGE, NpuError.HBM_ALIGN, NpuError.BAD_PIM}


def test_a_k_chained_gemm_beyond_the_accumulator_says_why():
    config = preset("decode")
    npu = config.npu
    rows = npu.accumulator_rows + 1
    ins = Instruction(NpuOp.GEMM, {"m": rows, "k": npu.array_rows + 1, "n": 16, "fp32": 1,
                                   "a_pitch": 8, "b_pitch": 8, "c_pitch": 8})
    code, why = DispatchCheck(config)(ins)
    assert code is NpuError.BAD_SHAPE and "accumulator" in why
    assert DispatchCheck(config)(Instruction(NpuOp.GEMM, {
        **ins.args, "m": npu.accumulator_rows}))[0] is NpuError.NONE
