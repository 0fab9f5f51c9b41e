"""A functional interpreter of decode programs: NPU instructions in program order on a
Python scratchpad and HBM, PIM transactions on a functional channel (global buffer,
open row set, ``sim.golden.pim.gemv``). It ignores time (the program's WAITs make the
RTL's overlap equivalent), so it checks a compiled program against the golden decode in
seconds, before any Verilator run."""
from __future__ import annotations

import numpy as np

from rtl.isa.npu import NpuOp, PIM_OPS

from ..decoder_program import execute_npu
from ..golden.pim import gemv
from ..npu_programs import pack_words, unpack_word

__all__ = ["Interpreter"]

_OPS = {v: k for k, v in PIM_OPS.items()}


class Interpreter:
    """Holds the HBM ({burst address: word}) and every core's scratchpad ({word: int})
    across steps (``sp``: core 0's)."""

    def __init__(self, config, hbm: dict):
        self.config = config
        self.hbm = dict(hbm)
        self.sps: list[dict[int, int]] = [{} for _ in range(config.npu.arrays)]
        self.sp = self.sps[0]
        g = config.geometry
        self.buffer = [np.zeros(g.row_elements, np.uint16) for _ in range(g.channels)]
        self.header = [None] * g.channels

    def _row(self, channel: int, bank: int, row: int) -> np.ndarray:
        g, amap = self.config.geometry, self.config.address_map
        rank, bankgroup, b = g.bank_coords(bank)
        words = [self.hbm.get(amap.encode(g, row=row, rank=rank, bankgroup=bankgroup, bank=b,
                                          channel=channel, column=col, offset=0), 0)
                 for col in range(g.bursts_per_row)]
        return np.concatenate([unpack_word(w, np.uint16) for w in words])

    def _pim(self, ins, sp: dict) -> None:
        g, c = self.config.geometry, ins["channel"]
        op = _OPS[ins["pim_op"]]
        if op == "gwrite":
            bank = g.bank_index(ins["rank"], ins["bankgroup"], ins["bank"])
            self.buffer[c] = self._row(c, bank, ins["row"])
        elif op == "header":
            self.header[c] = [ins["row"], ins["gemvs"]]
        else:
            if not self.header[c] or self.header[c][1] == 0:
                raise ValueError(f"channel {c}: GEMV without a header")
            self.header[c][1] -= 1
            rows = np.stack([self._row(c, b, self.header[c][0]) for b in range(g.banks)])
            result = gemv(rows, self.buffer[c], self.config.pim.lanes, ins["column"], ins["comps"])
            word = np.zeros(g.burst_bytes // 2, np.uint16)
            word[:len(result)] = result
            sp[ins["sp"]] = pack_words(word)

    def _segment(self, program, pc: int, sp: dict) -> int | None:
        """Run from ``pc`` up to and including the next SYNC: the pc after it, or None at
        the HALT."""
        while pc < len(program):
            ins = program[pc]
            if ins.op is NpuOp.HALT:
                return None
            if ins.op is NpuOp.PIM:
                self._pim(ins, sp)
            elif ins.op is not NpuOp.SYNC:
                execute_npu(self.config, sp, self.hbm, ins)
            pc += 1
            if ins.op is NpuOp.SYNC:
                return pc
        return None

    def run(self, program, *others) -> None:
        """Core 0 runs ``program``, core i ``others[i - 1]``. Between two SYNCs the cores
        touch disjoint HBM (they exchange data only as stores, SYNC, loads), so the
        segments run one core after the other, and every core's k-th SYNC waits for
        every core's segment k. A core that has halted no longer takes part."""
        programs = [list(program)] + [list(p) for p in others]
        pcs = [0] * len(programs)
        while any(pc is not None for pc in pcs):
            for core, pc in enumerate(pcs):
                if pc is not None:
                    pcs[core] = self._segment(programs[core], pc, self.sps[core])

    def run_step(self, step) -> None:
        """Every core's program of a :class:`sim.decode.run.StepProgram`."""
        self.run(*(program for program, _ in step.core_programs()))

    def mismatches(self, checks: dict, core: int = 0) -> list:
        sp = self.sps[core]
        return [(a, want, sp.get(a, 0)) for a, want in sorted(checks.items())
                if sp.get(a, 0) != want]

    def step_mismatches(self, step) -> list:
        """(core, address, expected, actual) of every check of every core that differs."""
        return [(core, *bad) for core, (_, checks) in enumerate(step.core_programs())
                for bad in self.mismatches(checks, core)]
