"""The report's GPU-only column: a roofline estimate of a decode step (``sim.gpu_roofline``)."""
from __future__ import annotations

import pytest

from sim.gpu_roofline import Gpu, GpuError, decode_step
from sim.models import get_model
from sim.reproduce import GRIDS, format_report, gpu_estimate, paper_config, slice_config, to_json

#: a slice report computes ``paper_scale_status()`` (cached): the reproduce tests' worker
pytestmark = pytest.mark.xdist_group("reproduce")


def test_each_kernel_takes_the_slower_of_flops_and_bytes():
    gpu = Gpu(hbm_gbytes_per_s=1000.0, fp16_tflops=100.0)
    assert gpu.kernel_s(1e12, 1e9) == pytest.approx(0.01)        # FLOPs bound
    assert gpu.kernel_s(1e9, 1e10) == pytest.approx(0.01)        # bytes bound


def test_decode_step_of_a_device_share():
    gpu = Gpu(hbm_gbytes_per_s=1000.0, fp16_tflops=100.0)
    model = get_model("gpt3-7b")                  # TP 4: 32 layers, 8 heads per device
    kv_lens = [100, 300]
    step = decode_step(model, kv_lens, gpu)
    weights = model.weight_bytes_per_layer()     # 2 tokens: every GEMM bound by its weights
    assert step["gemm_s"] == pytest.approx(32 * weights / 1e12)
    kv = sum(2 * 8 * 128 * n * 2 for n in kv_lens)
    assert step["attention_s"] == pytest.approx(32 * kv / 1e12)
    assert step["tokens_per_s"] == pytest.approx(2 / (step["gemm_s"] + step["attention_s"]))
    big = decode_step(model, [100] * 4096, gpu)   # a batch this large: FLOPs bound GEMMs
    assert big["gemm_s"] == pytest.approx(32 * sum(g.flops for g in model.gemms(4096)) / 1e14)


@pytest.mark.parametrize("field, value", [("hbm_gbytes_per_s", 0.0), ("fp16_tflops", -1.0)])
def test_bad_gpu_names_the_field(field, value):
    with pytest.raises(GpuError, match=f"Gpu.{field}") as error:
        Gpu(**{field: value})
    assert error.value.field == field
    with pytest.raises(GpuError, match="Gpu.kv_lens"):
        decode_step(get_model("gpt3-7b"), [], Gpu())


def _points(neupims_cycles):
    return [{"model": "gpt3-7b", "batch": 2, "dataset": "sharegpt-like", "mode": mode,
             "tokens_per_s": 2e9 / c, "cycles": c, "tokens": 2, "kv_lens": [100, 300],
             "stages": {"QKV": c}, "npu_util": 0.1, "pim_util": 0.01}
            for mode, c in (("npu+pim", 2 * neupims_cycles), ("neupims", neupims_cycles))]


def test_report_compares_neupims_with_the_estimate_at_full_scale_only():
    points = _points(1_000_000)
    gpu = Gpu()
    (p,) = gpu_estimate(points, gpu)["points"]
    step = decode_step(get_model("gpt3-7b"), [100, 300], gpu)
    assert p["tokens_per_s"] == pytest.approx(step["tokens_per_s"])
    assert p["neupims/gpu"] == pytest.approx(2e3 / step["tokens_per_s"])
    report = to_json(GRIDS["paper-quick"], paper_config(), points)
    assert report["gpu"]["points"] == [p] and report["gpu"]["paper"] == 3.0
    text = format_report(report)
    assert "GPU-only: one A100 40 GB per device" in text and f"{p['neupims/gpu']:.2f}x" in text
    sliced = to_json(GRIDS["paper-quick"], slice_config(), points)
    assert sliced["gpu"] is None
