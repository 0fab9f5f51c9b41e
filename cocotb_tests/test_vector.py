"""Launch the vector-unit cocotb tests on Verilator (one build, several test cases)."""
import dataclasses
import json
import os

import pytest

from rtl.config import preset
from rtl.npu.vector import VectorUnit
from sim.harness import simulate

CONFIG = preset("small")  # 8 lanes


def run_vector(testcase, tmp_path, config=CONFIG, **env):
    seed = os.environ.get("NEUPIMS_SEED", "1")
    print(f"NEUPIMS_SEED={seed}")
    report = tmp_path / f"{testcase}.json"
    simulate(VectorUnit(config), f"vector_unit_{config.npu.vector_lanes}",
             "cocotb_tests.tb_vector", testcase=testcase,
             env={"NEUPIMS_CONFIG": config.to_json(), "NEUPIMS_SEED": seed,
                  "NEUPIMS_REPORT": str(report), **{k: str(v) for k, v in env.items()}},
             tag=f"{testcase}-{tmp_path.name}")
    return json.loads(report.read_text()) if report.exists() else {}


@pytest.mark.xdist_group("vector")
def test_vector_ops_bit_exact(tmp_path):
    """Every op on 8 lanes: special values plus 2000 random vectors, latency, spacing."""
    result = run_vector("ops_bit_exact", tmp_path, NEUPIMS_VECTOR_N=2000)
    print(json.dumps(result, indent=1))


@pytest.mark.xdist_group("vector")
def test_vector_backpressure(tmp_path):
    run_vector("backpressure_mixed", tmp_path, NEUPIMS_VECTOR_N=1200)


@pytest.mark.xdist_group("vector")
def test_vector_softmax_sequence(tmp_path):
    """Softmax of 128 and 64 attention logits (and FP16 softmax, LayerNorm, residual add)
    as op sequences on the RTL, bit-exact with the golden compositions."""
    result = run_vector("softmax_sequence", tmp_path)
    print(json.dumps(result, indent=1))


@pytest.mark.slow
@pytest.mark.xdist_group("vector")
def test_vector_16_lanes_long(tmp_path):
    """16 lanes (a second build): 10,000 random vectors per op, and the op sequences."""
    config = CONFIG.replace(npu=dataclasses.replace(CONFIG.npu, vector_lanes=16))
    result = run_vector("ops_bit_exact", tmp_path, config=config, NEUPIMS_VECTOR_N=10000)
    print(json.dumps(result, indent=1))
    run_vector("softmax_sequence", tmp_path, config=config)
