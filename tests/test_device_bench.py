"""The device benchmark's programs (``sim.device_bench``), without RTL: they fit the cores,
each core stays in its slice of the stored rows, and bad sizes name the parameter."""
import pytest

from rtl.config import preset
from rtl.isa.npu import NpuOp
from sim.device_bench import BenchError, program_totals, weight_streaming_program
from sim.npu_programs import stored_bursts


def _ops(program):
    return [ins.op for ins in program]


@pytest.mark.parametrize("name", ["neupims", "decode"])
def test_programs_fit_and_stay_in_their_slice(name):
    config = preset(name)
    npu, g = config.npu, config.geometry
    tiles = 24
    slice_bytes = stored_bursts(config) * g.burst_bytes // npu.arrays
    for core in range(npu.arrays):
        program = weight_streaming_program(config, core, tiles)
        assert len(program) <= npu.instruction_words
        assert _ops(program).count(NpuOp.GEMM) == tiles and _ops(program)[-1] is NpuOp.HALT
        for ins in program:
            if ins.op in (NpuOp.DMA_LOAD, NpuOp.DMA_STORE):
                start = ins["hbm"]
                end = start + ins["count"] * g.burst_bytes
                assert core * slice_bytes <= start and end <= (core + 1) * slice_bytes


@pytest.mark.parametrize("kwargs, field", [
    ({"tiles": 1000}, "tiles"),
    ({"tiles": 4, "rows": 0}, "rows"),
    ({"tiles": 4, "rows": 10_000}, "rows"),
])
def test_bad_sizes_name_the_parameter(kwargs, field):
    with pytest.raises(BenchError, match=f"^{field}"):
        weight_streaming_program(preset("neupims"), 0, **kwargs)


def test_program_totals_count_what_the_program_asks():
    config = preset("neupims")
    npu, wb = config.npu, config.npu.word_bytes
    tiles, rows = 5, 32
    total = program_totals(config, weight_streaming_program(config, 0, tiles, rows))
    K, W = 2 * npu.array_rows, npu.array_cols
    assert total["macs"] == tiles * rows * K * W
    # scratchpad rows are whole 512-byte words: a 128-wide FP16 weight row fills half of one
    assert total["dma_bytes_read"] == rows * wb + tiles * K * wb
    assert total["dma_bytes_written"] == rows * wb
    assert (K * 2, W * 2, W * 4) == (wb, wb // 2, wb)


def test_bench_weight_buffers_option():
    """``neupims bench npu|device --weight-buffers N`` sets the array's weight buffers;
    without it the preset's count stays (the paper's device: two)."""
    from sim.cli import _with_npu
    assert preset("neupims").npu.weight_buffers == 2
    assert _with_npu(preset("neupims"), weight_buffers=None) == preset("neupims")
    assert _with_npu(preset("neupims"), weight_buffers=1).npu.weight_buffers == 1
    assert _with_npu(preset("small"), weight_buffers=2).npu.weight_buffers == 2


def test_bench_device_shapes_the_device(monkeypatch, capsys):
    """``neupims bench device --channels --cores --response-buffer --dma-responses
    --dma-in-flight`` reach the benchmarked configuration; without them the preset's stay (the paper's device: 4
    responses buffered, 2 DMA responses per clock)."""
    import sim.device_bench
    from sim.cli import main
    seen = []
    monkeypatch.setattr(sim.device_bench, "bench_device",
                        lambda config, **kwargs: seen.append(config) or {"ok": 1})
    main(["bench", "device", "--config", "neupims", "--timing-only", "--channels", "8",
          "--cores", "2", "--response-buffer", "0", "--dma-responses", "1", "--json"])
    main(["bench", "device", "--config", "neupims", "--json"])
    shaped, plain = seen
    assert (shaped.geometry.channels, shaped.npu.arrays, shaped.npu.response_buffer,
            shaped.npu.dma_responses) == (8, 2, 0, 1)
    assert (plain.npu.response_buffer, plain.npu.dma_responses) == (4, 2)
    assert not shaped.datapath
    assert plain == preset("neupims")
    with pytest.raises(SystemExit, match="NpuConfig.response_buffer"):
        main(["bench", "device", "--config", "neupims", "--response-buffer", "-1"])
    with pytest.raises(SystemExit, match="NpuConfig.dma_responses"):
        main(["bench", "device", "--config", "neupims", "--channels", "1", "--json"])
    main(["bench", "device", "--config", "neupims", "--channels", "1", "--dma-responses", "1",
          "--json"])                                  # checked together, not in turn
    assert (seen[-1].geometry.channels, seen[-1].npu.dma_responses) == (1, 1)
    # requests in flight: the controllers' tags grow only when the cores need more
    main(["bench", "device", "--config", "neupims", "--cores", "2", "--dma-in-flight", "32",
          "--json"])
    assert (seen[-1].npu.dma_in_flight, seen[-1].controller.tags) == (32, 64)
    main(["bench", "device", "--config", "neupims", "--dma-in-flight", "16", "--json"])
    assert (seen[-1].npu.dma_in_flight, seen[-1].controller.tags) == (16, 128)
