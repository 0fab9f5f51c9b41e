"""A functional interpreter of decode programs: NPU instructions in program order on a
Python scratchpad and HBM, PIM transactions on a functional channel (global buffer,
open row set, ``sim.golden.pim.gemv``). It ignores time, so it checks a compiled program
against the golden decode in seconds, before any Verilator run.

Running in program order is only what the RTL computes if the program's WAITs order
every dependency between the core's units (DMA, GEMM, VECTOR, PIM run at once). The
interpreter checks that too: each instruction's scratchpad words and HBM bursts are
recorded as it runs; until a WAIT (or SYNC) names its unit they stay in flight, and an
instruction of another unit that reads what is in flight written, or writes what is in
flight read or written, is a hazard (``hazards``: core, pc, the two units, the kind and
the first address). The DMA also overlaps its own transfers (a load's data may land
after the next transfer has read the scratchpad), so within the DMA a read of what an
earlier transfer writes is one too. A word both read and written by one instruction
counts as written (lanes merged into a word)."""
from __future__ import annotations

import numpy as np

from rtl.isa.npu import NpuOp, PIM_OPS

from ..decoder_program import execute_npu
from ..golden.pim import gemv
from ..npu_programs import pack_words, unpack_word

__all__ = ["Interpreter"]

_OPS = {v: k for k, v in PIM_OPS.items()}


UNITS = {NpuOp.DMA_LOAD: "dma", NpuOp.DMA_STORE: "dma", NpuOp.GEMM: "gemm",
         NpuOp.VECTOR: "vector", NpuOp.PIM: "pim"}
_UNIT_BITS = {"dma": 1, "gemm": 2, "vector": 4, "pim": 8}


class _Recorder(dict):
    """A dict that records the keys read (``get``, ``[]``) and written (``[] =``)."""

    def __init__(self, *args):
        super().__init__(*args)
        self.reads, self.writes = set(), set()

    def get(self, key, default=None):
        self.reads.add(key)
        return super().get(key, default)

    def __getitem__(self, key):
        self.reads.add(key)
        return super().__getitem__(key)

    def __setitem__(self, key, value):
        self.writes.add(key)
        super().__setitem__(key, value)

    def take(self) -> tuple[set, set]:
        reads, writes = self.reads - self.writes, self.writes
        self.reads, self.writes = set(), set()
        return reads, writes


class _InFlight:
    """What each unit of one core may still be reading or writing."""

    def __init__(self):
        self.units = {u: {"r": set(), "w": set()} for u in _UNIT_BITS}

    def check(self, unit: str, reads: set, writes: set) -> tuple | None:
        for other, sets in self.units.items():
            if other == unit and unit != "dma":
                continue
            for kind, mine, theirs in (("read after write", reads, sets["w"]),
                                       ("write after write", writes, sets["w"]),
                                       ("write after read", writes, sets["r"])):
                if other == unit and kind != "read after write":
                    continue
                common = mine & theirs
                if common:
                    return other, kind, min(common)
        return None

    def add(self, unit: str, reads: set, writes: set) -> None:
        self.units[unit]["r"] |= reads
        self.units[unit]["w"] |= writes

    def wait(self, mask: int) -> None:
        for unit, bit in _UNIT_BITS.items():
            if mask & bit:
                self.units[unit] = {"r": set(), "w": set()}


class Interpreter:
    """Holds the HBM ({burst address: word}) and every core's scratchpad ({word: int})
    across steps (``sp``: core 0's)."""

    def __init__(self, config, hbm: dict):
        self.config = config
        self.hbm = _Recorder(hbm)
        self.sps: list[dict[int, int]] = [_Recorder() for _ in range(config.npu.arrays)]
        self.sp = self.sps[0]
        self.hazards: list[dict] = []
        self._flight = [[_InFlight(), _InFlight()] for _ in self.sps]    # (scratchpad, HBM)
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
            # into burst slice 0 of the word; a wider word keeps its other slices (the
            # RTL writes with lane enables: not a read of the word)
            keep = dict.get(sp, ins["sp"], 0) & ~((1 << (8 * g.burst_bytes)) - 1)
            sp[ins["sp"]] = keep | pack_words(word)

    def _segment(self, program, pc: int, sp: dict, core: int = 0) -> int | None:
        """Run from ``pc`` up to and including the next SYNC: the pc after it, or None at
        the HALT."""
        while pc < len(program):
            ins = program[pc]
            if ins.op is NpuOp.HALT:
                self._wait(core, 0xF)
                return None
            if ins.op in (NpuOp.WAIT, NpuOp.SYNC):
                self._wait(core, ins["units"])
            else:
                sp.take(), self.hbm.take()
                if ins.op is NpuOp.PIM:
                    self._pim(ins, sp)
                else:
                    execute_npu(self.config, sp, self.hbm, ins)
                self._track(core, pc, ins, sp.take(), self.hbm.take())
            pc += 1
            if ins.op is NpuOp.SYNC:
                return pc
        return None

    def _wait(self, core: int, mask: int) -> None:
        for flight in self._flight[core]:
            flight.wait(mask)

    def _track(self, core, pc, ins, sp_sets, hbm_sets) -> None:
        unit = UNITS.get(ins.op)
        if unit is None:
            return
        for space, flight, (reads, writes) in (("scratchpad", self._flight[core][0], sp_sets),
                                               ("HBM", self._flight[core][1], hbm_sets)):
            hit = flight.check(unit, reads, writes)
            if hit:
                other, kind, address = hit
                self.hazards.append({"core": core, "pc": pc, "unit": unit, "other": other,
                                     "kind": kind, "space": space, "address": address,
                                     "instruction": str(ins)})
            flight.add(unit, reads, writes)

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
                    pcs[core] = self._segment(programs[core], pc, self.sps[core], core)

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
