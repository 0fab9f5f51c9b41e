"""KV-cache layout (NEUPIMS.md 4): token/bank mapping, V transposed, page allocation and
capacity, appended tokens, and the PIM work of attention against numpy and the golden."""
from math import ceil

import numpy as np
import pytest

from rtl.config import preset
from sim.golden.fp32 import fp16_to_fp32
from sim.kv_layout import (STAGING_ROW, CapacityError, ChannelAllocator, ChannelImage,
                           ChannelKV, Gemv, GWrite, Header, KVLayout, LayoutError, MemWrite,
                           ProgramError, attend_program, collect_attention, collect_logits,
                           execute, golden_attention, golden_logits, logit_program,
                           npu_chunk_sum, pim_work, token_writes)
from sim.models import ModelShape, get_model


def _fp16(rng, shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float16).view(np.uint16)


def _f64(bits):
    return np.asarray(bits, dtype=np.uint16).view(np.float16).astype(np.float64)


class Setup:
    """One request with ``tokens`` cached tokens, written as a prompt of tokens - 1 plus
    one appended token, on a fresh channel image."""

    def __init__(self, config, model, tokens, seed=0, rows=None):
        rng = np.random.default_rng(seed)
        self.layout = layout = KVLayout(preset(config), get_model(model))
        self.kv = ChannelKV(layout, rows=rows, layers=1)
        self.pages = self.kv.add(7, tokens).layers[0]
        shape = (tokens, layout.kv_heads, layout.d_head)
        self.keys, self.values = _fp16(rng, shape), _fp16(rng, shape)
        self.query = _fp16(rng, (layout.heads, layout.d_head))
        self.image = ChannelImage(layout.config)
        self.tokens = tokens
        for w in token_writes(layout, self.pages, self.keys[:-1], self.values[:-1], 0):
            self.image.write(w)
        self.appended = token_writes(layout, self.pages, self.keys, self.values, tokens - 1)
        for w in self.appended:
            self.image.write(w)

    def kv_head_of(self):
        return np.arange(self.layout.heads) // self.layout.group


CASES = [("tiny", "tiny-gpt", 37), ("tiny", "tiny-gqa", 150), ("small", "small-gpt", 300),
         ("channel", "tiny-gpt", 600), ("tiny", "small-gpt", 5)]


@pytest.mark.parametrize("config, model, tokens", CASES)
def test_k_token_per_bank_and_v_transposed(config, model, tokens):
    s = Setup(config, model, tokens)
    lay, B, E = s.layout, s.layout.banks, s.layout.row_elements
    for t in range(tokens):
        for g in range(lay.kv_heads):
            group, slot = divmod(g, lay.heads_per_row)
            row = s.image.row(s.pages.k[t // B][group])
            assert np.array_equal(row[t % B, slot * lay.d_head:(slot + 1) * lay.d_head],
                                  s.keys[t, g])
    for g in range(lay.kv_heads):
        for j in range(lay.d_head):
            for chunk in range(lay.v_chunks(tokens)):
                row = s.image.row(s.pages.v[chunk][g][j // B])[j % B]
                span = s.values[chunk * E:(chunk + 1) * E, g, j]
                assert np.array_equal(row[:len(span)], span)


def test_paper_mapping_on_the_channel_preset():
    lay = KVLayout(preset("channel"), get_model("gpt3-7b"))
    assert (lay.banks, lay.row_elements, lay.heads_per_row, lay.head_comps) == (32, 512, 4, 8)
    assert (lay.k_groups, lay.v_tiles) == (2, 4)         # 8 heads per device: 2 rows per token
    assert lay.rows_per_layer(1024) == 32 * 2 + 2 * 8 * 4
    work = pim_work(lay, 1024)
    assert work.gemvs == ((8, 8 * 32), (32, 8 * 2 * 4)) and work.gwrites == 2 + 8 * 2


def test_appending_a_token_writes_its_k_row_and_one_v_burst_per_dimension():
    s = Setup("tiny", "tiny-gpt", 70)                    # token 69: K tile 17, V chunk 1
    lay, t = s.layout, 69
    per = lay.burst_elements
    coords = {(w.rank, w.bankgroup, w.bank) for w in s.appended[:2]}
    assert coords == {tuple(lay.bank_coords(t % lay.banks).values())}
    k_writes = [w for w in s.appended if w.row == s.pages.k[t // lay.banks][0]]
    assert len(k_writes) == ceil(lay.kv_heads * lay.d_head / per)
    v_writes = s.appended[len(k_writes):]
    assert len(v_writes) == lay.kv_heads * lay.d_head
    assert {w.column for w in v_writes} == {(t % lay.row_elements) // per}
    assert {w.row for w in v_writes} == {r for head in s.pages.v[1] for r in head}
    # the burst holds tokens 64..69 of the dimension, zeros after
    w = v_writes[0]
    assert list(w.elements[:6]) == list(s.values[64:70, 0, 0])
    assert set(w.elements[6:]) == {0}
    assert w.data & 0xFFFF == w.elements[0] and w.fields()["write"] == 1


def test_allocator_and_capacity():
    alloc = ChannelAllocator(rows=6, reserved=1, channel=3)
    assert alloc.allocate(2) == [1, 2] and alloc.free_rows == 3
    with pytest.raises(CapacityError, match="channel 3: needs 4 free row set"):
        alloc.allocate(4)
    assert alloc.free_rows == 3                          # nothing taken on failure
    alloc.release([2])
    assert alloc.allocate(1) == [2]
    with pytest.raises(ValueError, match="not a page"):
        alloc.release([0])

    lay = KVLayout(preset("tiny"), get_model("tiny-gpt"))
    kv = ChannelKV(lay, rows=64)                         # 63 pages; 2 layers per request
    assert kv.rows_needed(20) == 2 * (5 + 16)
    assert kv.admit(1, 20) and not kv.admit(2, 20)
    assert (kv.rejected, kv.rejected_ids) == (1, [2])
    with pytest.raises(CapacityError, match="request 3"):
        kv.add(3, 20)
    kv.reserve(1, 24)                                    # one more K tile per layer
    assert kv.allocator.used_rows == 2 * (6 + 16)
    with pytest.raises(CapacityError):
        kv.reserve(1, 65)                                # a second V chunk does not fit
    kv.remove(1)
    assert kv.allocator.used_rows == 0 and kv.admit(2, 20)
    with pytest.raises(ValueError, match="already here"):
        kv.admit(2, 1)
    assert STAGING_ROW not in [r for p in kv.requests[2].layers for r in p.rows()]


def test_layout_rejects_unfit_models():
    tiny = preset("tiny")
    with pytest.raises(LayoutError, match="ModelShape.d_head.*lanes"):
        KVLayout(preset("channel"), ModelShape("m", 32, 4, 2, 128, d_head=8))
    with pytest.raises(LayoutError, match="exceeds a row"):
        KVLayout(tiny, ModelShape("m", 256, 2, 2, 512, d_head=128))


@pytest.mark.parametrize("config, model, tokens", CASES)
def test_pim_logits_match_numpy_and_the_golden(config, model, tokens):
    s = Setup(config, model, tokens, seed=1)
    program = logit_program(s.layout, s.pages, tokens, s.query)
    logits = collect_logits(s.layout, execute(s.image, program), tokens)
    golden = golden_logits(s.layout, s.keys, s.query)
    assert np.array_equal(logits, golden)                # bit for bit
    reference = np.einsum("thd,hd->ht", _f64(s.keys)[:, s.kv_head_of()], _f64(s.query))
    assert np.allclose(_f64(logits), reference, rtol=2e-3, atol=2e-3 * np.sqrt(s.layout.d_head))
    assert sum(isinstance(t, GWrite) for t in program) == s.layout.k_groups * s.layout.group
    assert sum(isinstance(t, Gemv) for t in program) == s.layout.heads * s.layout.k_tiles(tokens)
    assert all(t.comps == s.layout.head_comps for t in program if isinstance(t, Gemv))


@pytest.mark.parametrize("config, model, tokens", CASES)
def test_pim_attention_matches_numpy_and_the_golden(config, model, tokens):
    s = Setup(config, model, tokens, seed=2)
    logits = _f64(golden_logits(s.layout, s.keys, s.query)) / np.sqrt(s.layout.d_head)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    scores = (probs / probs.sum(axis=1, keepdims=True)).astype(np.float16).view(np.uint16)
    program = attend_program(s.layout, s.pages, tokens, scores)
    out = collect_attention(s.layout, execute(s.image, program), tokens)
    acc32, golden = golden_attention(s.layout, s.values, scores)
    assert np.array_equal(out, golden)
    reference = np.einsum("ht,thd->hd", _f64(scores), _f64(s.values)[:, s.kv_head_of()])
    assert np.allclose(_f64(out), reference, rtol=5e-3, atol=2e-3)
    assert np.array_equal(acc32.view(np.float32).astype(np.float16).view(np.uint16), golden)


@pytest.mark.parametrize("config, model, tokens", CASES)
def test_pim_work_counts_match_the_programs(config, model, tokens):
    s = Setup(config, model, tokens)
    lay = s.layout
    scores = np.zeros((lay.heads, tokens), dtype=np.uint16)
    program = (logit_program(lay, s.pages, tokens, s.query)
               + attend_program(lay, s.pages, tokens, scores))
    work = pim_work(lay, tokens)
    assert work.writes == sum(isinstance(t, MemWrite) for t in program)
    assert work.gwrites == sum(isinstance(t, GWrite) for t in program)
    assert work.headers == sum(isinstance(t, Header) for t in program)
    counts = {}
    for t in program:
        if isinstance(t, Gemv):
            counts[t.comps] = counts.get(t.comps, 0) + 1
    assert dict(work.gemvs) == counts
    staging = [t for t in program if isinstance(t, (MemWrite, GWrite)) and t.row == STAGING_ROW]
    assert len(staging) == work.writes + work.gwrites    # query and scores only in row 0


def test_npu_chunk_sum_order():
    halves = np.array([[0x3C00], [0x1400]], dtype=np.uint16)   # 1.0 + 2^-10 (exact in FP32)
    acc32, acc16 = npu_chunk_sum(halves)
    assert acc32[0] == np.float32(1 + 2 ** -10).view(np.uint32)
    assert acc16[0] == np.float16(1 + 2 ** -10).view(np.uint16)
    negzero = npu_chunk_sum(np.array([[0x8000]], dtype=np.uint16))[0]
    assert negzero[0] == 0                                   # +0.0 + -0.0 = +0.0
    assert fp16_to_fp32(np.uint16(0x3C00)) == np.float32(1).view(np.uint32)


def test_execute_checks_the_header_protocol():
    image = ChannelImage(preset("tiny"))
    with pytest.raises(ProgramError, match="transaction 0 .*no header"):
        execute(image, [Gemv(0, 2, "logit", 0, 0)])
    with pytest.raises(ProgramError, match="transaction 2 .*COMPs"):
        execute(image, [Header(1, 2, 4), Gemv(0, 2, "logit", 0, 0), Gemv(0, 3, "logit", 0, 0)])
    with pytest.raises(ProgramError, match="outside the row"):
        execute(image, [Header(1, 1, 4), Gemv(14, 4, "logit", 0, 0)])
    with pytest.raises(ProgramError, match="missing"):
        execute(image, [Header(1, 2, 4), Gemv(0, 2, "logit", 0, 0)])
    with pytest.raises(ProgramError, match="still to come"):
        execute(image, [Header(1, 2, 4), GWrite(0, 0, 0, 0)])


def test_program_inputs_are_checked():
    s = Setup("tiny", "tiny-gpt", 10)
    with pytest.raises(ValueError, match="query must be"):
        logit_program(s.layout, s.pages, 10, s.query[:1])
    with pytest.raises(TypeError, match="uint16"):
        logit_program(s.layout, s.pages, 10, s.query.astype(np.float32))
    with pytest.raises(ValueError, match="reserve them first"):
        token_writes(s.layout, s.pages, np.zeros((40, 2, 32), np.uint16),
                     np.zeros((40, 2, 32), np.uint16), 39)
