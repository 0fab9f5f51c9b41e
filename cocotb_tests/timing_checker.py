"""An independent DRAM / PIM command timing checker, written from the timing table.

Feed it the commands of one channel (from a cocotb bus monitor or a command-log file)
with :meth:`TimingChecker.check`, in non-decreasing cycle order, then call
:meth:`TimingChecker.finish` with the last cycle of the run. The first illegal command
raises :class:`TimingViolation`, whose ``rule`` names the rule family and whose message
names the rule, both commands (``str(Command)``, with cycles) and the required versus the
actual distance. Every timing value comes from the :class:`~rtl.config.DeviceConfig`
(``config.timing``, ``config.bus``, ``config.geometry``); none is written here.

Model
-----
Banks are addressed by (rank, bankgroup, bank). Each bank has a MEM row buffer and a
PIM row buffer, each CLOSED or OPEN(row). ``config.mode``:

* DUAL: two independent buffers (NeuPIMs).
* BLOCKED: one physical buffer: MEM and PIM may not both be open in a bank (G_ACT needs
  MEM closed, ACT needs PIM closed); PRE->G_ACT and PIM_PRECHARGE->ACT on a bank are
  spaced tRP; ACT <-> G_ACT in the same bank group are spaced tRC.
* DRAM: no PIM at all: G_ACT, COMP, READRES, PIM_GEMV, PIM_PRECHARGE and GWRITE (there
  is no global buffer) are "state" violations.

Commands (ACT is a one-cycle command; one command per cycle on the command bus):
ACT(rank, bg, bank, row); RD / WR(rank, bg, bank, column); PRE(rank, bg, bank);
REF (all banks of the channel); GWRITE(rank, bg, bank) copies the bank's open MEM row
to the channel's global buffer and takes ``bus.gwrite_busy`` cycles; G_ACT(rank, bg, row)
opens ``row`` in the PIM buffers of the ``banks_per_group`` banks of that bank group;
COMP(column) and READRES act on all banks of the channel; PIM_GEMV(column, comps=k) is
composite: k COMPs at t, t+ci, ..., t+ci*(k-1) (ci = ``bus.comp_interval``) and one READRES
at t + ``bus.readres_after_first_comp(k)``; those expanded events are checked with the
COMP / READRES rules (they do not occupy the command bus), and may lie in the future of
the commands that follow the PIM_GEMV (a later command that conflicts with one is
measured against it: a negative distance is a violation). PIM_PRECHARGE(rank, bg, bank)
closes the bank's PIM buffer. NOP is counted and otherwise ignored.

Rule families (``TimingViolation.rule``). "order", "bus", "tREFI", "address" and "state"
are checked first, then the opcode's timing rules; where two rules fail together the
same-bank one wins (tRC before tRRD before tRP; data-bus before tRTRS):

* "order": a command earlier than the previous one (the input must be sorted).
* "bus": two commands in the same cycle.
* "tREFI": the gap from cycle 0 to the first REF, and between consecutive REFs, may not
  exceed the refresh interval (``DeviceConfig.refresh_interval``: ``tREFI`` divided by
  ``refresh_rate``) + ``refresh_max_late``; any command (REF included) after that deadline
  with no REF in between is a violation, and so is ``finish(end_cycle)`` past it.
* "address": an operand out of range for the geometry (rank, bank group, bank, row,
  column; PIM_GEMV needs 1 <= k and column + k <= ``bus.comps_per_row``).
* "state": row-buffer legality. ACT needs MEM closed and the row not open in the same
  bank's PIM buffer; RD / WR / GWRITE need MEM open; G_ACT needs each bank's PIM buffer
  closed and the row not open in that bank's MEM buffer; COMP / READRES / PIM_GEMV need
  the PIM buffer open in every bank of the channel; REF needs every buffer closed;
  BLOCKED-mode exclusion; PIM opcodes in DRAM mode. PRE / PIM_PRECHARGE of a closed
  buffer is a legal no-op and does not count as a precharge for tRP.
* "GWRITE": during [t, t + gwrite_busy) after a GWRITE: no other GWRITE; no ACT / RD /
  WR / PRE to that bank; no G_ACT / PIM_PRECHARGE in that rank; no COMP / READRES /
  PIM_GEMV in the channel. A GWRITE needs >= ci after the last (expanded) COMP (the
  global buffer is being read); a READRES still pending from a PIM_GEMV does not block it.
* "tRCD": ACT->RD (tRCDRD), ACT->WR (tRCDWR), ACT->GWRITE (tRCDRD); G_ACT->COMP (tRCDRD,
  from the latest G_ACT of the channel; the first COMP of a PIM_GEMV included).
* "tRAS": ACT->PRE, G_ACT->PIM_PRECHARGE, same bank.
* "tRP": PRE->ACT, PIM_PRECHARGE->G_ACT (same bank); any PRE / PIM_PRECHARGE->REF;
  BLOCKED: also PRE->G_ACT and PIM_PRECHARGE->ACT on the same bank.
* "tRC": ACT->ACT and G_ACT->G_ACT on the same bank.
* "tRTP": RD->PRE (``bus.rd_to_pre``, same bank); COMP->PIM_PRECHARGE and
  READRES->PIM_PRECHARGE (``timing.tRTP``, any bank: both are all-bank).
* "tWR": WR->PRE (``bus.wr_to_pre``, same bank).
* "tWTR": WR->RD in the same rank (``bus.wr_to_rd(same_bankgroup)``).
* "tRTW": RD->WR and READRES->WR anywhere in the channel (``bus.rd_to_wr``, which holds
  the rank-switch gap). A WR issued before an expanded READRES it precedes is left to
  the data-bus / tRTRS rules.
* "tCCD": RD/WR->RD/WR in the same rank: ``bus.ccd(same_bankgroup)``.
* "tRRD": ACT->ACT, different banks of a rank: tRRD_L same bank group, tRRD_S other;
  ACT <-> G_ACT (either order) in a rank: same bank group tRRD_L (DUAL) / tRC (BLOCKED),
  other bank group tRRD_S; G_ACT->G_ACT of different bank groups of a rank: tRRD_S.
* "tFAW": per rank at most 4 activations in any tFAW-cycle window; ACT weighs 1 and
  G_ACT ``min(banks_per_group, 4)`` (so with 4 banks per group G_ACT->G_ACT >= tFAW).
* "tRFC": REF->ACT, REF->G_ACT, REF->REF.
* "COMP": COMP->COMP >= ci; READRES >= ci after the last COMP and >=
  ``bus.readres_after_first_comp(n)`` after the first COMP of the accumulation (n COMPs
  since the previous READRES); COMP >= ci after a READRES; no COMP / READRES / PIM_GEMV
  while a PIM_GEMV is busy (``bus.gemv_busy(k)`` cycles from its issue).
* "data-bus": data windows may not overlap: RD and READRES [t+RL, t+RL+burst), WR
  [t+WL, t+WL+burst) (the READRES of a PIM_GEMV included).
* "tRTRS": data windows of different ranks are separated by ``timing.tRTRS`` cycles.
  The READRES data (one value from every bank) counts as a rank of its own: it is
  separated by tRTRS from every RD / WR burst, but not from another READRES.
"""
from __future__ import annotations

import collections
from typing import Iterable

from rtl.config import RowBufferMode
from rtl.isa.dram import Command, Opcode

__all__ = ["TimingViolation", "TimingChecker", "parse_command_log", "format_command", "RULES"]

RULES = ("order", "bus", "tREFI", "address", "state", "GWRITE", "tRCD", "tRAS", "tRP", "tRC",
         "tRTP", "tWR", "tWTR", "tRTW", "tCCD", "tRRD", "tFAW", "tRFC", "COMP", "data-bus",
         "tRTRS")

#: Activations allowed in one tFAW window (the "four" of four-activation window).
FAW_ACTIVATIONS = 4
#: Pseudo-rank of READRES data (it comes from every bank of the channel).
_READRES_RANK = -1

_PIM_ONLY = frozenset({Opcode.G_ACT, Opcode.COMP, Opcode.READRES, Opcode.PIM_GEMV,
                       Opcode.PIM_PRECHARGE, Opcode.GWRITE})


class TimingViolation(AssertionError):
    """A command that breaks a rule. ``rule``: the family; ``earlier``: the command it
    conflicts with (an expanded COMP / READRES of a PIM_GEMV is given as its own command,
    at its own cycle; ``source`` is then the PIM_GEMV) or None; ``later``: the offender."""

    def __init__(self, rule: str, earlier: Command | None, later: Command, message: str,
                 source: Command | None = None):
        super().__init__(message)
        self.rule = rule
        self.earlier = earlier
        self.later = later
        self.source = source


class TimingChecker:
    """Checks one channel's command stream; see the module docstring for the rules."""

    def __init__(self, config):
        self.config = config
        g, t, bus = config.geometry, config.timing, config.bus
        self.mode = config.mode
        self._blocked = config.mode is RowBufferMode.BLOCKED
        self._dram = config.mode is RowBufferMode.DRAM
        self._ranks, self._bgs, self._bpg = g.ranks, g.bankgroups, g.banks_per_group
        self._nbanks = g.banks
        self._rows, self._bursts = g.rows, g.bursts_per_row
        self._comps_per_row = bus.comps_per_row
        # timing constants, all from the config
        self._tRCDRD, self._tRCDWR = t.tRCDRD, t.tRCDWR
        self._tRAS, self._tRP, self._tRC = t.tRAS, t.tRP, t.tRC
        self._tRRD_S, self._tRRD_L, self._tFAW = t.tRRD_S, t.tRRD_L, t.tFAW
        self._tRFC, self._tRTP, self._tRTRS = t.tRFC, t.tRTP, t.tRTRS
        self._refresh_limit = config.refresh_interval + t.refresh_max_late
        self._RL, self._WL = t.RL, t.WL
        self._burst = bus.burst
        self._rd_to_pre, self._wr_to_pre = bus.rd_to_pre, bus.wr_to_pre
        self._rd_to_wr = bus.rd_to_wr
        self._wr_to_rd = {True: bus.wr_to_rd(True), False: bus.wr_to_rd(False)}
        self._ccd = {True: bus.ccd(True), False: bus.ccd(False)}
        self._ci = bus.comp_interval
        self._gwrite_busy = bus.gwrite_busy
        self._readres_after = bus.readres_after_first_comp
        self._gemv_busy = bus.gemv_busy
        self._gact_weight = min(g.banks_per_group, FAW_ACTIVATIONS)
        # ACT <-> G_ACT in the same bank group
        self._act_gact_same_bg = t.tRC if self._blocked else t.tRRD_L
        self._data_lookahead = min(t.RL, t.WL)

        self.counts: collections.Counter = collections.Counter()
        n = self._nbanks
        # per bank: the command that opened the buffer (None = closed) and last events
        self._mem_open: list[Command | None] = [None] * n
        self._pim_open: list[Command | None] = [None] * n
        self._mem_open_count = 0
        self._pim_open_count = 0
        self._last_act: list[Command | None] = [None] * n
        self._last_pre: list[Command | None] = [None] * n
        self._last_pim_pre: list[Command | None] = [None] * n
        self._last_rd: list[Command | None] = [None] * n
        self._last_wr: list[Command | None] = [None] * n
        # per (rank, bank group) and per rank
        nbg = g.ranks * g.bankgroups
        self._bg_act: list[Command | None] = [None] * nbg
        self._bg_gact: list[Command | None] = [None] * nbg
        self._bg_rdwr: list[Command | None] = [None] * nbg
        self._bg_wr: list[Command | None] = [None] * nbg
        self._rank_activation: list[Command | None] = [None] * g.ranks  # ACT or G_ACT
        self._rank_rdwr: list[Command | None] = [None] * g.ranks
        self._rank_wr: list[Command | None] = [None] * g.ranks
        self._faw = [collections.deque() for _ in range(g.ranks)]  # (cycle, weight, cmd)
        self._faw_sum = [0] * g.ranks
        # channel
        self._last_cycle = -1
        self._last_cmd: Command | None = None
        self._last_ref: Command | None = None
        self._last_precharge: Command | None = None      # real PRE or PIM_PRECHARGE
        self._latest_gact: Command | None = None
        self._last_rd_any: Command | None = None
        self._readres: list[Command] = []                 # the last two READRES events
        self._last_comp: Command | None = None
        self._acc_first: Command | None = None
        self._acc_n = 0
        self._last_gemv: Command | None = None
        self._gwrite: Command | None = None
        self._windows: list[tuple[int, int, int, Command]] = []  # (start, end, rank, cmd)
        self._source: dict[Command, Command] = {}          # expanded event -> PIM_GEMV

    # ------------------------------------------------------------------ reporting
    def _name(self, cmd: Command) -> str:
        src = self._source.get(cmd)
        return f"{cmd} [expanded from {src}]" if src is not None else str(cmd)

    def _fail(self, rule, earlier, later, message):
        raise TimingViolation(rule, earlier, later, f"{rule}: {message}",
                              self._source.get(earlier) if earlier is not None else None)

    def _need(self, rule, earlier, later, required):
        """Raise unless ``later`` is at least ``required`` cycles after ``earlier``."""
        if earlier is not None and later.cycle - earlier.cycle < required:
            self._fail(rule, earlier, later,
                       f"{later} is {later.cycle - earlier.cycle} cycles after "
                       f"{self._name(earlier)}; needs >= {required}")

    def _state(self, later, message, earlier=None):
        by = f" (by {self._name(earlier)})" if earlier is not None else ""
        self._fail("state", earlier, later, f"{later}: {message}{by}")

    # ------------------------------------------------------------------ helpers
    def _bank(self, cmd) -> int:
        return (cmd.rank * self._bgs + cmd.bankgroup) * self._bpg + cmd.bank

    def _coords(self, b) -> str:
        bank = b % self._bpg
        bg = (b // self._bpg) % self._bgs
        return f"bank (rank={b // (self._bpg * self._bgs)}, bg={bg}, bank={bank})"

    def _check_address(self, cmd):
        op = cmd.op
        bad = None
        if op in (Opcode.ACT, Opcode.RD, Opcode.WR, Opcode.PRE, Opcode.GWRITE,
                  Opcode.PIM_PRECHARGE, Opcode.G_ACT):
            if not 0 <= cmd.rank < self._ranks:
                bad = f"rank {cmd.rank} not in [0, {self._ranks})"
            elif not 0 <= cmd.bankgroup < self._bgs:
                bad = f"bank group {cmd.bankgroup} not in [0, {self._bgs})"
            elif op is not Opcode.G_ACT and not 0 <= cmd.bank < self._bpg:
                bad = f"bank {cmd.bank} not in [0, {self._bpg})"
        if bad is None and op in (Opcode.ACT, Opcode.G_ACT) and not 0 <= cmd.row < self._rows:
            bad = f"row {cmd.row} not in [0, {self._rows})"
        if bad is None and op in (Opcode.RD, Opcode.WR) and not 0 <= cmd.column < self._bursts:
            bad = f"column {cmd.column} not in [0, {self._bursts})"
        if bad is None and op is Opcode.COMP and not 0 <= cmd.column < self._comps_per_row:
            bad = f"column {cmd.column} not in [0, {self._comps_per_row})"
        if bad is None and op is Opcode.PIM_GEMV and not (
                cmd.comps >= 1 and 0 <= cmd.column <= self._comps_per_row - cmd.comps):
            bad = (f"needs 1 <= k and column + k <= {self._comps_per_row}, "
                   f"got column {cmd.column}, k {cmd.comps}")
        if bad is not None:
            self._fail("address", None, cmd, f"{cmd}: {bad}")

    def _faw_check(self, cmd, weight):
        """tFAW: at most FAW_ACTIVATIONS activations of ``cmd.rank`` in any tFAW window."""
        rank, t = cmd.rank, cmd.cycle
        window = self._faw[rank]
        while window and window[0][0] <= t - self._tFAW:
            self._faw_sum[rank] -= window.popleft()[1]
        total = self._faw_sum[rank]
        if total + weight > FAW_ACTIVATIONS:
            removed = 0
            for cycle, w, earlier in window:          # the oldest that must leave the window
                removed += w
                if total - removed + weight <= FAW_ACTIVATIONS:
                    break
            self._fail("tFAW", earlier, cmd,
                       f"{cmd} is {t - earlier.cycle} cycles after {earlier}, which would make "
                       f"{total + weight} activations (weights: ACT 1, G_ACT "
                       f"{self._gact_weight}) in rank {rank} within tFAW; needs >= {self._tFAW}")

    def _faw_add(self, cmd, weight):
        self._faw[cmd.rank].append((cmd.cycle, weight, cmd))
        self._faw_sum[cmd.rank] += weight

    def _data_check(self, cmd, start, rank):
        """data-bus overlap and tRTRS against the data windows still relevant."""
        end = start + self._burst
        for s, e, r, other in self._windows:
            if start < e and s < end:
                self._fail("data-bus", other, cmd,
                           f"data of {cmd} [{start}, {end}) overlaps data of {self._name(other)} "
                           f"[{s}, {e}) by {min(e, end) - max(s, start)} cycles; needs gap >= 0")
            if r != rank:
                gap = start - e if start >= e else s - end
                if gap < self._tRTRS:
                    self._fail("tRTRS", other, cmd,
                               f"data of {cmd} [{start}, {end}) and of {self._name(other)} "
                               f"[{s}, {e}) (different ranks) are {gap} cycles apart; "
                               f"needs >= {self._tRTRS}")

    def _data_add(self, cmd, start, rank, now):
        horizon = now + self._data_lookahead - self._tRTRS
        windows = [w for w in self._windows if w[1] > horizon]
        windows.append((start, start + self._burst, rank, cmd))
        self._windows = windows

    def _pim_all_open(self, cmd):
        if self._pim_open_count != self._nbanks:
            for b in range(self._nbanks):
                if self._pim_open[b] is None:
                    self._state(cmd, f"PIM buffer of {self._coords(b)} is closed")

    def _comp_check(self, cmd):
        """COMP rules for a COMP (or the first COMP of a PIM_GEMV) at ``cmd.cycle``."""
        if self._last_gemv is not None:
            self._need("COMP", self._last_gemv, cmd, self._gemv_busy(self._last_gemv.comps))
        self._need("COMP", self._last_comp, cmd, self._ci)
        if self._readres:
            self._need("COMP", self._readres[-1], cmd, self._ci)
        if self._gwrite is not None:
            self._need("GWRITE", self._gwrite, cmd, self._gwrite_busy)
        self._need("tRCD", self._latest_gact, cmd, self._tRCDRD)

    def _add_readres(self, ev):
        self._readres = [self._readres[-1], ev] if self._readres else [ev]

    # ------------------------------------------------------------------ API
    def check(self, cmd: Command) -> None:
        """Check one command (``cmd.cycle`` >= 0, non-decreasing); raise on a violation."""
        t = cmd.cycle
        if t < 0:
            raise ValueError(f"{cmd}: a checked command needs a cycle >= 0")
        op = cmd.op
        self.counts[op] += 1
        if t < self._last_cycle:
            self._fail("order", self._last_cmd, cmd,
                       f"{cmd} comes after {self._last_cmd}; commands must be in cycle order")
        if op is Opcode.NOP:
            return
        if t == self._last_cycle:
            self._fail("bus", self._last_cmd, cmd,
                       f"{cmd} is 0 cycles after {self._last_cmd}; needs >= 1 "
                       "(one command per cycle)")
        ref_base = self._last_ref.cycle if self._last_ref is not None else 0
        if t - ref_base > self._refresh_limit:
            since = str(self._last_ref) if self._last_ref is not None else "the start (cycle 0)"
            self._fail("tREFI", self._last_ref, cmd,
                       f"{cmd} is {t - ref_base} cycles after {since} with no REF in between; "
                       f"needs <= {self._refresh_limit} (the refresh interval + refresh_max_late)")
        self._check_address(cmd)
        if self._dram and op in _PIM_ONLY:
            self._state(cmd, "PIM command in DRAM mode (no PIM units, no global buffer)")
        handler = self._handlers[op]
        handler(self, cmd)
        self._last_cycle = t
        self._last_cmd = cmd

    def finish(self, end_cycle: int) -> None:
        """End-of-run checks: the refresh deadline must not have passed at ``end_cycle``."""
        ref_base = self._last_ref.cycle if self._last_ref is not None else 0
        if end_cycle - ref_base > self._refresh_limit:
            since = str(self._last_ref) if self._last_ref is not None else "the start (cycle 0)"
            end = Command(Opcode.NOP, cycle=end_cycle)
            self._fail("tREFI", self._last_ref, end,
                       f"end of run @{end_cycle} is {end_cycle - ref_base} cycles after {since} "
                       f"with no REF in between; needs <= {self._refresh_limit} "
                       "(the refresh interval + refresh_max_late)")

    # ------------------------------------------------------------------ per opcode
    def _gwrite_bank_block(self, cmd, b):
        gw = self._gwrite
        if gw is not None and self._bank(gw) == b:
            self._need("GWRITE", gw, cmd, self._gwrite_busy)

    def _gwrite_rank_block(self, cmd):
        gw = self._gwrite
        if gw is not None and gw.rank == cmd.rank:
            self._need("GWRITE", gw, cmd, self._gwrite_busy)

    def _do_act(self, cmd):
        b = self._bank(cmd)
        opener = self._mem_open[b]
        if opener is not None:
            self._state(cmd, f"MEM buffer of {self._coords(b)} is already open", opener)
        pim = self._pim_open[b]
        if pim is not None:
            if self._blocked:
                self._state(cmd, f"BLOCKED mode: PIM buffer of {self._coords(b)} is open", pim)
            if pim.row == cmd.row:
                self._state(cmd, f"row {cmd.row} is open in the PIM buffer of {self._coords(b)}",
                            pim)
        self._gwrite_bank_block(cmd, b)
        self._need("tRC", self._last_act[b], cmd, self._tRC)
        bg = cmd.rank * self._bgs + cmd.bankgroup
        self._need("tRRD", self._bg_act[bg], cmd, self._tRRD_L)
        self._need("tRRD", self._bg_gact[bg], cmd, self._act_gact_same_bg)
        self._need("tRRD", self._rank_activation[cmd.rank], cmd, self._tRRD_S)
        self._need("tRP", self._last_pre[b], cmd, self._tRP)
        if self._blocked:
            self._need("tRP", self._last_pim_pre[b], cmd, self._tRP)
        self._need("tRFC", self._last_ref, cmd, self._tRFC)
        self._faw_check(cmd, 1)
        # update
        self._faw_add(cmd, 1)
        self._mem_open[b] = cmd
        self._mem_open_count += 1
        self._last_act[b] = cmd
        self._bg_act[bg] = cmd
        self._rank_activation[cmd.rank] = cmd

    def _do_rdwr(self, cmd):
        b = self._bank(cmd)
        is_rd = cmd.op is Opcode.RD
        opener = self._mem_open[b]
        if opener is None:
            self._state(cmd, f"MEM buffer of {self._coords(b)} is closed")
        self._gwrite_bank_block(cmd, b)
        self._need("tRCD", opener, cmd, self._tRCDRD if is_rd else self._tRCDWR)
        bg = cmd.rank * self._bgs + cmd.bankgroup
        rank = cmd.rank
        if is_rd:
            self._need("tWTR", self._bg_wr[bg], cmd, self._wr_to_rd[True])
            self._need("tWTR", self._rank_wr[rank], cmd, self._wr_to_rd[False])
        else:
            self._need("tRTW", self._last_rd_any, cmd, self._rd_to_wr)
            for ev in reversed(self._readres):
                if ev.cycle <= cmd.cycle:
                    self._need("tRTW", ev, cmd, self._rd_to_wr)
                    break
        self._need("tCCD", self._bg_rdwr[bg], cmd, self._ccd[True])
        self._need("tCCD", self._rank_rdwr[rank], cmd, self._ccd[False])
        start = cmd.cycle + (self._RL if is_rd else self._WL)
        self._data_check(cmd, start, rank)
        # update
        self._data_add(cmd, start, rank, cmd.cycle)
        self._bg_rdwr[bg] = cmd
        self._rank_rdwr[rank] = cmd
        if is_rd:
            self._last_rd[b] = cmd
            self._last_rd_any = cmd
        else:
            self._last_wr[b] = cmd
            self._bg_wr[bg] = cmd
            self._rank_wr[rank] = cmd

    def _do_pre(self, cmd):
        b = self._bank(cmd)
        opener = self._mem_open[b]
        self._gwrite_bank_block(cmd, b)
        if opener is None:
            return                                   # legal no-op
        self._need("tRAS", opener, cmd, self._tRAS)
        self._need("tRTP", self._last_rd[b], cmd, self._rd_to_pre)
        self._need("tWR", self._last_wr[b], cmd, self._wr_to_pre)
        self._mem_open[b] = None
        self._mem_open_count -= 1
        self._last_pre[b] = cmd
        self._last_precharge = cmd
        self._last_rd[b] = None
        self._last_wr[b] = None

    def _do_ref(self, cmd):
        if self._mem_open_count or self._pim_open_count:
            for b in range(self._nbanks):
                if self._mem_open[b] is not None:
                    self._state(cmd, f"MEM buffer of {self._coords(b)} is open",
                                self._mem_open[b])
                if self._pim_open[b] is not None:
                    self._state(cmd, f"PIM buffer of {self._coords(b)} is open",
                                self._pim_open[b])
        self._need("tRP", self._last_precharge, cmd, self._tRP)
        self._need("tRFC", self._last_ref, cmd, self._tRFC)
        self._last_ref = cmd

    def _do_gwrite(self, cmd):
        b = self._bank(cmd)
        opener = self._mem_open[b]
        if opener is None:
            self._state(cmd, f"MEM buffer of {self._coords(b)} is closed")
        self._need("GWRITE", self._gwrite, cmd, self._gwrite_busy)
        self._need("GWRITE", self._last_comp, cmd, self._ci)
        self._need("tRCD", opener, cmd, self._tRCDRD)
        self._gwrite = cmd

    def _do_gact(self, cmd):
        base = (cmd.rank * self._bgs + cmd.bankgroup) * self._bpg
        banks = range(base, base + self._bpg)
        for b in banks:
            pim = self._pim_open[b]
            if pim is not None:
                self._state(cmd, f"PIM buffer of {self._coords(b)} is already open", pim)
            mem = self._mem_open[b]
            if mem is not None:
                if self._blocked:
                    self._state(cmd, f"BLOCKED mode: MEM buffer of {self._coords(b)} is open",
                                mem)
                if mem.row == cmd.row:
                    self._state(cmd, f"row {cmd.row} is open in the MEM buffer of "
                                f"{self._coords(b)}", mem)
        self._gwrite_rank_block(cmd)
        bg = cmd.rank * self._bgs + cmd.bankgroup
        self._need("tRC", self._bg_gact[bg], cmd, self._tRC)
        self._need("tRRD", self._bg_act[bg], cmd, self._act_gact_same_bg)
        self._need("tRRD", self._rank_activation[cmd.rank], cmd, self._tRRD_S)
        for b in banks:
            self._need("tRP", self._last_pim_pre[b], cmd, self._tRP)
            if self._blocked:
                self._need("tRP", self._last_pre[b], cmd, self._tRP)
        self._need("tRFC", self._last_ref, cmd, self._tRFC)
        self._faw_check(cmd, self._gact_weight)
        # update
        self._faw_add(cmd, self._gact_weight)
        for b in banks:
            self._pim_open[b] = cmd
        self._pim_open_count += self._bpg
        self._bg_gact[bg] = cmd
        self._rank_activation[cmd.rank] = cmd
        self._latest_gact = cmd

    def _do_pim_pre(self, cmd):
        b = self._bank(cmd)
        opener = self._pim_open[b]
        self._gwrite_rank_block(cmd)
        if opener is None:
            return                                   # legal no-op
        self._need("tRAS", opener, cmd, self._tRAS)
        self._need("tRTP", self._last_comp, cmd, self._tRTP)
        for ev in self._readres:
            self._need("tRTP", ev, cmd, self._tRTP)
        self._pim_open[b] = None
        self._pim_open_count -= 1
        self._last_pim_pre[b] = cmd
        self._last_precharge = cmd

    def _do_comp(self, cmd):
        self._pim_all_open(cmd)
        self._comp_check(cmd)
        self._last_comp = cmd
        if self._acc_n == 0:
            self._acc_first = cmd
        self._acc_n += 1

    def _readres_check(self, cmd):
        self._need("COMP", self._last_comp, cmd, self._ci)
        if self._acc_n:
            self._need("COMP", self._acc_first, cmd, self._readres_after(self._acc_n))

    def _do_readres(self, cmd):
        self._pim_all_open(cmd)
        if self._last_gemv is not None:
            self._need("COMP", self._last_gemv, cmd, self._gemv_busy(self._last_gemv.comps))
        self._readres_check(cmd)
        if self._gwrite is not None:
            self._need("GWRITE", self._gwrite, cmd, self._gwrite_busy)
        start = cmd.cycle + self._RL
        self._data_check(cmd, start, _READRES_RANK)
        self._data_add(cmd, start, _READRES_RANK, cmd.cycle)
        self._add_readres(cmd)
        self._acc_n = 0
        self._acc_first = None

    def _do_gemv(self, cmd):
        self._pim_all_open(cmd)
        t, k, ci = cmd.cycle, cmd.comps, self._ci
        first = Command(Opcode.COMP, column=cmd.column, cycle=t)
        last = Command(Opcode.COMP, column=cmd.column + k - 1, cycle=t + ci * (k - 1))
        readres = Command(Opcode.READRES, cycle=t + self._readres_after(k))
        self._comp_check(cmd)        # as its first COMP; `cmd` names the PIM_GEMV itself
        # the expansion is self-consistent; only its READRES meets other data
        start = readres.cycle + self._RL
        for ev in (first, last, readres):
            self._source[ev] = cmd
        self._data_check(readres, start, _READRES_RANK)
        # update
        self._data_add(readres, start, _READRES_RANK, t)
        keep = {self._last_comp, self._acc_first, *self._readres}
        self._source = {ev: src for ev, src in self._source.items() if ev in keep
                        or src is cmd}
        self._last_comp = last
        self._add_readres(readres)
        self._acc_n = 0
        self._acc_first = None
        self._last_gemv = cmd

    _handlers = {
        Opcode.ACT: _do_act,
        Opcode.RD: _do_rdwr,
        Opcode.WR: _do_rdwr,
        Opcode.PRE: _do_pre,
        Opcode.REF: _do_ref,
        Opcode.GWRITE: _do_gwrite,
        Opcode.G_ACT: _do_gact,
        Opcode.COMP: _do_comp,
        Opcode.READRES: _do_readres,
        Opcode.PIM_GEMV: _do_gemv,
        Opcode.PIM_PRECHARGE: _do_pim_pre,
    }


# ---------------------------------------------------------------------- command logs
_FIELDS = ("rank", "bankgroup", "bank", "row", "column")


def format_command(cmd: Command) -> str:
    """``cycle command rank bankgroup bank row column [comps]`` (comps for PIM_GEMV, or
    whenever it is not 0)."""
    text = (f"{cmd.cycle} {cmd.op.name} {cmd.rank} {cmd.bankgroup} {cmd.bank} {cmd.row} "
            f"{cmd.column}")
    if cmd.op is Opcode.PIM_GEMV or cmd.comps:
        text += f" {cmd.comps}"
    return text


def parse_command_log(lines: Iterable[str] | str) -> list[Command]:
    """Parse lines ``cycle command rank bankgroup bank row column [comps]`` (command: an
    Opcode name, case-insensitive; fields: non-negative decimal integers; comps defaults
    to 0). Blank lines and ``#`` comments are skipped. ``lines`` may also be one string.
    Raises ValueError naming the (1-based) line number."""
    if isinstance(lines, str):
        lines = lines.splitlines()
    commands = []
    for number, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        parts = text.split()
        if len(parts) not in (7, 8):
            raise ValueError(f"line {number}: expected 'cycle command rank bankgroup bank row "
                             f"column [comps]', got {len(parts)} fields: {line.rstrip()!r}")
        try:
            op = Opcode[parts[1].upper()]
        except KeyError:
            raise ValueError(f"line {number}: unknown command {parts[1]!r}") from None
        values = []
        for name, word in zip(("cycle",) + _FIELDS + ("comps",), parts[:1] + parts[2:]):
            try:
                value = int(word, 10)
            except ValueError:
                raise ValueError(f"line {number}: {name} {word!r} is not an integer") from None
            if value < 0:
                raise ValueError(f"line {number}: {name} {value} is negative")
            values.append(value)
        cycle, *fields = values
        commands.append(Command(op, *fields[:5], comps=fields[5] if len(fields) > 5 else 0,
                                cycle=cycle))
    return commands
