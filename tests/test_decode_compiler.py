"""The decode compiler, golden decode and interpreter (pure Python, fast): every mode on
several small workloads, the golden against a float64 decode, bad input, stage marks."""
import dataclasses

import numpy as np
import pytest

from rtl.config import preset
from rtl.isa.npu import NpuOp, encode
from sim.decode.compiler import _weave, compile_decode, weave, with_cores
from sim.decode.golden import MODES, golden_decode, reference_decode
from sim.decode.interpret import Interpreter
from sim.decode.workload import DecodeError, DecodeWorkload, random_data
from sim.models import ModelError, ModelShape, get_model

#: (kv_lens, steps): batch sizes 2, 4, 6; short, spread and long-ish contexts
WORKLOADS = {
    "b2-short": ((3, 9), 2),
    "b4-spread": ((1, 30, 7, 17), 1),
    "b6-long": ((40, 63, 12, 55, 5, 70), 1),
    "b3-past-accumulator": ((150, 20, 200), 1),
}

#: tiny-gpt with room for several V token chunks (256 tokens each on the ``decode`` preset)
LONG_GPT = ModelShape("long-gpt", 64, 2, 2, ffn=256, d_head=32, max_seq_len=1024)


def _matches_golden(run):
    it = Interpreter(run.config, run.image.words)
    for step in run.steps:
        it.run(step.instructions())
        assert step.checks and it.mismatches(step.checks) == []
    assert it.hazards == []


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", WORKLOADS)
def test_program_matches_golden(mode, name):
    lens, steps = WORKLOADS[name]
    run = compile_decode(DecodeWorkload("tiny-gpt", lens, steps=steps, seed=len(lens)), mode)
    it = Interpreter(run.config, run.image.words)
    for step in run.steps:
        assert step.program[-1].op is NpuOp.HALT
        it.run(step.instructions())
        assert step.checks and it.mismatches(step.checks) == []
    assert it.hazards == []


@pytest.mark.parametrize("mode", MODES)
def test_contexts_longer_than_a_v_chunk(mode):
    """Requests of three, one and two V chunks in one batch."""
    run = compile_decode(DecodeWorkload(LONG_GPT, (300, 40, 520), seed=3), mode)
    assert run.plan.layout.v_chunks(521) == 3
    _matches_golden(run)


@pytest.mark.parametrize("mode", MODES)
def test_a_v_chunk_boundary(mode):
    """L = 256 (one full chunk) in step 0, 257 in step 1: the new token's V opens chunk 1."""
    run = compile_decode(DecodeWorkload(LONG_GPT, (255, 10), steps=2, seed=2), mode)
    _matches_golden(run)
    if mode != "npu-only":
        gwrites = [sum(ins.op is NpuOp.PIM and ins["pim_op"] == 0 for ins in step.program)
                   for step in run.steps]
        assert gwrites[1] - gwrites[0] == LONG_GPT.layers * LONG_GPT.heads   # chunk 1's scores


#: heads of 64 and 128 (several words and bursts per head): one head on the ``decode``
#: preset, and two heads of 64 with a larger scratchpad (the column of each head's bursts)
WIDE_HEADS = {
    "h64": ("tiny-gpt-h64", (150, 9, 31), None),
    "2xh64": (ModelShape("gpt-2xh64", 128, 2, 2, ffn=256, d_head=64), (3, 40, 17), 32768),
    "h128": (ModelShape("gpt-h128", 128, 1, 2, ffn=256, d_head=128), (20, 70), 32768),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", WIDE_HEADS)
def test_heads_wider_than_a_word(mode, name):
    model, lens, words = WIDE_HEADS[name]
    config = preset("decode")
    if words:
        config = config.replace(npu=dataclasses.replace(config.npu, scratchpad_words=words))
    form = "stream" if mode == "npu-only" else "auto"
    run = compile_decode(DecodeWorkload(model, lens, steps=2, seed=5, npu_attention=form), mode,
                         config)
    _matches_golden(run)
    program = run.steps[0].program
    per_word = config.npu.word_bytes // 2          # FP16 per scratchpad word
    dh = run.plan.workload.model.d_head
    hw = dh // per_word
    if mode == "npu-only":       # the logit GEMMs: one per word-wide piece, chained
        sp = run.plan.sp
        queries = [range(sp[f"qcol{i}"], sp[f"qcol{i}"] + dh) for i in (0, 1)]
        gemms = [ins for ins in program
                 if ins.op is NpuOp.GEMM and any(ins["b"] in q for q in queries)]
        assert gemms and all(ins["k"] == per_word and ins["fp32"] for ins in gemms)
        assert sum(ins["acc"] for ins in gemms) == (hw - 1) * len(gemms) // hw
    else:                        # a GEMV per head over d_head / lanes COMPs
        gemvs = [ins for ins in program if ins.op is NpuOp.PIM and ins["pim_op"] == 2]
        head_comps = dh // config.pim.lanes
        assert head_comps in {ins["comps"] for ins in gemvs}


@pytest.mark.parametrize("mode", MODES)
def test_heads_past_one_k_row(mode):
    """Three heads of 128 where a K row holds two (256 FP16): K groups. Head 2's K goes to
    the second K row of each tile (its first columns); PIM modes stage each group's
    queries in a row of their own (GWRITE per group) and open each group's K rows; the
    decode preset with a larger scratchpad, instruction memory and stored window (the
    interpreter only). Bit for bit against the golden, no hazards."""
    three = ModelShape("gpt-3xh128", 384, 3, 2, ffn=128, d_head=128, max_seq_len=256)
    base = preset("decode")
    config = base.replace(stored_rows=1024, npu=dataclasses.replace(
        base.npu, scratchpad_words=1 << 16, instruction_words=1 << 14))
    form = "stream" if mode == "npu-only" else "auto"
    run = compile_decode(DecodeWorkload(three, (5, 40, 17), seed=4, npu_attention=form), mode,
                         config)
    layout = run.plan.layout
    assert (layout.k_groups, layout.heads_per_row) == (2, 2)
    _matches_golden(run)
    program = run.steps[0].instructions()
    k_rows = {pages.k[0][1] for c in run.plan.kv for req in c.requests.values()
              for pages in req.layers}
    if mode == "npu-only":      # no K rows: head 2's K pieces, a load each from its run
        kv = run.plan.npu_kv
        loads = {ins["hbm"] for ins in program if ins.op is NpuOp.DMA_LOAD}
        assert not k_rows and {kv.k(r, layer, 2, j) for r in range(3) for layer in range(2)
                               for j in range(4)} <= loads
    else:
        pims = [ins for ins in program if ins.op is NpuOp.PIM]
        # GWRITEs per request and layer: one per K group (queries), one per head (scores)
        assert sum(ins["pim_op"] == 0 for ins in pims) == 3 * 2 * (2 + 3)
        headers = [ins for ins in pims if ins["pim_op"] == 1 and ins["row"] in k_rows]
        assert headers and all(ins["gemvs"] == 1 for ins in headers)


#: npu-only's ``weights`` form (``sim.decode.npu_kv``) where ``auto`` picks ``stream``:
#: (model, kv_lens, word_bytes): contexts past the accumulator and the array's K tiles,
#: heads of 64 (two words per head), and in wide words two heads of 32 per K^T word
#: (the logits gathered from a head's burst slice) and per V row
WEIGHTS_FORM = {
    "long": (LONG_GPT, (300, 40, 520), 64),
    "h64": ("tiny-gpt-h64", (150, 9, 31), 64),
    "4xh32-w128": (ModelShape("gpt-4xh32", 128, 4, 2, ffn=256, d_head=32), (3, 40, 17), 128),
    "2xh64-w256": (ModelShape("gpt-2xh64", 128, 2, 2, ffn=256, d_head=64), (3, 40, 17), 256),
    # heads narrower than a word of FP32: outputs copied out of their part of a word
    "4xh32-w256": (ModelShape("gpt-4xh32", 128, 4, 2, ffn=256, d_head=32), (3, 40, 17), 256),
}


@pytest.mark.parametrize("name", WEIGHTS_FORM)
def test_npu_weights_form_matches_golden(name):
    """q . K^T per 32-token chunk for a block of k heads (their queries as the GEMM's
    rows) and s . V per V row group, K and V as the array's weights: bit for bit against
    the golden decode in the same form, no hazards, over two steps."""
    model, lens, word_bytes = WEIGHTS_FORM[name]
    config = preset("decode") if word_bytes == 64 else _wide(word_bytes, 32768)
    w = DecodeWorkload(model, lens, steps=2, seed=5, vocab=256, npu_attention="weights")
    run = compile_decode(w, "npu-only", config)
    assert run.plan.npu_kv.form == "weights"
    it = Interpreter(run.config, run.image.words)
    for step in run.steps:
        it.run_step(step)
        assert step.checks and it.step_mismatches(step) == []
    assert it.hazards == []
    sp, dh, k = run.plan.sp, run.plan.workload.model.d_head, word_bytes // 64
    heads, block = run.plan.workload.heads, min(run.plan.workload.heads, k)
    contexts = [n + 1 for n in lens]
    gemms = [ins for ins in run.steps[0].program if ins.op is NpuOp.GEMM]
    logits = [ins for ins in gemms if ins["a"] in (sp["qrow0"], sp["qrow1"])]
    outs = [ins for ins in gemms if sp["srow"] <= ins["a"] < sp["vout"]]
    assert all(ins["m"] == block and ins["k"] == dh and ins["n"] == 32 * block for ins in logits)
    assert len(logits) == w.layers * heads // block * sum(-(-L // 32) for L in contexts)
    assert sum(ins["m"] for ins in outs) == w.layers * heads * len(lens)
    assert all(ins["k"] in contexts and ins["n"] == ins["m"] * dh and ins["fp32"] for ins in outs)


def test_npu_attention_form_is_picked_by_cost_or_named():
    """``auto``: the cheaper form by the compiler's array estimate (``stream`` on the
    decode preset's 8 x 8 array, ``weights`` on the paper's 128 x 128 with 512-byte
    words); a form can be named; anything else is refused naming the field."""
    from sim.decode.compiler import npu_attention_form
    from sim.reproduce import PAPER_VOCAB, paper_config
    tiny = DecodeWorkload("tiny-gpt", (82, 71, 95, 27))
    assert npu_attention_form(tiny, preset("decode")) == "stream"
    paper = DecodeWorkload("gpt3-7b", (299, 120), vocab=PAPER_VOCAB)
    assert npu_attention_form(paper, paper_config()) == "weights"
    named = DecodeWorkload("tiny-gpt", (3,), npu_attention="weights")
    assert npu_attention_form(named, preset("decode")) == "weights"
    with pytest.raises(DecodeError) as error:
        DecodeWorkload("tiny-gpt", (3,), npu_attention="rows")
    assert error.value.field == "npu_attention"


#: four heads of 32: two to a 128-byte word
FOUR_HEADS = ModelShape("gpt-4xh32", 128, 4, 2, ffn=256, d_head=32)

#: wide scratchpad words: (model, kv_lens, word_bytes, cores): two heads of 64 in 128-byte
#: words (2 bursts; one and two cores), a head of 128 in 256-byte words (4 bursts), and
#: heads in part of a word: four heads of 32 in 128-byte words (one and two cores), two
#: of 64 in 256-byte words
WIDE_WORDS = {
    "2xh64-w128": (WIDE_HEADS["2xh64"][0], (3, 40, 17), 128, 1),
    "2xh64-w128-2cores": (WIDE_HEADS["2xh64"][0], (3, 40, 17), 128, 2),
    "h128-w256": (WIDE_HEADS["h128"][0], (20, 70, 300), 256, 1),
    "4xh32-w128": (FOUR_HEADS, (3, 40, 17, 300), 128, 1),
    "4xh32-w128-2cores": (FOUR_HEADS, (3, 40, 17, 300), 128, 2),
    "2xh64-w256": (WIDE_HEADS["2xh64"][0], (3, 40, 17), 256, 1),
}


def _wide(word_bytes: int, words: int = 8192, cores: int = 1):
    base = preset("decode")
    config = base.replace(npu=dataclasses.replace(base.npu, word_bytes=word_bytes,
                                                  scratchpad_words=words))
    return with_cores(config, cores) if cores > 1 else config


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", WIDE_WORDS)
def test_wide_words_match_golden(mode, name):
    """Scratchpad words of k bursts: matrices in rows of whole wide words, HBM transfers
    of k bursts per word, a head's K and query bursts stored from their burst slices,
    K tiles and V bursts loaded one burst per word (``spread``). Bit for bit against the
    golden (unchanged: the same operations), no hazards."""
    model, lens, word_bytes, cores = WIDE_WORDS[name]
    k = word_bytes // 64
    run = compile_decode(DecodeWorkload(model, lens, steps=2, seed=5, vocab=256), mode,
                         _wide(word_bytes, 32768, cores))
    it = Interpreter(run.config, run.image.words)
    for step in run.steps:
        it.run_step(step)
        assert step.checks and it.step_mismatches(step) == []
    assert it.hazards == []
    dmas = [ins for ins in run.steps[0].program if ins.op in (NpuOp.DMA_LOAD, NpuOp.DMA_STORE)]
    wide = [ins for ins in dmas if not ins["spread"] and ins["count"] > 1]
    assert wide and all(ins["count"] % k == 0 for ins in wide)     # whole words
    assert any(ins["spread"] for ins in dmas)                       # K / V bursts
    if mode != "npu-only":      # a head's K bursts from every slice of its words
        stores = [ins for ins in dmas if ins.op is NpuOp.DMA_STORE and ins["count"] == 1]
        assert {ins["slice"] for ins in stores} == set(range(k))
    heads_per_word = word_bytes // 2 // model.d_head
    vectors = [ins for ins in run.steps[0].program if ins.op is NpuOp.VECTOR]
    lanes0 = {ins["imm"] >> 8 & 0xFF for ins in vectors if ins["flags"] & 12
              and ins["imm"] & 0xFF == model.d_head}
    # several heads to a word: their queries and outputs read / written from lane h x d_head
    assert lanes0 == ({h * model.d_head for h in range(heads_per_word)}
                      if heads_per_word > 1 else set())


def test_wide_words_need_whole_rows_and_heads():
    """A head that is neither whole words nor a whole fraction of one (d_head 96 in
    64-FP16 words) is refused, naming the field; so is a width that is not whole words."""
    odd = ModelShape("gpt-h96", 192, 2, 2, ffn=256, d_head=96)
    with pytest.raises(DecodeError) as error:
        compile_decode(DecodeWorkload(odd, (4,), steps=1), "neupims", _wide(128))
    assert error.value.field == "model.d_head" and "128-byte" in str(error.value)
    with pytest.raises(DecodeError) as error:
        compile_decode(DecodeWorkload(WIDE_HEADS["2xh64"][0], (4,), steps=1, vocab=96),
                       "neupims", _wide(128))
    assert error.value.field == "vocab"
    with pytest.raises(DecodeError) as error:
        compile_decode(DecodeWorkload("tiny-gpt", (4,), steps=1), "neupims", _wide(256))
    assert error.value.field == "model.d_model"


def _row(config, hbm: int) -> int:
    return config.address_map.decode(config.geometry, hbm)["row"]


def test_a_gemv_result_fills_burst_slice_0_of_a_wide_word():
    """The interpreter as the RTL (``rtl.isa.npu`` PIM): a GEMV's 64-byte result replaces
    burst slice 0 of its scratchpad word; a 128-byte word keeps its slice 1."""
    from rtl.isa.npu import pim, wait
    base = preset("decode")
    config = base.replace(npu=dataclasses.replace(base.npu, word_bytes=128))
    it = Interpreter(config, {})
    slice1 = 0x1234 << (8 * 64 + 16)
    it.sp[5] = slice1 | 0xBEEF
    it.run([pim("gwrite", channel=0, row=1), pim("header", channel=0, row=2, gemvs=1, comps=1),
            pim("gemv", channel=0, column=0, comps=1, sp=5), wait("pim")])
    assert it.sp[5] == slice1            # zero rows: a zero result in slice 0
    assert it.hazards == []


def test_a_wrong_program_is_caught():
    run = compile_decode(DecodeWorkload("tiny-gpt", (4, 9), steps=1), "neupims")
    program = run.steps[0].instructions()
    pim = [i for i, ins in enumerate(program) if ins.op is NpuOp.PIM and ins["pim_op"] == 2]
    program[pim[0]].args["column"] = program[pim[0]]["column"] + 1   # a GEMV on the wrong head
    it = Interpreter(run.config, run.image.words)
    it.run(program)
    assert it.mismatches(run.steps[0].checks)


def test_unordered_units_are_caught():
    """The interpreter's hazard check: a VECTOR reading words a DMA load may still be
    writing needs a WAIT on the DMA between them; so does a DMA store of words the vector
    unit writes, and a DMA load of HBM that an earlier store of the same DMA writes."""
    from rtl.isa.npu import dma_load, dma_store, halt, vector, wait
    from rtl.npu.vector import VectorOp
    config = preset("decode")
    add = vector(VectorOp.ADD.value, a=0, b=4, d=8, length=16)

    def hazards(*program):
        it = Interpreter(config, {0: 1, 64: 2})
        it.run([*program, halt()])
        return [(h["unit"], h["other"], h["kind"], h["space"]) for h in it.hazards]

    assert hazards(dma_load(0, 4, 1), add) == [("vector", "dma", "read after write",
                                                "scratchpad")]
    assert hazards(dma_load(0, 4, 1), wait("dma"), add) == []
    assert hazards(dma_load(0, 4, 1), wait("gemm"), add)        # the wrong unit
    assert hazards(add, dma_store(128, 8, 1)) == [("dma", "vector", "read after write",
                                                   "scratchpad")]
    assert hazards(dma_store(0, 8, 1), dma_load(0, 12, 1)) == [("dma", "dma",
                                                                "read after write", "HBM")]
    assert hazards(dma_store(0, 8, 1), wait("dma"), dma_load(0, 12, 1)) == []


def test_golden_is_close_to_float64():
    w = DecodeWorkload("tiny-gpt", (5, 12, 3, 20), steps=2)
    data = random_data(w)
    ref = reference_decode(w, data)
    for mode in MODES:
        for step, (x, logits) in zip(golden_decode(w, data, mode, compile_decode.__globals__["mode_config"](mode)), ref):
            assert np.abs(step.hidden.view(np.float32) - x).max() < 0.01 * np.abs(x).max()
            assert np.abs(step.logits.view(np.float32) - logits).max() < 0.01 * np.abs(logits).max()


def test_modes_differ_only_where_built_to():
    w = DecodeWorkload("tiny-gpt", (5, 12, 3, 20, 8), steps=1)
    runs = {mode: compile_decode(w, mode) for mode in MODES}
    assert runs["npu+pim"].config.mode.value == "blocked"
    assert runs["neupims"].config.mode.value == runs["npu-only"].config.mode.value == "dual"
    pims = {m: sum(ins.op is NpuOp.PIM for ins in r.steps[0].program) for m, r in runs.items()}
    assert pims["npu-only"] == 0 and pims["npu+pim"] == pims["neupims"] > 0
    # neupims: sub-batch 1 first; the others keep the request order
    assert runs["npu+pim"].description["row_order"] == list(range(5))
    sb1, sb2 = runs["neupims"].description["sub_batches"]
    assert runs["neupims"].description["row_order"] == sb1 + sb2 and sb1 and sb2


def test_stage_marks():
    w = DecodeWorkload("tiny-gpt", (5, 12, 3, 20), steps=1)
    names = lambda mode: [name for name, _ in compile_decode(w, mode).steps[0].marks]  # noqa: E731
    assert names("neupims") == ["load", "A", "B", "C", "D", "E", "F", "head"]
    assert names("npu+pim") == ["load"] + ["QKV", "MHA", "Proj/FFN"] * 2 + ["head"]
    run = compile_decode(w, "neupims")
    for name, index in run.steps[0].marks:
        ins = run.steps[0].program[index]
        assert ins.op is NpuOp.WAIT and ins["units"] == 15


def test_weave_keeps_each_stream_in_order():
    run = compile_decode(DecodeWorkload("tiny-gpt", (5, 12, 3, 20), steps=1), "neupims")
    from sim.decode.compiler import Builder
    b = Builder(run.plan, 0)
    npu, pim = b.proj_ffn(0, run.plan.sub_batches[0]).ops, b.mha(0, run.plan.sub_batches[1]).ops
    merged = weave(npu, pim, run.config)
    assert sorted(map(id, merged)) == sorted(map(id, npu + pim))
    for stream in (npu, pim):
        positions = [next(i for i, op in enumerate(merged) if op is x) for x in stream]
        assert positions == sorted(positions)
    # woven, the stage is estimated shorter than the two streams one after the other
    _, woven = _weave(npu, pim, run.config, 0)
    _, serial = _weave(npu + pim, [], run.config, 0)
    assert woven < serial


@pytest.mark.parametrize("kwargs, field", [
    ({"model": "tiny-gpt", "kv_lens": ()}, "batch"),
    ({"model": "tiny-gpt", "kv_lens": (3, -1)}, "kv_lens[1]"),
    ({"model": "tiny-gpt", "kv_lens": (3,), "steps": 0}, "steps"),
    ({"model": "tiny-gqa", "kv_lens": (3,)}, "model.kv_heads"),
    ({"model": "tiny-gpt", "kv_lens": (300,)}, "kv_lens"),
    ({"model": ModelShape("gpt-h48", 96, 2, 2, ffn=256, d_head=48), "kv_lens": (3,)},
     "model.d_head"),
])
def test_bad_workloads_name_the_field(kwargs, field):
    with pytest.raises(DecodeError) as error:
        DecodeWorkload(**kwargs)
    assert error.value.field == field


def test_unknown_model():
    with pytest.raises(ModelError, match="unknown model 'gpt-9'"):
        DecodeWorkload("gpt-9", (3,))


def test_limits_of_the_slice():
    with pytest.raises(DecodeError, match="instructions|scratchpad|does not fit"):
        compile_decode(DecodeWorkload("tiny-gpt", tuple([100] * 48)), "neupims")
    longer = ModelShape("longer-gpt", 64, 2, 2, ffn=256, d_head=32, max_seq_len=4096)
    with pytest.raises(DecodeError, match="KV cache does not fit") as error:
        compile_decode(DecodeWorkload(longer, (2000,)), "npu+pim")
    assert error.value.field == "batch"
    with pytest.raises(DecodeError, match="scratchpad") as error:
        compile_decode(DecodeWorkload(longer, (1500,)), "npu-only")
    assert error.value.field == "scratchpad"
    with pytest.raises(DecodeError, match="unknown mode"):
        compile_decode(DecodeWorkload("tiny-gpt", (2,)), "gpu")


# ----------------------------------------------------------------------------- several cores

#: A model whose every GEMM splits into whole FP16 words over four cores (three: uneven).
WIDE_GPT = ModelShape("wide-gpt", 128, 4, 2, ffn=256, d_head=32, max_seq_len=256)
CORE_CASES = {"tiny-gpt x2": ("tiny-gpt", 2, (40, 63, 12, 55, 5, 70), 2),
              "tiny-gpt-h64 x2": ("tiny-gpt-h64", 2, (1, 30, 7), 1),
              "wide-gpt x4": (WIDE_GPT, 4, (5, 40, 17), 1),
              "wide-gpt x3": (WIDE_GPT, 3, (22, 9, 31, 2), 1)}   # shares of 1, 1, 2 words


def _cores_run(case, mode):
    model, cores, lens, steps = CORE_CASES[case]
    return compile_decode(DecodeWorkload(model, lens, steps=steps, seed=len(lens)), mode,
                          with_cores(preset("decode"), cores))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", CORE_CASES)
def test_several_cores_match_golden(case, mode):
    """Every core's programs on the interpreter: every core's hidden states and its share
    of the logits bit for bit (the exchanges interleaved at the SYNCs, as on the RTL)."""
    run = _cores_run(case, mode)
    cores = run.config.npu.arrays
    run.validate()
    it = Interpreter(run.config, run.image.words)
    for step in run.steps:
        assert len(step.core_programs()) == cores
        it.run_step(step)
        assert all(checks for _, checks in step.core_programs())
        assert it.step_mismatches(step) == []
    assert it.hazards == []


@pytest.mark.parametrize("case", ["tiny-gpt x2", "wide-gpt x3"])
def test_several_cores_npu_weights_form(case):
    """npu-only's ``weights`` form with the attention split over cores: bit for bit on
    the interpreter, no hazards."""
    model, cores, lens, steps = CORE_CASES[case]
    w = DecodeWorkload(model, lens, steps=steps, seed=len(lens), npu_attention="weights")
    run = compile_decode(w, "npu-only", with_cores(preset("decode"), cores))
    assert run.plan.npu_kv.form == "weights"
    it = Interpreter(run.config, run.image.words)
    for step in run.steps:
        it.run_step(step)
        assert it.step_mismatches(step) == []
    assert it.hazards == []


@pytest.mark.parametrize("mode", MODES)
def test_cores_share_the_work(mode):
    """Each core runs 1 / cores of every GEMM's columns (the MACs add up to one core's),
    loads its share of the weights, issues PIM commands only to its own channels, stops
    at the same number of SYNCs, and core 0's stage ends are SYNCs."""
    base = preset("decode")      # one core holds all of wide-gpt's weights in 16 Ki words
    base = base.replace(npu=dataclasses.replace(base.npu, scratchpad_words=1 << 14))
    one = compile_decode(DecodeWorkload(WIDE_GPT, (5, 40, 17), seed=3), mode, base)
    run = compile_decode(DecodeWorkload(WIDE_GPT, (5, 40, 17), seed=3), mode,
                         with_cores(base, 4))
    cores, channels = run.config.npu.arrays, run.config.geometry.channels

    def gemms(program):
        return [(i["m"], i["k"], i["n"]) for i in program if i.op is NpuOp.GEMM]

    def loaded(program):
        return sum(i["count"] for i in program if i.op is NpuOp.DMA_LOAD)

    step, solo = run.steps[0], one.steps[0].instructions()
    programs = [p for p, _ in step.core_programs()]
    if mode != "npu-only":      # npu-only: attention GEMMs belong to the request's core
        macs = sum(m * k * n for p in programs for m, k, n in gemms(p))
        assert macs == sum(m * k * n for m, k, n in gemms(solo))
    for core, program in enumerate(programs):
        linear = [g for g in gemms(program) if g[2] > 1]
        assert [n for _, _, n in linear][:1] == [3 * WIDE_GPT.d_model // cores]
        pim = {i["channel"] for i in program if i.op is NpuOp.PIM}
        assert pim <= {c for c in range(channels) if c % cores == core}
        assert sum(i.op is NpuOp.SYNC for i in program) == \
            sum(i.op is NpuOp.SYNC for i in programs[0])
    assert not any(i.op is NpuOp.SYNC for i in solo)
    assert all(programs[0][i].op in (NpuOp.SYNC, NpuOp.HALT) for _, i in step.marks)
    assert loaded(programs[2]) < loaded(solo)       # core 2 has no channel: no KV, 1/4 weights


def test_cores_stream_their_weights_from_the_same_rows():
    """Several cores' weight shares are dealt out in pieces of a row set / cores, so the
    cores' k-th words of a block lie in the same DRAM row of the same bank (different
    columns): streaming at once, they do not thrash each bank between two rows. One
    core: its block right after the LayerNorm parameters."""
    from sim.decode.compiler import CoreBlocks
    run = _cores_run("tiny-gpt x2", "neupims")
    config, g = run.config, run.config.geometry
    amap = config.address_map
    blocks = run.plan.hbm["layers"][0]["core"]
    assert blocks.piece * blocks.cores == g.channels * g.banks * g.bursts_per_row
    for word in (0, 5, blocks.piece - 1, blocks.piece + 3):
        where = [amap.decode(g, blocks.address(core, word)) for core in (0, 1)]
        assert where[0]["row"] == where[1]["row"]
        assert where[0]["column"] != where[1]["column"]
    runs = blocks.runs(1, 3, blocks.piece + 2)
    assert [n for _, _, n in runs] == [blocks.piece - 3, 2]
    one = CoreBlocks(config, 4096, [100])
    assert one.address(0, 7) == 4096 + 7 * g.burst_bytes and one.end == 4096 + 100 * g.burst_bytes


def test_cores_exchange_through_the_hbm():
    """Run each core to its end, one after the other, instead of meeting at the SYNCs:
    core 0 then reads exchange rows the others have not written, and the checks fail."""
    run = _cores_run("tiny-gpt x2", "npu+pim")
    it = Interpreter(run.config, run.image.words)
    step = run.steps[0]
    programs = [p for p, _ in step.core_programs()]
    for core, program in enumerate(programs):
        it._segment([i for i in program if i.op is not NpuOp.SYNC], 0, it.sps[core])
    assert it.step_mismatches(step)


def test_bad_core_counts_name_the_field():
    with pytest.raises(DecodeError) as error:
        compile_decode(DecodeWorkload("tiny-gpt", (3,)), "neupims",
                       with_cores(preset("decode"), 4))
    assert error.value.field == "config.npu.arrays"
    assert "w_o has 64 columns, 2 word(s)" in str(error.value)
    with pytest.raises(DecodeError) as error:
        with_cores(preset("decode"), 0)
    assert error.value.field == "cores"
    config = preset("decode")
    assert with_cores(config, 4).npu.dma_in_flight == config.controller.tags // 4


# ----------------------------------------------------------------------------- tensor / pipeline parallel

#: wide-gpt split over 2 devices by tensor parallelism (2 of its 4 heads, 128 of its 256
#: FFN columns each) and over 2 pipeline stages (1 of its 2 layers each)
TP_GPT = ModelShape("wide-gpt-tp2-pp2", 128, 4, 2, ffn=256, d_head=32, tp=2, pp=2,
                    max_seq_len=256)


def test_a_device_of_a_parallel_model_runs_its_share():
    w = DecodeWorkload(TP_GPT, (5, 40, 17), steps=2)
    assert (w.heads, w.d_attn, w.ffn, w.layers) == (2, 64, 128, 1)
    data = random_data(w)
    assert len(data.layers) == 1
    lw = data.layers[0]
    assert lw.w_qkv.shape == (128, 3 * 64) and lw.w_o.shape == (64, 128)
    assert lw.w_1.shape == (128, 128) and lw.w_2.shape == (128, 128)
    assert data.keys[0][0].shape == (5, 2, 32)
    # the golden of the device's share is still close to float64
    ref = reference_decode(w, data)
    config = compile_decode.__globals__["mode_config"]("neupims")
    for step, (x, _) in zip(golden_decode(w, data, "neupims", config), ref):
        assert np.abs(step.hidden.view(np.float32) - x).max() < 0.01 * np.abs(x).max()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("cores", [1, 2])
def test_parallel_model_matches_golden(mode, cores):
    """One device of a TP 2 / PP 2 model: its heads, FFN columns and layer, bit for bit,
    on one core and split over two."""
    run = compile_decode(DecodeWorkload(TP_GPT, (5, 40, 17, 2), steps=2, seed=4), mode,
                         with_cores(preset("decode"), cores))
    run.validate()
    assert run.description["device"] == {"heads": 2, "layers": 1, "ffn": 128}
    pims = sum(ins.op is NpuOp.PIM for ins in run.steps[0].program)
    assert (pims > 0) == (mode != "npu-only")
    it = Interpreter(run.config, run.image.words)
    for step in run.steps:
        it.run_step(step)
        assert all(checks for _, checks in step.core_programs())
        assert it.step_mismatches(step) == []
    assert it.hazards == []


def test_parallel_model_moves_a_share_of_the_weights():
    """A TP 2 device streams half of each matrix but W_o's and W_2's output columns
    (d_model) whole; a PP 2 device half of the layers."""
    tiny_tp = dataclasses.replace(get_model("tiny-gpt"), name="tiny-gpt-tp2-pp2", tp=2, pp=2)
    whole = compile_decode(DecodeWorkload("tiny-gpt", (5, 9)), "npu+pim")
    share = compile_decode(DecodeWorkload(tiny_tp, (5, 9)), "npu+pim")
    gemms = lambda run: [(i["m"], i["k"], i["n"]) for i in run.steps[0].instructions()  # noqa: E731
                         if i.op is NpuOp.GEMM]
    assert gemms(whole)[:4] == [(2, 64, 192), (2, 64, 64), (2, 64, 256), (2, 256, 64)]
    assert gemms(share)[:4] == [(2, 64, 96), (2, 32, 64), (2, 64, 128), (2, 128, 64)]
    assert len(gemms(whole)) == 2 * 4 + 1 and len(gemms(share)) == 4 + 1


def test_parallel_model_limits_name_the_field():
    odd_ffn = ModelShape("gpt-ffn-tp", 128, 4, 2, ffn=192, d_head=32, tp=4, max_seq_len=256)
    with pytest.raises(DecodeError, match="ffn / tp") as error:
        DecodeWorkload(odd_ffn, (3,))
    assert error.value.field == "model"


@pytest.mark.parametrize("mode", MODES)
def test_v_append_in_groups_of_requests_matches_golden(mode, monkeypatch):
    """A V read-modify-write buffer smaller than the batch: the append goes through it a
    few requests at a time (as the paper's shapes at batch 512 need), results unchanged."""
    import sim.decode.compiler as compiler
    workload = DecodeWorkload("tiny-gpt", (40, 63, 12, 55, 5), seed=5)
    whole = compile_decode(workload, mode)
    monkeypatch.setattr(compiler, "VRMW_WORDS", 2 * 64)       # two requests of 2 x 32
    assert compiler.vrmw_rows(2, 32) == 2
    grouped = compile_decode(workload, mode)
    assert grouped.plan.sp["end"] < whole.plan.sp["end"]
    assert len(grouped.steps[0].program) > len(whole.steps[0].program)
    _matches_golden(grouped)


def _overlapping(config):
    return config.replace(npu=dataclasses.replace(config.npu, dma_overlap=True))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("cores", [1, 2])
def test_kv_append_by_channel_turns_matches_golden(mode, cores, monkeypatch):
    """With ``NpuConfig.dma_overlap`` the append's chunk loads and stores go in turns over
    the requests' channels (a V read-modify-write buffer of two requests, so in several
    groups): bit for bit, no hazards, the same instructions (in another order where a core
    has requests in both channels; npu-only's runs span every channel, its order stays)."""
    import sim.decode.compiler as compiler
    monkeypatch.setattr(compiler, "VRMW_WORDS", 2 * 64)
    workload = DecodeWorkload("tiny-gpt", (40, 63, 12, 55, 5), steps=2, seed=5)
    base = with_cores(preset("decode"), cores)
    plain, turns = (compile_decode(workload, mode, config) for config in (base, _overlapping(base)))
    it = Interpreter(turns.config, turns.image.words)
    for step in turns.steps:
        it.run_step(step)
        assert it.step_mismatches(step) == []
    assert it.hazards == []
    changed = False
    for a, b in zip(plain.steps, turns.steps):
        for (pa, _), (pb, _) in zip(a.core_programs(), b.core_programs()):
            assert sorted(map(encode, pa)) == sorted(map(encode, pb))
            changed |= pa != pb
    if mode == "npu-only":     # its KV runs span both channels: nothing to turn over
        assert not changed
    else:
        assert changed or cores == 2, "one core's requests in two channels: loads reordered"
    channels = [plain.plan.channel_of[plain.plan.row_order[row]] for row in range(5)]
    assert len(set(channels)) == 2, "the batch's requests lie in both channels"


#: a timing-only compile without values: one and two cores, one-burst and 128-byte words,
#: several steps, an empty context and a split V append
NO_VALUES = {"1 core": ("tiny-gpt", (0, 30, 7), 2, 1, 64),
             "2 cores": ("tiny-gpt-h64", (150, 9, 31), 1, 2, 64),
             "wide": (ModelShape("gpt-4xh32", 128, 4, 2, ffn=256, d_head=32), (3, 40, 17), 1, 1,
                      128)}


def _plain(value):
    """``value`` with every object (a CoreBlocks) as its attributes, to compare."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return vars(value) if hasattr(value, "__dict__") else value


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", NO_VALUES)
def test_compile_without_values_gives_the_same_programs(mode, name):
    """``compile_decode(..., values=False)`` (the full-scale points): the same programs,
    stage marks, check addresses and HBM addresses as the compile with data, and nothing
    stored: an empty image, zero checks, no golden."""
    model, lens, steps, cores, word_bytes = NO_VALUES[name]
    base = preset("decode").replace(datapath=False)
    base = base.replace(npu=dataclasses.replace(base.npu, word_bytes=word_bytes))
    config = with_cores(base, cores) if cores > 1 else base
    workload = DecodeWorkload(model, lens, steps=steps, seed=2)
    full = compile_decode(workload, mode, config)
    lean = compile_decode(workload, mode, config, values=False)
    assert lean.golden is None and not lean.image.words and full.image.words
    assert _plain(lean.plan.hbm) == _plain(full.plan.hbm)
    assert lean.description == full.description
    for a, b in zip(full.steps, lean.steps, strict=True):
        assert a.marks == b.marks and a.tokens == b.tokens
        for x, y in zip([a] + a.cores, [b] + b.cores, strict=True):
            assert [encode(i) for i in x.instructions()] == [encode(i) for i in y.instructions()]
            assert sorted(x.checks) == sorted(y.checks) and not any(y.checks.values())


def test_compile_without_values_needs_a_timing_only_device():
    with pytest.raises(DecodeError, match="values"):
        compile_decode(DecodeWorkload("tiny-gpt", (3, 9)), "neupims", preset("decode"),
                       values=False)


def _gemms(run):
    return [ins for step in run.steps for ins in step.instructions() if ins.op is NpuOp.GEMM]


@pytest.mark.parametrize("mode", MODES)
def test_a_batch_past_the_accumulator_goes_in_pieces(mode):
    """A GEMM whose K spans several array tiles keeps its partial sums in the accumulator:
    its rows go in pieces of ``accumulator_rows`` (more is the RTL's BAD_SHAPE), and the
    pieces compute the same decode."""
    workload = DecodeWorkload("tiny-gpt", (3, 9, 1, 30, 7, 17, 12, 5, 2, 8, 4), seed=4)
    whole = preset("decode")
    config = whole.replace(npu=dataclasses.replace(whole.npu, accumulator_rows=4))
    run = compile_decode(workload, mode, config)
    H = config.npu.array_rows

    def chained(run):
        return [(ins["k"], ins["n"], ins["m"]) for ins in _gemms(run) if ins["k"] > H]
    pieces, gemms = chained(run), chained(compile_decode(workload, mode, whole))
    assert max(m for _, _, m in pieces) <= 4 < max(m for _, _, m in gemms)
    assert len(pieces) > len(gemms)
    assert sum(m for _, _, m in pieces) == sum(m for _, _, m in gemms)   # every row once
    _matches_golden(run)


def test_a_program_the_core_would_stop_on_is_refused_at_compile_time(monkeypatch):
    """Without the pieces above, the compiler's output would stop the RTL with
    BAD_SHAPE after a long run; the sequencer's checks (``rtl.npu.checks``) refuse it at
    compile time, naming the core, the instruction and why."""
    from sim.decode import compiler

    def unsplit(self, a, b, c, m, k, n, a_pitch, b_pitch, c_pitch, fp32=False, acc=False):
        self.ops.append(compiler.Op(compiler.gemm(a, b, c, m, k, n, a_pitch, b_pitch, c_pitch,
                                                  fp32, acc), "gemm", self.costs.gemm(m, k, n)))
    monkeypatch.setattr(compiler.Stream, "gemm", unsplit)
    whole = preset("decode")
    config = whole.replace(npu=dataclasses.replace(whole.npu, accumulator_rows=4))
    workload = DecodeWorkload("tiny-gpt", (3, 9, 1, 30, 7, 17), seed=4)
    with pytest.raises(DecodeError) as error:
        compile_decode(workload, "npu+pim", config)
    assert error.value.field == "program"
    message = str(error.value)
    assert "core 0: instruction" in message and "BAD_SHAPE" in message
    assert "4-row accumulator" in message and "gemm" in message
    compile_decode(workload, "npu+pim", whole)          # fits the full accumulator


def test_the_papers_batch_256_fits_the_accumulator():
    """GPT3-7B at batch 256 on the paper's device in npu+pim (no sub-batches: 256 rows
    per GEMM, K = d = 4,096 over 32 tiles): every K-chained GEMM within 128 rows."""
    from sim.reproduce import GRIDS, _workload, paper_config
    workload, _ = _workload("gpt3-7b", 256, "sharegpt-like", GRIDS["paper"])
    run = compile_decode(workload, "npu+pim", paper_config(), values=False)
    npu = run.config.npu
    chained = [ins for ins in _gemms(run) if ins["k"] > npu.array_rows]   # core 0's
    assert all(ins["m"] <= npu.accumulator_rows for ins in chained)
    by_weights = {}
    for ins in chained:                     # each weight matrix: all 256 rows, in 2 pieces
        by_weights.setdefault(ins["b"], []).append(ins["m"])
    assert len(by_weights) >= 8 and all(rows == [128, 128] for rows in by_weights.values())
