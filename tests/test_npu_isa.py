"""The NPU instruction set: layout, encode/decode round trips, the assembler and its
errors."""
import random

import pytest
from amaranth.lib import data

from rtl.controller.interface import PimOp
from rtl.isa.npu import (ARGUMENTS, INSTRUCTION_BITS, PIM_OPS, AsmError, Instruction, NpuOp,
                         NpuUnit, assemble, decode, disassemble, dma_load, dma_store, encode, gemm, halt,
                         instruction_layout, pim, wait)

pytestmark = pytest.mark.xdist_group("npu")


def random_instruction(rnd):
    op = rnd.choice(list(NpuOp))
    return Instruction(op, {name: rnd.getrandbits(width) for name, width in ARGUMENTS[op].items()})


def test_layout_is_fixed_width_and_matches_encode():
    layout = instruction_layout()
    assert data.Layout.cast(layout).size == INSTRUCTION_BITS
    rnd = random.Random(1)
    for _ in range(200):
        ins = random_instruction(rnd)
        view = data.Const(layout, encode(ins))
        assert view.op == ins.op
        member = {NpuOp.DMA_LOAD: "dma", NpuOp.DMA_STORE: "dma", NpuOp.GEMM: "gemm",
                  NpuOp.VECTOR: "vector", NpuOp.PIM: "pim", NpuOp.WAIT: "wait"}.get(ins.op)
        if member:
            args = getattr(view.args, member)
            for name in ARGUMENTS[ins.op]:
                assert getattr(args, name) == ins[name], (ins, name)


def test_encode_decode_round_trip():
    rnd = random.Random(2)
    for _ in range(500):
        ins = random_instruction(rnd)
        word = encode(ins)
        assert 0 <= word < 1 << INSTRUCTION_BITS
        assert decode(word) == ins
        assert assemble(disassemble([ins])) == [ins]
        assert assemble(disassemble([word])) == [ins]


def test_decode_rejects_unknown_opcodes():
    with pytest.raises(ValueError, match="unknown NPU opcode 9"):
        decode(9)
    with pytest.raises(ValueError, match="wider"):
        decode(1 << INSTRUCTION_BITS)


def test_instruction_checks_fields():
    with pytest.raises(ValueError, match="GEMM has no argument 'hbm'"):
        Instruction(NpuOp.GEMM, {"hbm": 1})
    with pytest.raises(ValueError, match="does not fit"):
        dma_load(0, 1 << 20, 1)
    with pytest.raises(ValueError, match="does not fit"):
        gemm(0, 0, 0, 1 << 16, 1, 1, 1, 1, 1)


def test_pim_op_codes_are_the_controllers():
    for name, code in PIM_OPS.items():
        assert PimOp[name.upper()].value == code
    assert pim(PimOp.GEMV)["pim_op"] == 2 == pim("gemv")["pim_op"]


def test_assembler():
    program = assemble("""
        # load A and B, multiply, store
        dma_load hbm=0x1000 sp=0 count=4
        DMA_LOAD hbm=4096 sp=4 count=0b100   # same address in decimal
        wait dma
        gemm a=0 b=4 c=8 m=4 k=8 n=8 a_pitch=1 b_pitch=1 c_pitch=1 fp32
        wait gemm dma vector pim
        vector vop=3 a=1 b=2 d=3 length=4 imm=0xffff flags=1
        pim op=gemv channel=0 row=2 column=1 comps=8 sp=9
        nop
        halt
    """)
    assert [i.op for i in program] == [NpuOp.DMA_LOAD, NpuOp.DMA_LOAD, NpuOp.WAIT, NpuOp.GEMM,
                                       NpuOp.WAIT, NpuOp.VECTOR, NpuOp.PIM, NpuOp.NOP, NpuOp.HALT]
    assert program[0]["hbm"] == program[1]["hbm"] == 0x1000 and program[1]["count"] == 4
    assert program[2] == wait("dma")
    assert program[3]["fp32"] == 1 and program[3]["acc"] == 0
    assert program[4]["units"] == int(NpuUnit.DMA | NpuUnit.GEMM | NpuUnit.VECTOR | NpuUnit.PIM)
    assert program[6]["pim_op"] == PIM_OPS["gemv"] and program[6]["comps"] == 8
    assert program[-1] == halt()
    assert assemble(disassemble(program)) == program
    # a DMA from the middle of a wide word: the slice is written only when it is not 0
    sliced = assemble("dma_store hbm=0x40 sp=2 count=1 slice=3")
    assert sliced == [dma_store(0x40, 2, 1, slice=3)] and sliced[0]["slice"] == 3
    assert "slice=3" in disassemble(sliced) and "slice" not in disassemble(program[:1])
    spread = assemble("dma_load hbm=0x40 sp=2 count=4 slice=1 spread")
    assert spread == [dma_load(0x40, 2, 4, slice=1, spread=True)] and spread[0]["spread"] == 1
    assert assemble(disassemble(spread)) == spread and "spread" in disassemble(spread)


@pytest.mark.parametrize("source,line,message", [
    ("nop\nfrobnicate x=1", 2, "unknown instruction 'frobnicate'"),
    ("gemm a=1 hbm=2", 1, "GEMM has no argument 'hbm'"),
    ("dma_load sp=0x", 1, "is not a number"),
    ("dma_load sp=-1", 1, "is not a number"),
    ("\n\ndma_load sp=1048576", 3, "sp=1048576 does not fit in 20 bits"),
    ("dma_load sp=1 sp=2", 1, "sp given twice"),
    ("gemm fp64", 1, "unexpected 'fp64'"),
    ("wait dma gpu", 1, "unexpected 'gpu'"),
    ("pim op=scatter", 1, "unknown PIM operation 'scatter'"),
    ("halt now", 1, "unexpected 'now'"),
])
def test_assembler_errors(source, line, message):
    with pytest.raises(AsmError, match=message) as info:
        assemble(source)
    assert info.value.line == line
    assert f"line {line}:" in str(info.value)
