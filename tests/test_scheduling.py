"""Channel assignment (greedy min-load vs round-robin), sub-batch split, stage pipeline."""
import numpy as np
import pytest

from rtl.config import preset
from sim.kv_layout import KVLayout, pim_work
from sim.models import get_model
from sim.scheduling import (STAGES, StageCycles, assign_channels, assign_greedy,
                            assign_round_robin, mha_load, pipeline_total, serial_total,
                            split_sub_batches, stage_sequence)
from sim.workloads import generate_requests, snapshot

CONFIG = preset("channel")
LAYOUT = KVLayout(CONFIG, get_model("gpt3-7b"))


def test_mha_load_comes_from_the_layout_and_the_timing():
    bus = CONFIG.bus
    # 1024 tokens, 8 heads x 128 on 32 banks x 512: logits 2 GWRITEs, 2 x 32 row sets,
    # 8 x 32 PIM_GEMV(8); attend 8 heads x 2 chunks: 16 GWRITEs, 64 row sets, 64 PIM_GEMV(32)
    expected = (18 * bus.gwrite_busy + 128 * bus.row_set_open(CONFIG.geometry.bankgroups)
                + 256 * bus.gemv_busy(8) + 64 * bus.gemv_busy(32))
    assert mha_load(LAYOUT, 1024) == expected
    assert mha_load(LAYOUT, 1024, layers=32) == 32 * expected
    loads = [mha_load(LAYOUT, n) for n in (1, 31, 32, 33, 511, 512, 513, 2048)]
    assert loads == sorted(loads)
    assert pim_work(LAYOUT, 1024).gemvs == ((8, 256), (32, 64))


def _check_partition(assignment, count):
    flat = [i for channel in assignment.channels for i in channel]
    assert sorted(flat) == list(range(count))             # each request exactly once
    channel_of = assignment.channel_of()
    assert all(i in assignment.channels[channel_of[i]] for i in range(count))


def test_greedy_balances_skewed_lengths_better_than_round_robin():
    lengths = [2000, 40] * 32                 # round-robin puts every long one on even channels
    greedy = assign_greedy(lengths, 8, LAYOUT)
    robin = assign_round_robin(lengths, 8, LAYOUT)
    _check_partition(greedy, 64)
    _check_partition(robin, 64)
    assert sum(greedy.loads) == sum(robin.loads)
    assert greedy.makespan < robin.makespan
    assert greedy.imbalance < 1.05 < 1.5 < robin.imbalance
    assert robin.channels[0] == tuple(range(0, 64, 8))


def test_greedy_on_a_real_batch():
    from sim.workloads import DEFAULT_ROOT, load_workload
    if not DEFAULT_ROOT.is_dir():
        pytest.skip("workload folder not present")
    lengths = snapshot(load_workload("azure-conv"), 256, seed=2, max_seq_len=2048).attention_lens
    greedy = assign_channels(lengths, 32, LAYOUT, "greedy")
    robin = assign_channels(lengths, 32, LAYOUT, "round-robin")
    _check_partition(greedy, 256)
    assert greedy.makespan < robin.makespan and greedy.imbalance < robin.imbalance
    loads = [mha_load(LAYOUT, n) for n in lengths]
    assert greedy.makespan <= sum(loads) / 32 + max(loads)   # list-scheduling bound


def test_greedy_places_longest_first_on_the_least_loaded_channel():
    a = assign_greedy([10, 30, 20, 30], 2, lambda n: n)
    assert a.channels == ((1, 2), (3, 0)) and a.loads == (50, 40)
    assert assign_greedy([5], 4, lambda n: n).loads == (5, 0, 0, 0)
    with pytest.raises(ValueError, match="policy"):
        assign_channels([1], 1, LAYOUT, "random")
    with pytest.raises(ValueError, match="positive"):
        assign_greedy([0], 1, LAYOUT)


def test_sub_batches_halve_each_channel_and_alternate_odd_rounding():
    lengths = [int(n) for n in np.random.default_rng(1).integers(1, 3000, 45)]
    assignment = assign_greedy(lengths, 8, LAYOUT)        # 45 over 8 channels: odd counts
    sb = split_sub_batches(assignment)
    one, two = sb.members(1), sb.members(2)
    assert sorted(one + two) == list(range(45)) and not set(one) & set(two)
    assert abs(len(one) - len(two)) <= 1
    extra = []
    for members, first, second in zip(assignment.channels, sb.first, sb.second):
        assert sorted(first + second) == sorted(members)
        assert abs(len(first) - len(second)) <= 1
        if len(members) % 2:
            extra.append(1 if len(first) > len(second) else 2)
    assert len(extra) >= 2 and extra == [1, 2] * (len(extra) // 2) + [1] * (len(extra) % 2)


def test_sub_batches_rule_on_a_small_case():
    a = assign_round_robin([9, 8, 7, 6, 5, 4, 3], 2, lambda n: n)   # channels: 4 and 3 requests
    sb = split_sub_batches(a)
    assert sb.first == ((0, 4), (1, 5)) and sb.second == ((2, 6), (3,))
    odd = assign_round_robin([5, 5, 5, 5, 5, 5], 2, lambda n: n)    # 3 and 3: alternate
    sb = split_sub_batches(odd)
    assert [len(c) for c in sb.first] == [2, 1] and [len(c) for c in sb.second] == [1, 2]
    with pytest.raises(ValueError):
        sb.members(3)


def test_sub_batches_alternate_over_each_cores_channels():
    """Channel c's attention runs on core c mod cores: the longer halves alternate over
    each core's channels, so no core gets every longer half of one sub-batch (in channel
    order, with an even core count, core 0 would: channels 0, 2, 4, ... all lead with
    sub-batch 1). One core: the channel order, as before."""
    lengths = [1000 - 10 * i for i in range(16)]      # 2 requests per channel, longest first
    a = assign_greedy(lengths, 8, lambda n: n)
    cost = dict(enumerate(lengths))

    def per_core(sb, cores):
        loads = [[0, 0] for _ in range(cores)]
        for c in range(8):
            loads[c % cores][0] += sum(cost[i] for i in sb.first[c])
            loads[c % cores][1] += sum(cost[i] for i in sb.second[c])
        return loads
    by_channel, by_core = split_sub_batches(a), split_sub_batches(a, cores=2)
    assert by_channel == split_sub_batches(a, cores=1)
    assert [sorted(f + s) for f, s in zip(by_core.first, by_core.second)] == \
        [sorted(m) for m in a.channels]
    skewed = per_core(by_channel, 2)
    assert skewed[0][0] > skewed[0][1] and skewed[1][0] < skewed[1][1]
    for (one, two), (skew1, skew2) in zip(per_core(by_core, 2), skewed):
        assert abs(one - two) * 3 < abs(skew1 - skew2), (one, two, skew1, skew2)
    assert abs(len(by_core.members(1)) - len(by_core.members(2))) <= 1
    with pytest.raises(ValueError, match="cores"):
        split_sub_batches(a, cores=0)


def test_stage_pipeline_closed_form():
    stages = StageCycles(A=10, B=20, C=30, D=40, E=50, F=60)
    assert pipeline_total(stages, 1) == 10 + 20 + 50 + 60
    assert pipeline_total(stages, 32) == 10 + 20 + 70 * 31 + 50 + 60
    for layers in (1, 2, 5):
        assert pipeline_total(stages, layers) == sum(getattr(stages, s)
                                                     for s in stage_sequence(layers))
    assert pipeline_total(dict(zip(STAGES, (1, 2, 3, 4, 5, 6))), 3) == 1 + 2 + 7 * 2 + 5 + 6
    assert StageCycles.from_parts({"A": 5, "C": 9}, {"C": 12, "B": 3}) == \
        StageCycles(5, 3, 12, 0, 0, 0)
    assert serial_total(10, 20, 30, 4) == 240
    with pytest.raises(ValueError, match="missing"):
        pipeline_total({"A": 1}, 2)
    with pytest.raises(ValueError, match="StageCycles.C"):
        StageCycles(1, 2, -3, 4, 5, 6)
    with pytest.raises(ValueError, match="layers"):
        pipeline_total(stages, 0)


def test_paper_lengths_schedule():
    requests = generate_requests("sharegpt", 512, seed=3)
    lengths = snapshot(requests, 512, seed=3).attention_lens
    greedy = assign_greedy(lengths, 32, LAYOUT)
    robin = assign_round_robin(lengths, 32, LAYOUT)
    assert greedy.imbalance <= robin.imbalance
