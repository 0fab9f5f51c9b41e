"""A hand-made decode run on the ``decode`` preset (dual buffers) through
``sim.decode.rtl_run.run_on_rtl`` (``cocotb_tests.tb_decode`` on the Verilator build of
``NpuTop``, cached; about 2 minutes the first time, then ~40 s: elaboration + run).

Steps 0 and 1 each: DMA_LOAD A and B, a GEMM (FP32 C = A . B, K over two array tiles),
a PIM GWRITE / HEADER / GEMV on channel ``i``, WAIT all (mark "A"), a VECTOR op (C + 1.0)
beside a DMA_STORE of C, WAIT all (mark "B"), HALT (step 1: mark "C" on it). Step 2
loads step 0's stored C back (the DMA store and load through the bank-interleaved
address map), WAIT (mark "load"), HALT (mark "end"); its checks hold one deliberately
wrong word, which must come back as a mismatch, and step 0's PIM result (the scratchpad
persists between steps). Step 3 pins the clock of a mark: three instructions on idle
units, marked at clocks 3, 5 and 8."""
from __future__ import annotations

import json

import numpy as np
import pytest

from rtl.config import preset
from rtl.isa.npu import dma_load, dma_store, gemm, halt, pim, vector, wait
from rtl.npu.vector import VectorOp
from rtl.npu.vector_engine import FLAG_IMM_B
from sim.decode.report import format_table, plot_timeline, to_json
from sim.decode.rtl_run import run_on_rtl
from sim.decode.run import DecodeRun, StepProgram
from sim.golden.pim import gemv
from sim.npu_programs import HbmAllocator, HbmImage, gemm_program, matrix_words, pack_words
from sim.npu_vector_programs import execute_instruction

ALL = ("dma", "gemm", "vector", "pim")
ONE = 0x3F800000


def hand_made_run(mode: str = "dual", seed: int = 5) -> tuple[DecodeRun, int]:
    """(the run, the scratchpad address of its deliberately wrong check)."""
    config = preset("decode", mode=mode)
    g = config.geometry
    rng = np.random.default_rng(seed)
    image = HbmImage(config)
    alloc = HbmAllocator(config)
    lanes, per_row = config.npu.vector_lanes, config.bus.comps_per_row
    steps, c_of_step0, pim_word0 = [], None, None
    for i in range(2):
        base = 64 * i
        a = rng.standard_normal((4, 16)).astype(np.float16).view(np.uint16)
        b = rng.standard_normal((16, 16)).astype(np.float16).view(np.uint16)
        job = gemm_program(config, a, b, fp32=True, sp_base=base, halt_at_end=False,
                           readback=False, allocator=alloc)
        image.words.update(job.image.words)
        A, B, C = job.a, job.b, job.c
        c_words = matrix_words(job.expected, 32, C.pitch, g.burst_bytes)
        # PIM: a matrix row in every bank of channel i, the vector in bank 0
        channel, mrow, vrow = i, config.stored_rows - 2, config.stored_rows - 1
        matrix = rng.standard_normal((g.banks, g.row_elements)).astype(np.float16).view(np.uint16)
        vec = rng.standard_normal(g.row_elements).astype(np.float16).view(np.uint16)
        for bank in range(g.banks):
            image.write_row(channel, bank, mrow, matrix[bank])
        image.write_row(channel, 0, vrow, vec)
        pim_sp = base + 50
        pim_word = pack_words(gemv(matrix, vec, config.pim.lanes, 0, per_row))
        # VECTOR: d = C + 1.0 over the 64 FP32 of C
        vd = base + 40
        add = vector(VectorOp.ADD.value, a=C.sp, d=vd, length=64, imm=ONE, flags=FLAG_IMM_B)
        memory = {C.sp + k: w for k, w in enumerate(c_words)}
        execute_instruction(memory, add, lanes)
        program = [dma_load(A.hbm, A.sp, A.words), dma_load(B.hbm, B.sp, B.words), wait("dma"),
                   gemm(A.sp, B.sp, C.sp, 4, 16, 16, A.pitch, B.pitch, C.pitch, fp32=True),
                   pim("gwrite", channel=channel, row=vrow),
                   pim("header", channel=channel, row=mrow, gemvs=1, comps=per_row),
                   pim("gemv", channel=channel, row=mrow, column=0, comps=per_row, sp=pim_sp),
                   wait(*ALL),                                    # 7: mark A
                   add, dma_store(C.hbm, C.sp, C.words),
                   wait(*ALL),                                    # 10: mark B
                   halt()]                                        # 11
        marks = [("A", 7), ("B", 10)] + ([("C", 11)] if i == 1 else [])
        checks = {C.sp + k: w for k, w in enumerate(c_words)}
        checks.update({vd + k: memory[vd + k] for k in range(4)})
        checks[pim_sp] = pim_word
        steps.append(StepProgram(program, marks, checks, f"step {i}", tokens=4))
        if i == 0:
            c_of_step0, pim_word0 = (C, c_words), (pim_sp, pim_word)
    # step 2: step 0's C back from HBM; one wrong expected word
    C, c_words = c_of_step0
    back = 200
    checks = {back + k: w for k, w in enumerate(c_words)}
    checks[pim_word0[0]] = pim_word0[1]
    wrong = back + 1
    checks[wrong] ^= 1 << 100
    steps.append(StepProgram([dma_load(C.hbm, back, C.words), wait("dma"), halt()],
                             [("load", 1), ("end", 2)], checks, "readback", tokens=0))
    # step 3: the exact clocks of marks: a WAIT on idle units is released on its first
    # dispatch clock (fetch, decode, dispatch: clock 3), each further instruction takes
    # 2 clocks, the HALT drains one clock: marks at clocks 3, 5 and 8 (= the step)
    steps.append(StepProgram([wait(*ALL), wait("dma"), halt()],
                             [("w0", 0), ("w1", 1), ("halt", 2)], {}, "clocks"))
    description = {"model": "hand-made", "batch": 4, "steps": len(steps)}
    return DecodeRun(config, "neupims", image, steps, description), wrong


@pytest.mark.xdist_group("decode")
def test_decode_run_on_rtl(tmp_path):
    run, wrong = hand_made_run()
    lines = []
    result = run_on_rtl(run, tmp_path / "neupims.json", progress_every=4, show=lines.append)
    print("\n".join(lines))
    # a step of at least progress_every instructions says when its program load starts
    # and ends (minutes at full scale)
    assert any(line.startswith("step 0: loading ") and "into 1 core(s)" in line
               for line in lines), lines
    assert any(line.startswith("step 0: ") and " instructions loaded in " in line
               and "cycles/s" in line for line in lines), lines
    print(f"decode preset (dual): {result['cycles']:,} cycles, "
          f"{result['sim_cycles_per_s']:,.0f} cycles/s, build {result['build_s']} s")
    assert result["complete"] and len(result["steps"]) == 4
    s0, s1, s2, s3 = result["steps"]
    assert [s["end"] for s in s3["stages"]] == [3, 5, 8] and s3["cycles"] == 8
    assert s3["bit_exact"] and s3["checks"] == 0
    # bit-exact steps; the wrong word is a mismatch, not a pass
    assert s0["bit_exact"] and s1["bit_exact"], (s0["first_mismatches"], s1["first_mismatches"])
    assert not s2["bit_exact"] and s2["mismatches"] == 1 and not result["bit_exact"]
    bad = s2["first_mismatches"][0]
    assert bad["address"] == wrong and bad["bits_differing"] == 1
    assert int(bad["expected"], 16) ^ int(bad["actual"], 16) == 1 << 100
    assert result["mismatches"] == 1 and result["tokens"] == 8
    for step, names in zip(result["steps"], (["A", "B"], ["A", "B", "C"], ["load", "end"],
                                              ["w0", "w1", "halt"])):
        stages = step["stages"]
        assert [s["name"] for s in stages] == names
        ends = [s["end"] for s in stages]
        assert all(x < y for x, y in zip([0] + ends, ends)), ends
        assert sum(s["cycles"] for s in stages) == ends[-1]
        if step["stages"][-1]["index"] == step["instructions"] - 1:     # marked HALT
            assert ends[-1] == step["cycles"]
        else:   # the HALT after the last WAIT completes within a few clocks
            assert 0 < step["cycles"] - ends[-1] <= 8, (ends, step["cycles"])
        line = step["timeline"]
        assert line["start"] and len(line["start"]) == len(line["array"]) == len(line["pim"][0])
        assert line["end"][-1] == step["cycles"]
        for key in ("array", "dma", "gemm", "vector"):
            assert all(0 <= v <= 1 for v in line[key])
            spans = np.diff([line["start"][0]] + line["end"])
            assert abs(float(np.dot(spans, line[key])) - step["counters"][f"{key}_busy"]) <= \
                0.001 * step["cycles"] + 1, key
        assert step["timing_violations"] == 0
        assert step["commands_checked"] > 0 or step is s3
    for i, step in enumerate((s0, s1)):
        assert step["counters"]["macs"] == 4 * 16 * 16
        assert step["counters"]["pim_transactions"] == 3
        assert step["controllers"][i]["PIM_GEMV"] == 1 and step["controllers"][i]["GWRITE"] == 1
        assert step["controllers"][i]["pim_busy_cycles"] > 0
        # occupied: the GWRITE and the row set's G_ACTs too, not only the GEMV
        assert step["controllers"][i]["pim_occupied_cycles"] > \
            step["controllers"][i]["pim_busy_cycles"] + run.config.bus.gwrite_busy
        assert step["controllers"][1 - i]["PIM_GEMV"] == 0
        assert step["controllers"][1 - i]["pim_occupied_cycles"] == 0
        assert max(step["timeline"]["pim"][i]) > 0
        # stage A holds the GEMM and the PIM GEMV: the longest
        assert step["stages"][0]["cycles"] > step["stages"][1]["cycles"]
    # the report on real results
    text = format_table({"neupims": result}, run.description)
    assert "neupims" in text and "NO (1)" in text
    assert set(to_json({"neupims": result}, run.description)["modes"]["neupims"]["stages"]) == \
        {"A", "B", "C", "load", "end", "w0", "w1", "halt"}
    plot_timeline({"neupims": result}, tmp_path / "timeline.png")
    assert (tmp_path / "timeline.png").stat().st_size > 10_000


@pytest.mark.xdist_group("decode")
def test_decode_run_stops_on_npu_error(tmp_path):
    """An NPU error fails the run with its code, pc and instruction; the steps before it
    are in the results file, with the error. A step past its clock limit fails too."""
    config = preset("decode")
    past = config.geometry.capacity_bytes
    steps = [StepProgram([wait("dma"), halt()], [("w", 0)], {}, "fine"),
             StepProgram([wait("dma"), dma_load(past, 0, 1), halt()], [], {}, "bad")]
    run = DecodeRun(config, "neupims", HbmImage(config), steps, {})
    out = tmp_path / "bad.json"
    with pytest.raises(AssertionError, match=r"bad: NPU error HBM_RANGE at pc 1: dma_load"):
        run_on_rtl(run, out)
    partial = json.loads(out.read_text())
    assert not partial["complete"] and not partial["bit_exact"]
    assert [s["label"] for s in partial["steps"]] == ["fine"]
    assert "HBM_RANGE" in partial["error"]
    # a step past its clock limit fails with where it was
    slow = StepProgram([dma_load(0, 0, 2048), wait("dma"), halt()], [], {}, "slow")
    run = DecodeRun(config, "neupims", HbmImage(config), [slow], {})
    with pytest.raises(AssertionError, match=r"slow: the program ran past 300 clocks "
                                             r"\(pc 1\); at pc 1: wait dma"):
        run_on_rtl(run, tmp_path / "slow.json", max_cycles_per_step=300)
