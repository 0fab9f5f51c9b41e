"""Timing-only elaboration (``DeviceConfig.datapath`` False) of each block, on Amaranth's
simulator: the full block and its timing-only twin get the same random control inputs
every clock; the full block's data inputs are random, the twin's are other random values.
Every control output must be equal on every clock (so no control depends on a data value,
and the twin keeps the timing), and every data output of the twin must be zero. The
whole NpuTop is compared on decode programs in ``cocotb_tests/test_timing_only.py``."""
import dataclasses

import numpy as np
import pytest
from amaranth.hdl import Module, Value
from amaranth.lib import data, wiring
from amaranth.lib.wiring import Out
from amaranth.sim import Simulator

from rtl.channel import ChannelDatapath
from rtl.config import ConfigError, DeviceConfig, preset
from rtl.dram import Bank
from rtl.npu.scratchpad import Accumulator, Scratchpad
from rtl.npu.systolic import SystolicArray, activation_layout, result_layout
from rtl.npu.vector import VectorUnit, in_layout
from rtl.pim import GlobalBufferRtl, PimMacUnit

CYCLES = 200


def _all(path):
    return {path: -1}


def _except(path, layout, *fields):
    """Every bit of the port but ``fields`` of its layout."""
    layout = data.Layout.cast(layout)
    mask = (1 << layout.size) - 1
    for field in fields:
        mask &= ~(((1 << layout[field].width) - 1) << layout[field].offset)
    return {path: mask}


def _two_buffers(config):
    return config.replace(npu=dataclasses.replace(config.npu, weight_buffers=2))


def _vector_in(lanes):
    layout = in_layout(lanes)
    mask = 0
    for name in ("a", "b"):
        mask |= ((1 << layout[name].width) - 1) << layout[name].offset
    return {("i", "payload"): mask}


SP_READ = [["gemm_a"], ["gemm_b"], ["gemm_c"], ["dma", "vector", "ext"]]
SP_WRITE = [["gemm"], ["dma"], ["pim", "vector", "ext"]]

#: name: (make(config) -> component, {data input path: mask}, {data output path: mask})
BLOCKS = {
    "systolic": (SystolicArray,
                 lambda c: {**_all(("weights", "payload")),
                            **_except(("activations", "payload"), activation_layout(c), "last")},
                 lambda c: _except(("results", "payload"), result_layout(c), "last")),
    "systolic_two_buffers": (
        lambda c: SystolicArray(_two_buffers(c)),
        lambda c: {**_all(("weights", "payload")),
                   **_except(("activations", "payload"), activation_layout(_two_buffers(c)),
                             "last", "flip")},
        lambda c: _except(("results", "payload"), result_layout(c), "last")),
    "vector": (VectorUnit, lambda c: _vector_in(c.npu.vector_lanes),
               lambda c: _all(("o", "payload"))),
    "pim_mac": (lambda c: PimMacUnit(c.pim.lanes, datapath=c.datapath),
                lambda c: {**_all(("a",)), **_all(("b",))}, lambda c: _all(("result",))),
    "bank": (Bank, lambda c: {**_all(("wdata",)), **_all(("gbuf_chunk",)),
                              **_all(("backdoor_data",))},
             lambda c: {**_all(("rdata",)), **_all(("result",))}),
    "global_buffer": (GlobalBufferRtl, lambda c: _all(("write_data",)),
                      lambda c: _all(("read_chunk",))),
    "scratchpad": (lambda c: Scratchpad(c, SP_READ, SP_WRITE),
                   lambda c: {(f"write_{n}", "data"): -1 for g in SP_WRITE for n in g},
                   lambda c: {(f"read_{n}", "data"): -1 for g in SP_READ for n in g}),
    "accumulator": (Accumulator, lambda c: _all(("write_data",)),
                    lambda c: _all(("read_data",))),
    "channel": (lambda c: ChannelDatapath(c, shared_bank_module=False),
                lambda c: {**_all(("wdata",)), **_all(("backdoor_data",))},
                lambda c: _all(("rdata",))),
}


def _ports(component):
    return [(path, member.flow.name, Value.cast(value))
            for path, member, value in component.signature.flatten(component)]


def compare(name, config, cycles=CYCLES, seed=1):
    make, data_in, data_out = BLOCKS[name]
    full, twin = make(config), make(config.replace(datapath=False))
    data_in, data_out = data_in(config), data_out(config)
    top = Module()
    top.submodules.full, top.submodules.twin = full, twin
    ports = list(zip(_ports(full), _ports(twin)))
    assert [p[0][0] for p in ports] == [p[1][0] for p in ports]
    rng = np.random.default_rng(seed)
    mismatches = []

    def rand(width):
        return int.from_bytes(rng.bytes((width + 7) // 8), "little") & ((1 << width) - 1)

    async def bench(ctx):
        for cycle in range(cycles):
            for (path, flow, a), (_, _, b) in ports:
                if flow != "In":
                    continue
                value = rand(len(a))
                mask = data_in.get(path, 0) & ((1 << len(a)) - 1)
                ctx.set(a, value)
                ctx.set(b, (value & ~mask) | (rand(len(a)) & mask))
            for (path, flow, a), (_, _, b) in ports:
                if flow != "Out":
                    continue
                mask = data_out.get(path, 0) & ((1 << len(a)) - 1)
                got_a, got_b = ctx.get(a), ctx.get(b)
                if (got_a & ~mask) != (got_b & ~mask) or got_b & mask:
                    mismatches.append((cycle, path, hex(got_a), hex(got_b)))
            await ctx.tick()

    sim = Simulator(top)
    sim.add_clock(1e-9)
    sim.add_testbench(bench)
    sim.run()
    assert not mismatches, f"{name}: {len(mismatches)} differences, first {mismatches[:4]}"


@pytest.mark.parametrize("name", BLOCKS)
def test_block_keeps_its_timing_without_datapath(name):
    compare(name, preset("tiny"))


@pytest.mark.parametrize("name", ["systolic", "vector", "bank"])
def test_block_keeps_its_timing_without_datapath_small(name):
    compare(name, preset("small"), cycles=120, seed=2)


def test_config_datapath_flag():
    config = preset("decode")
    assert config.datapath is True and "timing-only" not in config.summary()
    timing = config.replace(datapath=False)
    assert DeviceConfig.from_json(timing.to_json()) == timing
    assert timing.to_dict()["datapath"] is False
    assert timing.summary().endswith(", timing-only (no datapath)")
    with pytest.raises(ConfigError) as info:
        config.replace(datapath="no")
    assert info.value.field == "DeviceConfig.datapath"


def test_timing_only_verilog_is_smaller():
    from rtl.npu.core import NpuCore
    from sim.harness import to_verilog
    config = preset("tiny")
    full = to_verilog(NpuCore(config), "core")
    timing = to_verilog(NpuCore(config.replace(datapath=False)), "core")
    assert len(timing.splitlines()) < len(full.splitlines()) / 2
    for name in ("FP16Multiplier", "FP32Adder", "pe_0_0", "l0_mul", "scratchpad.memory"):
        assert name not in timing


def test_timing_only_blocks_lint_clean():
    """`make lint`'s blocks, timing-only: exported and Verilator-clean like the full ones."""
    from sim.lint import lint_config
    problems = lint_config(preset("tiny").replace(datapath=False))
    assert problems and not any(problems.values()), problems


def test_registered_ports_verilog():
    """``sim.harness.with_registered_ports``: the same ports; inside, rst, blocked and
    refresh_rate are flops of the inputs (rst starting at 1), the command ports flops of
    the controller's commands, and the command log records the unregistered ones."""
    from rtl.npu.top import NpuTop
    from sim.harness import npu_top_verilog, port_names, to_verilog
    config = preset("tiny").replace(datapath=False)
    plain = to_verilog(NpuTop(config), "top")
    text = npu_top_verilog(config, "top")
    assert port_names(text, "top") == port_names(plain, "top")
    top = text[text.index("module top("):]
    top = top[:top.index("endmodule")]
    assert "reg rst__registered = 1'h1;" in top
    for port in ("rst", "blocked", "refresh_rate"):
        assert f"always @(posedge clk) {port}__registered <= {port};" in top
        assert f"({port}__registered)" in top and f"({port})" not in top
    for port in ("cmd__0", "cmd_valid__0"):
        assert f"always @(posedge clk) {port} <= {port}__unregistered;" in top
    assert "if (cmd_valid__0__unregistered) begin" in top
    assert "cycle__0, cmd__0__unregistered);" in top
    unregistered = npu_top_verilog(config, "top", registered_ports=False)
    assert "__registered" not in unregistered and "if (cmd_valid__0) begin" in unregistered


def test_zero_memories_initialized_by_a_loop():
    """``sim.harness.to_verilog``: a memory that starts all zeros (the instruction memory,
    FIFOs) is zeroed by one ``initial`` loop, not a line per word; a memory with non-zero
    initial words keeps Amaranth's lines."""
    from amaranth.lib.memory import Memory
    from rtl.npu.core import NpuCore
    from sim.harness import to_verilog
    config = preset("tiny")
    words = config.npu.instruction_words
    text = to_verilog(NpuCore(config), "core")
    assert (f"    for (imem__init = 0; imem__init < {words}; imem__init = imem__init + 1)\n"
            f"      imem[imem__init] = 160'h0;\n") in text
    assert "imem[0] =" not in text

    class Mems(wiring.Component):
        out: Out(8).array(2)

        def elaborate(self, platform):
            m = Module()
            for i, init in enumerate(([0, 0, 0], [0, 5, 0])):
                mem = m.submodules[f"m{i}"] = Memory(shape=8, depth=3, init=init)
                m.d.comb += self.out[i].eq(mem.read_port(domain="comb").data)
            return m
    text = to_verilog(Mems(), "mems")
    assert "m0__init < 3;" in text and "m1__init" not in text
    assert "m1[1] = 8'h05;" in text and "m0[1] =" not in text
