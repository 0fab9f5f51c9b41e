"""Workload loaders on the real files, bad rows named, length generators, limits counted,
batch snapshots."""

import numpy as np
import pytest

from rtl.config import preset
from sim.kv_layout import ChannelCapacity, KVLayout
from sim.models import get_model
from sim.workloads import (DEFAULT_ROOT, RequestSpec, WorkloadError, apply_limits,
                           clip_request, decode_progress, generate_requests, load_azure,
                           load_mooncake, load_sharegpt, load_workload, snapshot)

pytestmark = pytest.mark.skipif(not DEFAULT_ROOT.is_dir(),
                                reason=f"workload folder {DEFAULT_ROOT} not present")


@pytest.fixture(scope="module")
def real():
    return {name: load_workload(name) for name in ("azure-conv", "azure-code", "sharegpt",
                                                   "mooncake")}


def test_default_root_is_the_shared_folder():
    assert DEFAULT_ROOT.is_dir() and (DEFAULT_ROOT / "azure_llm_2023_conv.csv").is_file()
    assert DEFAULT_ROOT.name == "workloads" and DEFAULT_ROOT.parent.name == "shared"


@pytest.mark.parametrize("name, rows", [("azure-conv", 19366), ("azure-code", 8819),
                                        ("sharegpt", 30731), ("mooncake", 12031)])
def test_real_files_load_every_row(real, name, rows):
    requests = real[name]
    assert len(requests) == rows
    assert [r.id for r in requests] == list(range(rows))
    assert all(r.prompt_tokens >= 1 and r.output_tokens >= 0 for r in requests)
    assert min(r.arrival_s for r in requests) == 0.0


def test_azure_rows_and_exact_timestamps(real):
    first, second = real["azure-conv"][:2]
    assert (first.prompt_tokens, first.output_tokens, first.source_row) == (374, 44, 2)
    # 18:15:50.9951690 - 18:15:46.6805900, from 7 fractional digits
    assert second.arrival_s == pytest.approx(4.314579, abs=1e-9)
    assert 3400 < real["azure-conv"][-1].arrival_s < 3700           # about an hour
    assert real["azure-code"][0].prompt_tokens == 4808


def test_sharegpt_and_mooncake_rows(real):
    share = real["sharegpt"]
    assert (share[0].prompt_tokens, share[0].output_tokens, share[0].arrival_s) == (74, 918, 0.0)
    moon = real["mooncake"]
    assert (moon[0].prompt_tokens, moon[0].output_tokens, moon[0].source_row) == (6758, 500, 1)
    assert moon[-1].arrival_s == pytest.approx(3536.999)
    timed = load_sharegpt(DEFAULT_ROOT / "sharegpt_8k_lengths.csv", arrival_rate=10.0, seed=3)
    gaps = np.diff([r.arrival_s for r in timed])
    assert (gaps >= 0).all() and np.mean(gaps) == pytest.approx(0.1, rel=0.05)


AZURE_HEAD = "TIMESTAMP,ContextTokens,GeneratedTokens\n"
GOOD_AZURE = "2023-11-16 18:15:46.6805900,374,44\n"


@pytest.mark.parametrize("loader, text, line, reason", [
    (load_azure, AZURE_HEAD + GOOD_AZURE + "2023-11-16 18:15:47.1,12\n", 3, "expected 3 fields"),
    (load_azure, AZURE_HEAD + GOOD_AZURE + GOOD_AZURE + "2023-11-16 18:15:47.1,x,3\n", 4,
     "ContextTokens 'x'"),
    (load_azure, AZURE_HEAD + "2023-11-16 18:15:47.12345678,5,3\n", 2, "timestamp"),
    (load_azure, AZURE_HEAD + "2023-13-16 18:15:47.1,5,3\n", 2, "timestamp"),
    (load_azure, AZURE_HEAD + "2023-11-16 18:15:47.1,-5,3\n", 2, "non-negative"),
    (load_azure, AZURE_HEAD + "2023-11-16 18:15:47.1,0,3\n", 2, "at least one prompt token"),
    (load_azure, "TIME,Context,Generated\n" + GOOD_AZURE, 1, "expected the header"),
    (load_sharegpt, "num_prefill_tokens,num_decode_tokens,num_total_tokens,pd_ratio\n"
     "74,918,992,0.08\n10,20,31,0.5\n", 3, "is not 10 + 20"),
    (load_sharegpt, "num_prefill_tokens,num_decode_tokens,num_total_tokens,pd_ratio\n"
     "74,918,992,abc\n", 2, "pd_ratio"),
    (load_mooncake, '{"timestamp": 0, "input_length": 5, "output_length": 2}\n\n{"timestamp": 1,',
     3, "not valid JSON"),
    (load_mooncake, '{"timestamp": 0, "input_length": 5.5, "output_length": 2}\n', 1,
     "input_length"),
    (load_mooncake, '[1, 2]\n', 1, "JSON object"),
])
def test_malformed_rows_name_file_and_line(tmp_path, loader, text, line, reason):
    path = tmp_path / "bad.txt"
    path.write_text(text)
    with pytest.raises(WorkloadError) as error:
        loader(path)
    assert error.value.line == line
    assert str(path) in str(error.value) and f"line {line}" in str(error.value)
    assert reason in str(error.value)


def test_unreadable_file_is_named(tmp_path):
    with pytest.raises(WorkloadError) as error:
        load_azure(tmp_path / "missing.csv")
    assert "missing.csv" in str(error.value) and "cannot read" in str(error.value)
    (tmp_path / "binary.csv").write_bytes(b"\xff\xfe\x00\x80")
    with pytest.raises(WorkloadError):
        load_azure(tmp_path / "binary.csv")
    with pytest.raises(ValueError, match="known workloads"):
        load_workload("alpaca")


def test_override_root(tmp_path):
    (tmp_path / "azure_llm_2023_code.csv").write_text(AZURE_HEAD + GOOD_AZURE + GOOD_AZURE)
    assert len(load_workload("azure-code", root=tmp_path)) == 2


@pytest.mark.parametrize("profile, prompt, output", [("sharegpt", 80, 296), ("alpaca", 12, 56)])
def test_generators_match_the_paper_means(profile, prompt, output):
    requests = generate_requests(profile, 20000, seed=7)
    assert np.mean([r.prompt_tokens for r in requests]) == pytest.approx(prompt, rel=0.03)
    assert np.mean([r.output_tokens for r in requests]) == pytest.approx(output, rel=0.03)
    assert min(r.prompt_tokens for r in requests) >= 1
    assert generate_requests(profile, 50, seed=7) == generate_requests(profile, 50, seed=7)
    assert generate_requests(profile, 50, seed=8) != generate_requests(profile, 50, seed=7)


def _req(i, prompt, output):
    return RequestSpec(i, 0.0, prompt, output, i + 1)


def test_clip_request_cuts_output_then_prompt():
    assert clip_request(_req(0, 100, 50), 120) == _req(0, 100, 20)
    assert clip_request(_req(0, 300, 50), 120) == _req(0, 119, 1)
    assert clip_request(_req(0, 10, 5), 120) == _req(0, 10, 5)
    with pytest.raises(ValueError):
        clip_request(_req(0, 10, 5), 1)


def test_limits_clip_or_reject_and_count():
    requests = [_req(0, 100, 50), _req(1, 3000, 10), _req(2, 10, 10), _req(3, 50, 0),
                _req(4, 2000, 100)]
    kept, summary = apply_limits(requests, max_seq_len=2048, policy="clip")
    assert [r.id for r in kept] == [0, 1, 2, 4]
    assert (summary.considered, summary.admitted, summary.clipped_length,
            summary.rejected_no_output, summary.rejected) == (5, 4, 2, 1, 1)
    assert all(r.total_tokens <= 2048 for r in kept)
    kept, summary = apply_limits(requests, max_seq_len=2048, policy="reject")
    assert [r.id for r in kept] == [0, 2]
    assert (summary.rejected_length, summary.rejected, summary.clipped) == (2, 3, 0)
    assert summary.outcomes == {0: "admitted", 1: "rejected_length", 2: "admitted",
                                3: "rejected_no_output", 4: "rejected_length"}
    assert "3 rejected" in summary.describe()
    with pytest.raises(ValueError, match="policy"):
        apply_limits(requests, policy="drop")


def test_capacity_callback_clips_or_rejects():
    requests = [_req(0, 100, 50), _req(1, 500, 500), _req(2, 10, 10)]
    kept, summary = apply_limits(requests, capacity=lambda r: 400, policy="clip")
    assert [r.total_tokens for r in kept] == [150, 400, 20]
    assert summary.clipped_capacity == 1 and summary.rejected == 0
    kept, summary = apply_limits(requests, capacity=lambda r: 400, policy="reject")
    assert [r.id for r in kept] == [0, 2] and summary.rejected_capacity == 1


def test_channel_capacity_is_stateful():
    layout = KVLayout(preset("tiny"), get_model("tiny-gpt"))
    # 20 tokens: 5 K tiles + 1 V chunk x 2 KV heads x 8 V tiles = 21 rows a layer, 2 layers
    capacity = ChannelCapacity(layout, channels=1, rows=100)      # 99 pages
    requests = [_req(i, 10, 10) for i in range(6)]
    kept, summary = apply_limits(requests, capacity=capacity, policy="reject")
    assert len(kept) == 2
    assert summary.rejected_capacity == 6 - len(kept) and summary.admitted == len(kept)
    assert set(capacity.channels[0].requests) == {r.id for r in kept}


def test_snapshot_kv_lengths_and_progress(real):
    requests = real["azure-conv"]
    batch = snapshot(requests, 256, seed=5, max_seq_len=2048)
    assert len(batch.entries) == 256 and batch.summary.admitted == 256
    for e in batch.entries:
        assert 0 <= e.generated < e.request.output_tokens
        assert e.kv_len == e.request.prompt_tokens + e.generated
        assert e.attention_len == e.kv_len + 1 <= 2048
    assert snapshot(requests, 256, seed=5, max_seq_len=2048) == batch
    assert snapshot(requests, 256, seed=6, max_seq_len=2048).kv_lens != batch.kv_lens
    start = snapshot(requests, 8, progress="start")
    assert start.kv_lens == [r.prompt_tokens for r in requests[:8]]
    end = snapshot(requests, 8, progress="end")
    assert end.kv_lens == [r.total_tokens - 1 for r in requests[:8]]
    half = snapshot(requests, 8, progress=0.5)
    assert half.kv_lens == [r.prompt_tokens + r.output_tokens // 2 for r in requests[:8]]
    picked = snapshot(requests, 8, pick="random", seed=1)
    assert [e.request.id for e in picked.entries] != list(range(8))


def test_snapshot_counts_what_the_limits_did(real):
    batch = snapshot(real["mooncake"], 64, max_seq_len=2048, policy="reject")
    s = batch.summary
    assert s.admitted == 64 and s.considered == 64 + s.rejected and s.rejected_length > 0
    with pytest.raises(ValueError, match="only 2 of 3"):
        snapshot([_req(0, 5, 5), _req(1, 5, 5), _req(2, 5000, 5)], 3, max_seq_len=100,
                 policy="reject")
    with pytest.raises(ValueError, match="decode progress"):
        snapshot(real["mooncake"], 4, progress="middle")
    assert decode_progress(1, "end", np.random.default_rng(0)) == 0
