"""The communication estimate between the devices of a TP/PP group (``sim.interconnect``)
and its table in ``neupims reproduce``'s report."""
from __future__ import annotations

import dataclasses

import pytest

from sim.cli import main
from sim.interconnect import Interconnect, LinkError, step_communication
from sim.models import get_model
from sim.reproduce import GRIDS, format_report, paper_config, to_json, with_communication


def test_ring_allreduce_moves_two_p_minus_one_pieces():
    link = Interconnect(gbytes_per_s=100.0, hop_us=2.0)
    piece = 4e6 / 4                                     # 4 MB over 4 devices
    assert link.allreduce_s(4e6, 4) == pytest.approx(6 * (2e-6 + piece / 100e9))
    assert link.allreduce_s(4e6, 1) == 0.0
    assert link.transfer_s(1e9) == pytest.approx(2e-6 + 0.01)


def test_step_counts_two_allreduces_per_layer_of_the_share_and_one_handover():
    link = Interconnect(gbytes_per_s=50.0, hop_us=0.5)
    m7 = get_model("gpt3-7b")                            # TP 4, 32 layers
    c = step_communication(m7, 64, link)
    assert c["bytes"] == 64 * 4096 * 2
    assert c["allreduce_s"] == pytest.approx(2 * 32 * link.allreduce_s(c["bytes"], 4))
    assert c["handover_s"] == 0.0 and c["total_s"] == c["allreduce_s"]
    m30 = get_model("gpt3-30b")                          # TP 4, PP 2: 24 layers per device
    c = step_communication(m30, 256, link)
    assert c["allreduce_s"] == pytest.approx(2 * 24 * link.allreduce_s(256 * 7168 * 2, 4))
    assert c["handover_s"] == pytest.approx(link.transfer_s(256 * 7168 * 2))
    one = get_model("gpt3-7b-s32")                       # one device: nothing to send
    assert step_communication(one, 8, link)["total_s"] == 0.0


@pytest.mark.parametrize("field, value", [("gbytes_per_s", 0.0), ("hop_us", -1.0)])
def test_bad_link_names_the_field(field, value):
    with pytest.raises(LinkError, match=f"Interconnect.{field}") as error:
        Interconnect(**{field: value})
    assert error.value.field == field


def test_cli_rejects_a_bad_link_before_any_run(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["reproduce", "--quick", "--link-gbs", "-3", "--out", "/nonexistent/x"])
    assert "Interconnect.gbytes_per_s" in str(stop.value)


def _paper_points(cycles):
    """Synthetic full-scale points of GPT3-7B at batch 64 (the report's arithmetic)."""
    return [{"model": "gpt3-7b", "batch": 64, "dataset": "sharegpt-like", "mode": mode,
             "tokens_per_s": 64 * 1e9 / c, "cycles": c, "tokens": 64, "kv_lens": [200] * 64,
             "stages": {"QKV": c}, "npu_util": 0.1, "pim_util": 0.01}
            for mode, c in cycles.items()]


def test_report_adds_the_estimate_to_each_step_and_shrinks_the_ratios():
    cycles = {"npu-only": 3_000_000, "npu+pim": 2_000_000, "neupims": 1_000_000}
    points = _paper_points(cycles)
    link = Interconnect(gbytes_per_s=10.0, hop_us=0.0)
    comm_s = step_communication(get_model("gpt3-7b"), 64, link)["total_s"]
    c = with_communication(points, link, 1e9)
    for p in c["points"]:
        seconds = cycles[p["mode"]] / 1e9 + comm_s
        assert p["comm_s"] == pytest.approx(comm_s)
        assert p["tokens_per_s"] == pytest.approx(64 / seconds)
        assert p["share"] == pytest.approx(comm_s / seconds)
    (r,) = c["ratios"]
    assert 1.0 < r["neupims/npu-only"] < 3.0 and 1.0 < r["neupims/npu+pim"] < 2.0
    assert r["neupims/npu+pim"] == pytest.approx((2e-3 + comm_s) / (1e-3 + comm_s))
    grid = GRIDS["paper-quick"]
    report = to_json(grid, paper_config(), points, link=link)
    assert report["communication"] == c
    text = format_report(report)
    assert "With the devices' communication" in text and "10 GB/s links" in text
    assert f"{comm_s * 1e6:,.1f}" in text


def test_no_estimate_for_models_on_one_device():
    grid = dataclasses.replace(GRIDS["quick"], modes=("neupims",))
    points = [{"model": "gpt3-7b-s32", "batch": 8, "dataset": "sharegpt-like",
               "mode": "neupims", "tokens_per_s": 8e3, "cycles": 10 ** 6, "tokens": 8,
               "kv_lens": [50] * 8,
               "stages": {"QKV": 10 ** 6}, "npu_util": 0.1, "pim_util": 0.01}]
    assert with_communication(points, Interconnect(), 1e9)["points"] == []
    assert "With the devices' communication" not in format_report(
        {**to_json(grid, paper_config(), points), "not_run": []})
