"""The NPU instruction set: one fixed-width instruction of ``INSTRUCTION_BITS`` bits.

An instruction is an opcode (:class:`NpuOp`, bits [0, 4)) and the arguments of that
opcode (a union, bits [4, 160)); field widths do not depend on the configuration (the
core checks every value against its configuration when it dispatches the instruction).
Units of the arguments: ``hbm`` is a byte address in the HBM (a multiple of the 64-byte
burst), ``sp``/``a``/``b``/``c``/``d`` are scratchpad word addresses (one word =
``NpuConfig.word_bytes`` = ``k`` bursts, ``k`` a power of two: by default one burst = 32
FP16 or 16 FP32; E16 = 32 k FP16 or E32 = 16 k FP32 per word), pitches are in words,
``count`` in bursts (= words when ``k`` = 1).

=========  ==================================================================================
opcode     arguments and meaning
=========  ==================================================================================
NOP        none
DMA_LOAD   ``hbm``, ``sp``, ``count``, ``slice``, ``spread``: HBM bursts [hbm, hbm + 64
           count) -> scratchpad burst slices from slice ``slice`` (< k) of word ``sp`` on:
           burst i goes to word sp + (slice + i) // k, burst slice j = (slice + i) % k (FP16
           lanes [32 j, +32)); with ``spread``, one burst per word: burst i to slice
           ``slice`` of word sp + i. The words' other lanes keep their value
DMA_STORE  ``hbm``, ``sp``, ``count``, ``slice``, ``spread``: scratchpad burst slices -> HBM
           bursts, burst i from where a DMA_LOAD would put it
GEMM       C = A . B (+ C): A [m x k] FP16 at word ``a`` (row r at a + r a_pitch, element
           j in word j // E16, lane j % E16), B [k x n] FP16 at ``b`` (``b_pitch``),
           C [m x n] at ``c`` (``c_pitch``): FP16 (E16 per word) or, with ``fp32``, FP32
           (E32 per word); ``acc``: start from C (FP32 only) instead of +0.0
VECTOR     ``vop``, ``flags``, ``a``, ``b``, ``d``, ``length``, ``imm``: handed to the vector
           unit as is (``NpuCore.vector_ops``; semantics: ``rtl.npu.vector_engine``); the
           core checks the word ranges [a, a + length), [b, b + length), [d, d + length)
           and the strided (gather / scatter) flags (bits 2, 3: unary ops only, group
           ``imm[0:8]`` >= 1, first lane ``imm[8:16]`` + group <= elements per word)
PIM        ``pim_op`` (0 GWRITE, 1 HEADER, 2 GEMV: ``rtl.controller.PimOp``), ``channel``,
           ``rank``, ``bankgroup``, ``bank``, ``row``, ``column``, ``comps``, ``gemvs``,
           ``sp``: one PIM transaction to channel ``channel``; a GEMV's 64-byte result
           (one FP16 per bank) is written to burst slice 0 of scratchpad word ``sp``
           (FP16 lanes [0, 32); lanes beyond them keep their value)
WAIT       ``units`` (:class:`NpuUnit` bits): block until every named unit is idle
HALT       wait until every unit is idle, then stop (``done``)
SYNC       ``units``: a barrier between the cores of an NPU: block until every named unit
           is idle (``sync dma``: this core's stores are acknowledged), then until every
           core is at a SYNC or has stopped; the waiting cores leave together, on one
           clock. Cores exchange data through the HBM: stores, SYNC, loads
=========  ==================================================================================

Python side: :class:`Instruction`, :func:`encode` / :func:`decode` (integers), the
constructors :func:`dma_load`, :func:`gemm`, ... and a small text assembler
(:func:`assemble`, :func:`disassemble`)."""
from __future__ import annotations

import enum as py_enum
import re
from dataclasses import dataclass, field

from amaranth.hdl import unsigned
from amaranth.lib import data, enum

__all__ = ["NpuOp", "NpuUnit", "PIM_OPS", "INSTRUCTION_BITS", "OP_BITS", "ARGUMENTS",
           "instruction_layout", "Instruction", "AsmError", "encode", "decode", "assemble",
           "disassemble", "nop", "dma_load", "dma_store", "gemm", "vector", "pim", "wait",
           "halt", "sync", "SP_BITS", "HBM_BITS", "COUNT_BITS", "SLICE_BITS", "DMA_FIELDS", "DIM_BITS",
           "PITCH_BITS"]

OP_BITS = 4
INSTRUCTION_BITS = 160
SP_BITS = 20        # scratchpad word addresses
HBM_BITS = 40       # HBM byte addresses
COUNT_BITS = 20     # DMA bursts
SLICE_BITS = 4      # a DMA's first burst slice in its first word (k <= 16 bursts per word)
DMA_FIELDS = {"hbm": HBM_BITS, "sp": SP_BITS, "count": COUNT_BITS, "slice": SLICE_BITS,
              "spread": 1}
DIM_BITS = 16       # GEMM M, K, N; VECTOR length
PITCH_BITS = 12     # row pitches, in words


class NpuOp(enum.Enum, shape=OP_BITS):
    NOP = 0
    DMA_LOAD = 1
    DMA_STORE = 2
    GEMM = 3
    VECTOR = 4
    PIM = 5
    WAIT = 6
    HALT = 7
    SYNC = 8


class NpuUnit(py_enum.IntFlag):
    """Units a WAIT names (bits of its ``units`` field)."""
    DMA = 1
    GEMM = 2
    VECTOR = 4
    PIM = 8


#: PIM transaction names of the ``pim_op`` field (values of ``rtl.controller.PimOp``).
PIM_OPS = {"gwrite": 0, "header": 1, "gemv": 2}

#: The argument fields of each opcode and their widths, in layout order.
ARGUMENTS: dict[NpuOp, dict[str, int]] = {
    NpuOp.NOP: {},
    NpuOp.DMA_LOAD: DMA_FIELDS,
    NpuOp.DMA_STORE: DMA_FIELDS,
    NpuOp.GEMM: {"fp32": 1, "acc": 1, "a": SP_BITS, "b": SP_BITS, "c": SP_BITS,
                 "a_pitch": PITCH_BITS, "b_pitch": PITCH_BITS, "c_pitch": PITCH_BITS,
                 "m": DIM_BITS, "k": DIM_BITS, "n": DIM_BITS},
    NpuOp.VECTOR: {"vop": 4, "flags": 4, "a": SP_BITS, "b": SP_BITS, "d": SP_BITS,
                   "length": DIM_BITS, "imm": 32},
    NpuOp.PIM: {"pim_op": 2, "channel": 8, "rank": 4, "bankgroup": 4, "bank": 4, "row": 20,
                "column": 8, "comps": 16, "gemvs": 11, "sp": SP_BITS},
    NpuOp.WAIT: {"units": 4},
    NpuOp.HALT: {},
    NpuOp.SYNC: {"units": 4},
}

#: Union member of each opcode's arguments in ``instruction_layout().args``.
_MEMBER = {NpuOp.DMA_LOAD: "dma", NpuOp.DMA_STORE: "dma", NpuOp.GEMM: "gemm",
           NpuOp.VECTOR: "vector", NpuOp.PIM: "pim", NpuOp.WAIT: "wait",
           NpuOp.SYNC: "wait"}                    # SYNC's units: the WAIT layout


def instruction_layout() -> data.StructLayout:
    """``op`` (NpuOp) and ``args``: a union of ``dma``, ``gemm``, ``vector``, ``pim``,
    ``wait`` (WAIT and SYNC) (structs of :data:`ARGUMENTS`) and ``raw`` (all argument
    bits)."""
    members = {"raw": unsigned(INSTRUCTION_BITS - OP_BITS)}
    for op, name in _MEMBER.items():
        members[name] = data.StructLayout(ARGUMENTS[op])
    return data.StructLayout({"op": NpuOp, "args": data.UnionLayout(members)})


assert data.Layout.cast(instruction_layout()).size == INSTRUCTION_BITS


@dataclass(eq=False)
class Instruction:
    """An instruction in software form: the opcode and its argument values (missing
    arguments are 0)."""
    op: NpuOp
    args: dict[str, int] = field(default_factory=dict)

    def __post_init__(self):
        self.op = NpuOp(self.op)
        allowed = ARGUMENTS[self.op]
        for name, value in self.args.items():
            if name not in allowed:
                raise ValueError(f"{self.op.name} has no argument {name!r} "
                                 f"(arguments: {', '.join(allowed) or 'none'})")
            value = int(value)
            if not 0 <= value < 1 << allowed[name]:
                raise ValueError(f"{self.op.name} {name}={value} does not fit in "
                                 f"{allowed[name]} bits")
            self.args[name] = value

    def __eq__(self, other) -> bool:
        return isinstance(other, Instruction) and encode(self) == encode(other)

    def __hash__(self) -> int:
        return hash(encode(self))

    def __getitem__(self, name: str) -> int:
        if name not in ARGUMENTS[self.op]:
            raise KeyError(f"{self.op.name} has no argument {name!r}")
        return self.args.get(name, 0)

    def __str__(self) -> str:
        return disassemble([self])


def _offsets(op: NpuOp) -> dict[str, tuple[int, int]]:
    """Bit (offset, width) in the instruction of each argument of ``op``."""
    out, offset = {}, OP_BITS
    for name, width in ARGUMENTS[op].items():
        out[name] = (offset, width)
        offset += width
    return out


def encode(instruction: Instruction) -> int:
    """The instruction as an integer of ``INSTRUCTION_BITS`` bits."""
    word = instruction.op.value
    for name, (offset, width) in _offsets(instruction.op).items():
        word |= instruction.args.get(name, 0) << offset
    return word


def decode(word: int) -> Instruction:
    """The inverse of :func:`encode`; raises ValueError on an unknown opcode."""
    word = int(word)
    if not 0 <= word < 1 << INSTRUCTION_BITS:
        raise ValueError(f"{word:#x} is wider than an instruction ({INSTRUCTION_BITS} bits)")
    code = word & ((1 << OP_BITS) - 1)
    try:
        op = NpuOp(code)
    except ValueError:
        raise ValueError(f"unknown NPU opcode {code}") from None
    args = {name: (word >> offset) & ((1 << width) - 1)
            for name, (offset, width) in _offsets(op).items()}
    return Instruction(op, {k: v for k, v in args.items() if v})


# -- constructors --

def nop() -> Instruction:
    return Instruction(NpuOp.NOP)


def _dma(op, hbm, sp, count, slice, spread) -> Instruction:
    extra = {name: int(value) for name, value in (("slice", slice), ("spread", spread))
             if value}
    return Instruction(op, {"hbm": hbm, "sp": sp, "count": count, **extra})


def dma_load(hbm: int, sp: int, count: int, slice: int = 0, spread: bool = False) -> Instruction:
    """``count`` bursts from HBM byte ``hbm`` to the scratchpad, the first into burst slice
    ``slice`` of word ``sp``; ``spread``: one burst per word (slice ``slice`` of each)."""
    return _dma(NpuOp.DMA_LOAD, hbm, sp, count, slice, spread)


def dma_store(hbm: int, sp: int, count: int, slice: int = 0, spread: bool = False) -> Instruction:
    """``count`` bursts to HBM byte ``hbm`` from the scratchpad, as :func:`dma_load` places
    them."""
    return _dma(NpuOp.DMA_STORE, hbm, sp, count, slice, spread)


def gemm(a: int, b: int, c: int, m: int, k: int, n: int, a_pitch: int, b_pitch: int,
         c_pitch: int, fp32: bool = False, acc: bool = False) -> Instruction:
    return Instruction(NpuOp.GEMM, {"a": a, "b": b, "c": c, "m": m, "k": k, "n": n,
                                    "a_pitch": a_pitch, "b_pitch": b_pitch,
                                    "c_pitch": c_pitch, "fp32": int(fp32), "acc": int(acc)})


def vector(vop: int, a: int = 0, b: int = 0, d: int = 0, length: int = 0, imm: int = 0,
           flags: int = 0) -> Instruction:
    return Instruction(NpuOp.VECTOR, {"vop": int(vop), "a": a, "b": b, "d": d,
                                      "length": length, "imm": imm, "flags": flags})


def pim(pim_op, channel: int = 0, **fields) -> Instruction:
    code = PIM_OPS[pim_op.lower()] if isinstance(pim_op, str) else int(getattr(pim_op, "value", pim_op))
    return Instruction(NpuOp.PIM, {"pim_op": code, "channel": channel, **fields})


def wait(*units) -> Instruction:
    mask = 0
    for unit in units:
        mask |= NpuUnit[unit.upper()] if isinstance(unit, str) else NpuUnit(unit)
    return Instruction(NpuOp.WAIT, {"units": int(mask)})


def halt() -> Instruction:
    return Instruction(NpuOp.HALT)


def sync(*units) -> Instruction:
    """A barrier across the NPU's cores, after the named units are idle."""
    return Instruction(NpuOp.SYNC, wait(*units).args)


# -- assembler --

class AsmError(ValueError):
    """A line the assembler cannot translate; the message names the line."""

    def __init__(self, line: int, text: str, message: str):
        self.line = line
        super().__init__(f"line {line}: {message}: {text.strip()!r}")


_FLAGS = {NpuOp.GEMM: ("fp32", "acc"), NpuOp.DMA_LOAD: ("spread",),
          NpuOp.DMA_STORE: ("spread",)}
_UNIT_OPS = (NpuOp.WAIT, NpuOp.SYNC)
_NUMBER = re.compile(r"^(0x[0-9a-fA-F_]+|0b[01_]+|[0-9_]+)$")


def _number(text: str) -> int:
    if not _NUMBER.match(text):
        raise ValueError(f"{text!r} is not a number")
    return int(text, 0)


def assemble(source: str) -> list[Instruction]:
    """Instructions from text, one per line: a mnemonic (the opcode's name, any case),
    then ``name=value`` arguments (decimal, 0x.., 0b..). Flags stand alone (``gemm ...
    fp32 acc``); WAIT and SYNC take unit names (``wait dma gemm``); PIM's ``op=`` is ``gwrite``,
    ``header`` or ``gemv``. ``#`` starts a comment. Raises :class:`AsmError`."""
    program = []
    for number, line in enumerate(source.splitlines(), start=1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        words = text.split()
        try:
            op = NpuOp[words[0].upper()]
        except KeyError:
            raise AsmError(number, line, f"unknown instruction {words[0]!r}") from None
        args: dict[str, int] = {}
        allowed = ARGUMENTS[op]
        for word in words[1:]:
            if "=" in word:
                name, _, value = word.partition("=")
                name = name.lower()
                if op is NpuOp.PIM and name == "op":
                    if value.lower() not in PIM_OPS:
                        raise AsmError(number, line, f"unknown PIM operation {value!r} "
                                       f"(one of {', '.join(PIM_OPS)})")
                    name, parsed = "pim_op", PIM_OPS[value.lower()]
                else:
                    if name not in allowed:
                        raise AsmError(number, line, f"{op.name} has no argument {name!r}")
                    try:
                        parsed = _number(value)
                    except ValueError as error:
                        raise AsmError(number, line, str(error)) from None
            elif op in _UNIT_OPS and word.upper() in NpuUnit.__members__:
                name, parsed = "units", args.get("units", 0) | NpuUnit[word.upper()]
            elif word.lower() in _FLAGS.get(op, ()):
                name, parsed = word.lower(), 1
            else:
                raise AsmError(number, line, f"unexpected {word!r}")
            if name in args and name != "units":
                raise AsmError(number, line, f"{name} given twice")
            if not 0 <= parsed < 1 << allowed[name]:
                raise AsmError(number, line, f"{name}={parsed} does not fit in "
                               f"{allowed[name]} bits")
            args[name] = int(parsed)
        program.append(Instruction(op, args))
    return program


def disassemble(program) -> str:
    """Text that :func:`assemble` turns back into ``program`` (Instructions or integers)."""
    lines = []
    names = {v: k for k, v in PIM_OPS.items()}
    for item in program:
        ins = item if isinstance(item, Instruction) else decode(item)
        parts = [ins.op.name.lower()]
        for name in ARGUMENTS[ins.op]:
            value = ins.args.get(name, 0)
            if ins.op in _UNIT_OPS:
                parts += [u.name.lower() for u in NpuUnit if value & u]
            elif name in _FLAGS.get(ins.op, ()):
                if value:
                    parts.append(name)
            elif ins.op is NpuOp.PIM and name == "pim_op" and value in names:
                parts.append(f"op={names[value]}")
            elif name == "hbm":
                parts.append(f"hbm={value:#x}")
            elif name == "slice" and not value:
                continue
            else:
                parts.append(f"{name}={value}")
        lines.append(" ".join(parts))
    return "\n".join(lines)
