"""cocotb test of one GPT-style decoder block (``sim.decoder_program``) on ``NpuTop``
(Verilator): weights and activations preloaded into the HBM banks through the channels'
backdoor, the block's program run on the core (built-in VectorEngine), every DRAM command
checked by the timing checker (``NpuTB``), the stored output loaded back into the
scratchpad and compared with ``golden_decoder_block`` bit for bit.

Environment: ``NEUPIMS_CONFIG`` (DeviceConfig JSON), ``NEUPIMS_SEED`` (default 0),
``NEUPIMS_REPORT`` (JSON for the launcher)."""
from __future__ import annotations

import os

import cocotb
import numpy as np

from rtl.config import DeviceConfig
from rtl.isa.npu import dma_load, halt, wait
from rtl.npu.sequencer import NpuError
from sim.decoder_program import decoder_program, reference_float64

from .npu_tb import NpuTB
from .report import update_report


report = update_report


@cocotb.test()
async def decoder_block_bit_exact(dut):
    config = DeviceConfig.from_json(os.environ["NEUPIMS_CONFIG"])
    seed = int(os.environ.get("NEUPIMS_SEED", 0))
    job = decoder_program(config, seed=seed)          # HBM image inside the stored rows
    tb = NpuTB(dut, config)
    await tb.start()
    await tb.load_image(job.image)
    await tb.load_program(job.program)
    before = tb.counters()
    cycles = await tb.run()
    code, pc = tb.error()
    assert code is NpuError.NONE, f"error {code.name} at pc {pc}"
    counters = {k: v - before[k] for k, v in tb.counters().items()}
    out = job.out
    got_sp = job.result_from_words(await tb.read_words(range(out.sp, out.sp + out.words)))
    # the stored output back from HBM, into the (no longer needed) x region
    back = job.regions["x"]
    await tb.load_program([dma_load(out.hbm, back.sp, out.words), wait("dma"), halt()])
    await tb.run()
    assert tb.error()[0] is NpuError.NONE
    got_hbm = job.result_from_words(await tb.read_words(range(back.sp, back.sp + out.words)))
    for where, got in (("scratchpad", got_sp), ("HBM", got_hbm)):
        bad = np.argwhere(got != job.expected)
        assert not len(bad), (f"{where}: {len(bad)} mismatches, first at {tuple(bad[0])}: "
                              f"{int(got[tuple(bad[0])]):#x}, golden "
                              f"{int(job.expected[tuple(bad[0])]):#x}")
    ref = reference_float64(job.weights)
    got64 = got_hbm.view(np.float32).astype(np.float64)
    rel = float(np.abs(got64 - ref).max() / np.abs(ref).max())
    tb.finish()
    dut._log.info("decoder block: %d clocks, MACs %d, bit-exact, rel err vs float64 %.3g",
                  cycles, counters["macs"], rel)
    report(cycles=cycles, rel_err=rel, macs=counters["macs"],
           vector_busy=counters["vector_busy"], gemm_busy=counters["gemm_busy"],
           dma_busy=counters["dma_busy"], cycles_per_s=tb.sim_rate())
