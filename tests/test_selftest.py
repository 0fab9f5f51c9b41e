"""The FPGA self-test top (rtl/board/selftest.py) on Amaranth's simulator, ``tiny`` and
``fpga`` presets.

It loads the banks by backdoor, copies the program into the command player, runs a GEMV
(three row sets, two tiles each, then a read-back of the vector row) and compares every
burst on the data bus with the expected ROM, cycle and bits. It must report pass on the
golden image, and fail when one bit of one expected word is flipped.
"""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from amaranth.sim import Simulator  # noqa: E402

from rtl.board import SelfTest  # noqa: E402
from rtl.channel import ChannelError  # noqa: E402
from rtl.config import preset  # noqa: E402
from sim.selftest import selftest_image  # noqa: E402

CONFIG = preset("tiny")
IMAGE = selftest_image(CONFIG)
OUTPUTS = ("done", "passed", "failed", "busy", "matched", "mismatch", "late", "error",
           "error_code", "heartbeat")


def run(image, restarts=0):
    """Simulate until ``done`` (``restarts`` more times after a restart pulse each);
    return the outputs at each finish and the cycles it took."""
    dut = SelfTest(image.config, heartbeat_bits=3, **image.rtl_args())
    finishes, beats = [], set()

    async def bench(ctx):
        for _ in range(restarts + 1):
            for cycle in range(image.end + 200):
                await ctx.tick()
                beats.add(ctx.get(dut.heartbeat))
                if ctx.get(dut.done):
                    break
            finishes.append({name: ctx.get(getattr(dut, name)) for name in OUTPUTS}
                            | {"cycles": cycle + 1})
            ctx.set(dut.restart, 1)
            await ctx.tick()
            ctx.set(dut.restart, 0)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return finishes, beats


def test_image_covers_gemv_and_reads():
    kinds = [pim for _, pim, _ in IMAGE.expected]
    assert kinds.count(True) == 3 * 2 and kinds.count(False) == CONFIG.geometry.bursts_per_row
    assert [cycle for cycle, _, _ in IMAGE.expected] == sorted(c for c, _, _ in IMAGE.expected)
    assert len(IMAGE.backdoor) == 3 * CONFIG.geometry.banks * CONFIG.geometry.bursts_per_row


def test_selftest_passes():
    (result,), beats = run(IMAGE)
    assert result["done"] == 1 and result["busy"] == 0
    assert result["error_code"] == ChannelError.NONE and result["error"] == 0
    assert result["late"] == 0 and result["mismatch"] == 0
    assert result["matched"] == len(IMAGE.expected)
    assert (result["passed"], result["failed"]) == (1, 0)
    # load (the ROMs side by side), settle, start, run (cycles 0 .. end + 1: the channel's
    # command register), drain (the checker's registered bus), check
    loads = max(len(IMAGE.backdoor), len(IMAGE.program), len(IMAGE.wdata))
    assert result["cycles"] == loads + 1 + 1 + (IMAGE.end + 2) + 1 + 1
    assert beats == {0, 1}


@pytest.mark.parametrize("index,bit", [(0, 0), (-1, 5)])
def test_selftest_fails_on_a_corrupted_expected_word(index, bit):
    (result,), _ = run(IMAGE.corrupted(index % len(IMAGE.expected), bit))
    assert result["done"] == 1
    assert (result["passed"], result["failed"]) == (0, 1)
    assert result["mismatch"] == 1 and result["matched"] == len(IMAGE.expected) - 1
    assert result["error"] == 0


def test_selftest_fails_on_a_wrong_cycle():
    cycle, pim, burst = IMAGE.expected[2]
    expected = list(IMAGE.expected)
    expected[2] = (cycle + 1, pim, burst)
    image = IMAGE.corrupted(0, 0)
    image.expected = expected
    (result,), _ = run(image)
    assert (result["passed"], result["failed"]) == (0, 1)
    assert result["matched"] == len(IMAGE.expected) - 1


def test_selftest_restarts_and_passes_again():
    finishes, _ = run(IMAGE, restarts=1)
    assert [(r["passed"], r["failed"], r["matched"]) for r in finishes] == \
        [(1, 0, len(IMAGE.expected))] * 2


# -- the ``fpga`` preset: tiny with the pipelined PIM MAC unit (5-clock adds and
# accumulator, 3-clock multipliers), COMPs 5 clocks apart and CL 18: make synth's default

FPGA_CONFIG = preset("fpga")


def test_fpga_preset_passes_and_fails_with_a_flipped_bit():
    image = selftest_image(FPGA_CONFIG)
    assert image.end > IMAGE.end    # COMPs 5 clocks apart: the GEMVs take longer
    (result,), _ = run(image)
    assert result["error_code"] == ChannelError.NONE and result["late"] == 0
    assert (result["passed"], result["failed"]) == (1, 0)
    assert result["matched"] == len(image.expected)
    (result,), _ = run(image.corrupted(1, 7))
    assert (result["passed"], result["failed"]) == (0, 1)
    assert result["mismatch"] == 1 and result["matched"] == len(image.expected) - 1
