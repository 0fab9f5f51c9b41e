"""pytest launcher: 100,000-random-operand bit-exact FP test on Verilator."""

import os

from rtl.arith.lanes import ArithLanes
from sim.harness import simulate

LANES = 64


def test_arith_verilator_bit_exact():
    seed = os.environ.get("NEUPIMS_SEED", "1")
    print(f"NEUPIMS_SEED={seed}")
    simulate(ArithLanes(LANES), name="arith_lanes", test_module="cocotb_tests.tb_arith",
             env={"NEUPIMS_SEED": seed})
