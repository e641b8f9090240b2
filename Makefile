# Two entry points: `make run` (build the embedded default if needed, then serve it) and
# `make test` (lint and the whole test suite).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
CONFIG ?= config.example.yaml
# torch/torchvision are pinned to the releases this project is tested with.
TORCH  := torch==2.14.1 torchvision==0.29.1

.PHONY: run test lint install clean

$(BIN)/eraserd: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[dev,ray]'
	touch $@

install: $(BIN)/eraserd

run: install
	$(BIN)/eraserd run --config $(CONFIG)

test: install
	$(BIN)/ruff check eraserd tests benchmarks
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check eraserd tests benchmarks
	$(BIN)/ruff format --check eraserd tests benchmarks

clean:
	rm -rf $(VENV) state .pytest_cache
