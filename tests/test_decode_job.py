"""`neupims sim`'s workload selection and its errors (no RTL run)."""
import pytest

from sim import cli
from sim.decode.job import draw_workload


def test_default_workload_comes_from_the_azure_trace():
    workload, source = draw_workload()
    assert workload.batch == 16 and workload.model.name == "tiny-gpt"
    assert source.startswith("azure-conv") and "clipped" in source and "rejected" in source
    assert all(0 <= n <= 96 for n in workload.kv_lens) and len(set(workload.kv_lens)) > 3
    again, _ = draw_workload()
    assert again.kv_lens == workload.kv_lens                 # seeded


def test_clipping_is_counted():
    workload, source = draw_workload(length_scale=1.0, max_len=40, batch=4)
    assert max(workload.kv_lens) < 40
    assert "4 clipped" in source or "clipped" in source and " 0 clipped" not in source


@pytest.mark.parametrize("argv, message", [
    (["--model", "gpt-9"], "unknown model 'gpt-9'"),
    (["--trace", "/nonexistent.csv"], "neither a known trace"),
    (["--batch", "100000"], "batch"),
    (["--batch", "64"], "instructions|scratchpad|does not fit"),
    (["--modes", "gpu"], "unknown mode 'gpu'"),
])
def test_bad_input_stops_with_a_message(argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["sim", *argv])
    import re
    assert re.search(message, str(stop.value)), stop.value


def test_bad_trace_row_names_the_line(tmp_path):
    trace = tmp_path / "bad.csv"
    trace.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n"
                     "2023-11-16 18:15:46.6805900,374,44\n"
                     "2023-11-16 18:15:50.9951690,abc,48\n")
    with pytest.raises(SystemExit) as stop:
        cli.main(["sim", "--trace", str(trace), "--batch", "1"])
    assert "line 3" in str(stop.value)
