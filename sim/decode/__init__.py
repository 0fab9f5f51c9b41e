"""LLM decode steps on the RTL.

Modules (import them directly; this package imports nothing heavy):

- ``sim.decode.run``: the data types, ``StepProgram`` and ``DecodeRun``, and their pickle
  files;
- ``sim.decode.rtl_run``: ``run_on_rtl(run, out_json)``: build ``NpuTop`` for the run's
  configuration (cached) and run it under cocotb (``cocotb_tests.tb_decode``);
- ``sim.decode.report``: the results table, JSON and timeline plot.
"""
