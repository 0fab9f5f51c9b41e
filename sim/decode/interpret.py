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
    """Holds the HBM ({burst address: word}) and scratchpad ({word: int}) across steps."""

    def __init__(self, config, hbm: dict):
        self.config = config
        self.hbm = dict(hbm)
        self.sp: dict[int, int] = {}
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

    def _pim(self, ins) -> None:
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
            self.sp[ins["sp"]] = pack_words(word)

    def run(self, program) -> None:
        for ins in program:
            if ins.op is NpuOp.HALT:
                break
            if ins.op is NpuOp.PIM:
                self._pim(ins)
            else:
                execute_npu(self.config, self.sp, self.hbm, ins)

    def mismatches(self, checks: dict) -> list:
        return [(a, want, self.sp.get(a, 0)) for a, want in sorted(checks.items())
                if self.sp.get(a, 0) != want]
