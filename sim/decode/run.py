"""What a decode compiler hands to the RTL runner: :class:`DecodeRun`, a sequence of
:class:`StepProgram` run on one ``NpuTop`` (HBM and scratchpad persist between steps).

A ``DecodeRun`` is pickled to a file for the cocotb test (``cocotb_tests.tb_decode``
reads the path from ``NEUPIMS_DECODE_RUN``): :meth:`DecodeRun.save` / :func:`load_run`.
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path

from rtl.config import DeviceConfig
from rtl.isa.npu import Instruction, NpuOp, decode as decode_instruction
from rtl.npu.checks import DispatchCheck
from rtl.npu.sequencer import NpuError
from sim.npu_programs import HbmImage

__all__ = ["MODES", "CoreProgram", "StepProgram", "DecodeRun", "load_run", "check_dispatch"]

#: The system modes a decode run compares.
MODES = ("npu-only", "npu+pim", "neupims")


def _instructions(program) -> list[Instruction]:
    return [ins if isinstance(ins, Instruction) else decode_instruction(int(ins))
            for ins in program]


def check_dispatch(config: DeviceConfig, program, where: str) -> None:
    """Raise ValueError at the first instruction of ``program`` that the core would stop
    on (the sequencer's checks, :class:`rtl.npu.checks.DispatchCheck`)."""
    check = DispatchCheck(config)
    for pc, ins in enumerate(program):
        code, why = check(ins)
        if code is not NpuError.NONE:
            raise ValueError(f"{where}: instruction {pc} ({ins}) would stop the NPU with "
                             f"{code.name}: {why}")


@dataclass
class CoreProgram:
    """The program and checks of one more NPU core (core 1, 2, ...) in a step."""
    program: list
    checks: dict = field(default_factory=dict)

    def instructions(self) -> list[Instruction]:
        return _instructions(self.program)


@dataclass
class StepProgram:
    """One decode step: an NPU program run from ``start`` to ``done``.

    ``program``: core 0's ``rtl.isa.npu.Instruction`` (or encoded integers), ending with
    HALT. ``marks``: [(stage name, instruction index)] of core 0's program, in program
    order: stage ``name`` ends when the instruction at that index (a WAIT or SYNC,
    normally on all units, or the HALT) has completed; the first stage starts at the
    step's first clock. A name may repeat (e.g. one stage per layer): reports sum the
    stages of one name.
    ``checks``: {scratchpad word address: expected 512-bit word} of core 0, compared bit
    for bit after the step's HALT. ``label``: e.g. ``"step 0"``. ``tokens``: tokens this
    step produces (the batch size). ``cores``: :class:`CoreProgram` of cores 1, 2, ...
    (an NPU of several cores; they start together and the step ends when all are done)."""
    program: list
    marks: list = field(default_factory=list)
    checks: dict = field(default_factory=dict)
    label: str = ""
    tokens: int = 0
    cores: list = field(default_factory=list)

    def instructions(self) -> list[Instruction]:
        return _instructions(self.program)

    def core_programs(self) -> list:
        """(instructions, checks) of every core, core 0 first."""
        return [(self.instructions(), self.checks)] + [(c.instructions(), c.checks)
                                                       for c in self.cores]

    def validate(self, config: DeviceConfig | None = None) -> None:
        """Raise ValueError when the step cannot be run or its marks cannot be observed.
        An instruction the core stops on is left to the RTL (its error path is tested so);
        the decode compiler refuses to make one (:func:`check_dispatch`)."""
        name = self.label or "step"
        if config is not None and len(self.cores) + 1 != config.npu.arrays:
            raise ValueError(f"{name}: programs for {len(self.cores) + 1} core(s), the NPU "
                             f"has {config.npu.arrays}")
        for core, (program, _) in enumerate(self.core_programs()):
            where = f"{name}, core {core}" if self.cores else name
            if not program or program[-1].op is not NpuOp.HALT:
                raise ValueError(f"{where}: the program must end with HALT")
            if config is not None and len(program) > config.npu.instruction_words:
                raise ValueError(f"{where}: {len(program)} instructions do not fit the "
                                 f"{config.npu.instruction_words}-word instruction memory")
        program = self.instructions()
        last = -1
        for stage, index in self.marks:
            if not 0 <= index < len(program):
                raise ValueError(f"{name}: mark {stage!r} at instruction {index}, outside "
                                 f"the program of {len(program)}")
            if index <= last:
                raise ValueError(f"{name}: mark {stage!r} at instruction {index} is not after "
                                 f"the previous mark ({last})")
            if program[index].op not in (NpuOp.WAIT, NpuOp.SYNC, NpuOp.HALT):
                raise ValueError(f"{name}: mark {stage!r} at instruction {index} is a "
                                 f"{program[index].op.name}, not a WAIT, SYNC or the HALT")
            last = index
        if config is not None:
            words = config.npu.scratchpad_words
            for core, (_, checks) in enumerate(self.core_programs()):
                bad = [a for a in checks if not 0 <= a < words]
                if bad:
                    raise ValueError(f"{name}, core {core}: check address {bad[0]} outside "
                                     f"the {words}-word scratchpad")


@dataclass
class DecodeRun:
    """A decode run: ``config`` (``preset("decode", mode=...)``), ``mode`` (one of
    :data:`MODES`), ``image`` (initial HBM contents, loaded once through the channels'
    backdoor before step 0), ``steps`` (run in order on the same device: HBM and
    scratchpad persist), ``description`` (free-form: model, batch, lengths ...; stored
    with the results)."""
    config: DeviceConfig
    mode: str
    image: HbmImage
    steps: list = field(default_factory=list)
    description: dict = field(default_factory=dict)

    def validate(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode {self.mode!r}: choose one of {', '.join(MODES)}")
        if self.image.config != self.config:
            raise ValueError("the HBM image was laid out for another configuration")
        if not self.steps:
            raise ValueError("a decode run needs at least one step")
        for step in self.steps:
            step.validate(self.config)

    def save(self, path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            pickle.dump(self, f, protocol=pickle.HIGHEST_PROTOCOL)
        return path


def load_run(path) -> DecodeRun:
    with open(path, "rb") as f:
        run = pickle.load(f)
    if not isinstance(run, DecodeRun):
        raise TypeError(f"{path} holds a {type(run).__name__}, not a DecodeRun")
    return run
