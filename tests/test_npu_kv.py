"""The npu-only KV cache (sim.decode.npu_kv): runs of bursts that span every channel."""
import numpy as np
import pytest

from rtl.config import preset
from rtl.isa.npu import NpuOp
from sim.decode.compiler import compile_decode
from sim.decode.npu_kv import NpuKV, NpuKVStream
from sim.decode.workload import DecodeError, DecodeWorkload
from sim.npu_programs import unpack_word
from sim.reproduce import PAPER_VOCAB, paper_config


def test_runs_follow_one_another_and_hold_every_token():
    kv = NpuKV(heads=2, d_head=64, base=4096)
    kv.add(0, 0, 40)                    # 64 slots
    kv.add(1, 0, 1)                     # 32 slots
    assert kv.slots(0, 0) == 64 and kv.slots(1, 0) == 32
    assert (kv.v_heads, kv.v_groups, kv.v_words, kv.v_row) == (1, 2, 2, 2)
    # per head 2 K chunks of 64 bursts (dimensions), then per head a V row of 2 bursts per slot
    assert kv.k(0, 0, 1) == 4096 + 2 * 64 * 64
    assert kv.k(0, 0, 0, 1, 5) == 4096 + (64 + 5) * 64
    assert kv.v(0, 0, 1, 1, 3) == 4096 + (2 * 2 * 64 + (64 + 3) * 2 + 1) * 64
    assert kv.k(1, 0, 0) == 4096 + 2 * 2 * 2 * 64 * 64
    assert kv.end == kv.k(1, 0, 0) + 2 * 2 * 2 * 32 * 64
    with pytest.raises(ValueError, match="placed already"):
        kv.add(1, 0, 3)
    with pytest.raises(ValueError, match="past the 32 slots"):
        kv.k(1, 0, 0, 1)
    with pytest.raises(ValueError, match="not a multiple of a burst's 32 FP16"):
        NpuKV(heads=1, d_head=48)


def test_v_rows_hold_several_heads_in_a_wide_word():
    """8 bursts per scratchpad word, heads of 4 bursts: two heads side by side per V row,
    three heads in two groups (the last row half used)."""
    kv = NpuKV(heads=3, d_head=128, word_bursts=8)
    assert (kv.v_heads, kv.v_groups, kv.v_words, kv.v_row) == (2, 2, 1, 8)
    kv.add(0, 0, 40)                    # 64 slots
    v0 = kv.v_group(0, 0, 0)
    assert v0 == 3 * 64 * 4 * 64        # after the three heads' K
    assert kv.v(0, 0, 1, 2, 5) == v0 + (5 * 8 + 4 + 2) * 64
    assert kv.v(0, 0, 2, 0, 0) == kv.v_group(0, 0, 1) == v0 + 64 * 8 * 64
    assert kv.end == v0 + 2 * 64 * 8 * 64


def test_writes_place_k_transposed_and_v_by_token():
    rng = np.random.default_rng(1)
    kv = NpuKV(heads=2, d_head=64)
    kv.add(3, 1, 40)
    keys = rng.integers(0, 1 << 15, (35, 2, 64), dtype=np.uint16)
    values = rng.integers(0, 1 << 15, (35, 2, 64), dtype=np.uint16)
    words = kv.writes(3, 1, keys, values)
    assert len(words) == 2 * (2 * 64 + 2 * 35)         # per head: K chunks x d_head, V bursts
    v = unpack_word(words[kv.v(3, 1, 1, 1, 34)], np.uint16)
    assert (v == values[34, 1, 32:64]).all()
    k = unpack_word(words[kv.k(3, 1, 0, 1, 5)], np.uint16)
    assert (k[:3] == keys[32:35, 0, 5]).all() and not k[3:].any()
    with pytest.raises(ValueError, match="tokens x 2 heads x 64"):
        kv.writes(3, 1, keys[:, :1], values[:, :1])
    with pytest.raises(ValueError, match="do not fit"):
        kv.writes(3, 1, np.zeros((65, 2, 64), np.uint16), np.zeros((65, 2, 64), np.uint16))


def test_stream_form_runs_hold_k_by_piece_and_v_by_chunk():
    """The ``stream`` form (K and V^T streamed through the array)."""
    kv = NpuKVStream(heads=2, d_head=64, base=4096)
    kv.add(0, 0, 40)                    # 64 slots
    kv.add(1, 0, 1)                     # 32 slots
    assert kv.slots(0, 0) == 64 and kv.slots(1, 0) == 32
    # per head: 2 K pieces and 2 V chunks of 64 bursts (K) and 2 x 64 (V)
    assert kv.k(0, 0, 1, 0) == 4096 + 2 * 2 * 64 * 64
    assert kv.v(0, 0, 0, 1, 3) == 4096 + (2 * 64 + 64 + 3) * 64
    assert kv.k(1, 0, 0, 0) == 4096 + 2 * 2 * 2 * 64 * 64
    assert kv.end == kv.k(1, 0, 0, 0) + 2 * 2 * 2 * 32 * 64
    with pytest.raises(ValueError, match="placed already"):
        kv.add(1, 0, 3)
    with pytest.raises(ValueError, match="not a multiple of a burst's 32 FP16"):
        NpuKVStream(heads=1, d_head=48)


def test_stream_form_writes_place_k_by_piece_and_v_transposed():
    rng = np.random.default_rng(1)
    kv = NpuKVStream(heads=2, d_head=64)
    kv.add(3, 1, 40)
    keys = rng.integers(0, 1 << 15, (35, 2, 64), dtype=np.uint16)
    values = rng.integers(0, 1 << 15, (35, 2, 64), dtype=np.uint16)
    words = kv.writes(3, 1, keys, values)
    assert len(words) == 2 * (2 * 35 + 2 * 64)         # per head: K bursts, V chunks x d_head
    k = unpack_word(words[kv.k(3, 1, 1, 1, 34)], np.uint16)
    assert (k == keys[34, 1, 32:64]).all()
    v = unpack_word(words[kv.v(3, 1, 0, 1, 5)], np.uint16)
    assert (v[:3] == values[32:35, 0, 5]).all() and not v[3:].any()
    with pytest.raises(ValueError, match="tokens x 2 heads x 64"):
        kv.writes(3, 1, keys[:, :1], values[:, :1])
    with pytest.raises(ValueError, match="do not fit"):
        kv.writes(3, 1, np.zeros((65, 2, 64), np.uint16), np.zeros((65, 2, 64), np.uint16))


def test_npu_only_attention_loads_stream_from_many_channels():
    """On the paper's configuration (32 banks, 8 bursts per scratchpad word) a head's K
    (300 tokens: 10 chunks of 128 dimensions) is one DMA over 40 channel runs, and a
    request's V for its 8 heads (4 rows of two heads) one over 300 x 8 x 4 bursts; a load
    of the PIM layout touches one channel."""
    config = paper_config()
    g, amap = config.geometry, config.address_map
    workload = DecodeWorkload("gpt3-7b", (299, 120), steps=1, seed=0, vocab=PAPER_VOCAB)
    run = compile_decode(workload, "npu-only", config, values=False)
    kv = run.plan.npu_kv
    loads = {ins["hbm"]: (ins["count"], ins["slice"], ins["spread"])
             for ins in run.steps[0].instructions() if ins.op is NpuOp.DMA_LOAD}
    slots = kv.slots(0, 0)
    wants = [(kv.k(0, 0, h), (10 * 128, h, 1)) for h in range(8)]
    wants.append((kv.v_group(0, 0, 0), ((3 * slots + 300) * 8, 0, 0)))
    for address, want in wants:
        assert loads[address] == want
        count = want[0]
        channels = {amap.decode(g, address + i * g.burst_bytes)["channel"] for i in range(count)}
        assert len(channels) == g.channels


def test_a_cache_past_the_stored_rows_is_refused_naming_the_batch():
    """tiny-gpt's weights take 27 of 32 stored rows: 8 requests of 90 tokens do not fit
    the 5 rows below them."""
    config = preset("decode").replace(stored_rows=32)
    with pytest.raises(DecodeError, match="KV cache does not fit") as error:
        compile_decode(DecodeWorkload("tiny-gpt", (90,) * 8), "npu-only", config)
    assert error.value.field == "batch" and "rows below 5 of 32" in str(error.value)
    compile_decode(DecodeWorkload("tiny-gpt", (9,)), "npu-only", config)     # fits
