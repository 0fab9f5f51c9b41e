"""Fast unit tests of the controller's blocks on Amaranth's simulator."""
import pytest
from amaranth.sim import Simulator

from rtl.config import preset
from rtl.config.controller import ControllerConfig
from rtl.controller.bank_queue import BankQueue
from rtl.controller.refresher import Refresher, RefreshRate
from rtl.isa import Opcode

CONFIG = preset("tiny", controller=ControllerConfig(bank_queue_depth=4, row_hit_limit=1))


def _simulate(dut, bench):
    sim = Simulator(dut)
    sim.add_clock(1e-9)
    sim.add_testbench(bench)
    sim.run()


def test_bank_queue_serves_oldest_hit_then_precharges_after_the_hit_limit():
    dut = BankQueue(CONFIG)
    seen = []

    async def bench(ctx):
        ctx.set(dut.status.ready.as_value(), 0x1FF)
        ctx.set(dut.status.mem_open, 1)
        ctx.set(dut.status.mem_row, 7)
        ctx.set(dut.allow_pim_pre, 1)
        for write, row, column, tag in [(0, 3, 0, 1), (0, 7, 1, 2), (1, 7, 2, 3), (0, 7, 4, 4)]:
            ctx.set(dut.push, 1)
            ctx.set(dut.entry, {"write": write, "row": row, "column": column, "tag": tag})
            await ctx.tick()
        ctx.set(dut.push, 0)
        assert ctx.get(dut.full)
        for step in range(3):
            cand = ctx.get(dut.candidate)
            seen.append((Opcode(cand.op), cand.tag if cand.op in (Opcode.RD, Opcode.WR) else None))
            ctx.set(dut.grant, 1)
            await ctx.tick()
            ctx.set(dut.grant, 0)
            if Opcode(cand.op) is Opcode.PRE:
                ctx.set(dut.status.mem_open, 0)      # the bank closes its row
        assert ctx.get(dut.candidate.row) == 3
        # the head (row 3) conflicts: one younger hit goes first (limit 1), then the bank
        # precharges and activates the head's row

    _simulate(dut, bench)
    assert seen == [(Opcode.RD, 2), (Opcode.PRE, None), (Opcode.ACT, None)]


def test_bank_queue_activates_a_closed_bank_but_not_a_reserved_row():
    dut = BankQueue(CONFIG)

    async def bench(ctx):
        ctx.set(dut.status.ready.as_value(), 0x1FF)
        ctx.set(dut.push, 1)
        ctx.set(dut.entry, {"write": 0, "row": 5, "column": 0, "tag": 0})
        await ctx.tick()
        ctx.set(dut.push, 0)
        assert ctx.get(dut.candidate.valid) and ctx.get(dut.candidate.op) == Opcode.ACT
        assert ctx.get(dut.candidate.row) == 5
        ctx.set(dut.reserved, 1)
        ctx.set(dut.reserved_row, 5)
        assert not ctx.get(dut.candidate.valid)
        ctx.set(dut.reserved, 0)
        ctx.set(dut.status.pim_open, 1)
        ctx.set(dut.status.pim_row, 5)   # the row sits in the PIM buffer: free it first
        assert ctx.get(dut.candidate.op) == Opcode.PIM_PRECHARGE
        ctx.set(dut.allow_pim_pre, 0)
        assert not ctx.get(dut.candidate.valid)

    _simulate(dut, bench)


def test_refresher_falls_due_every_trefi_and_measures_lateness():
    config = preset("tiny")
    dut = Refresher(config)
    interval = config.timing.tREFI

    async def bench(ctx):
        for cycle in range(interval):
            assert not ctx.get(dut.due), cycle
            assert ctx.get(dut.until_due) == interval - cycle
            await ctx.tick()
        assert ctx.get(dut.due)
        await ctx.tick().repeat(7)
        assert ctx.get(dut.late) == 7
        ctx.set(dut.issued, 1)
        await ctx.tick()
        ctx.set(dut.issued, 0)
        assert not ctx.get(dut.due) and ctx.get(dut.until_due) == interval - 1

    _simulate(dut, bench)


@pytest.mark.parametrize("multiplier", [2, 4])
def test_refresher_rate_shortens_the_interval_from_reset_and_changes_at_a_ref(multiplier):
    """The rate held at reset sets the first interval; a new rate waits for the next REF."""
    config = preset("tiny")
    dut = Refresher(config)
    fast = config.timing.tREFI // multiplier
    slow = config.timing.tREFI

    async def bench(ctx):
        ctx.set(dut.rate, RefreshRate.of(multiplier))
        for cycle in range(fast):
            assert not ctx.get(dut.due), cycle
            assert ctx.get(dut.until_due) == fast - cycle
            await ctx.tick()
        assert ctx.get(dut.due) and ctx.get(dut.late) == 0
        ctx.set(dut.rate, RefreshRate.X1)        # not taken before the REF
        await ctx.tick().repeat(3)
        assert ctx.get(dut.due) and ctx.get(dut.late) == 3
        ctx.set(dut.issued, 1)
        await ctx.tick()
        ctx.set(dut.issued, 0)
        assert not ctx.get(dut.due) and ctx.get(dut.until_due) == slow - 1

    _simulate(dut, bench)
