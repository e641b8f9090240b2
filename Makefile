# Two entry points: `make run` (build the embedded default if needed, then serve it) and
# `make test` (lint, type check and the whole test suite).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
CONFIG ?= config.example.yaml
# torch/torchvision are pinned to the releases this project is tested with.
TORCH  := torch==2.14.1 torchvision==0.29.1
# Empty: torch/torchvision come from PyPI, whose Linux x86-64 wheels bundle CUDA (nvidia-*,
# triton: most of .venv's 6.2 GB). On a host without a GPU, take the CPU-only builds instead:
#   make run TORCH_INDEX=https://download.pytorch.org/whl/cpu
# It applies when .venv is created (a fresh clone, or after `make clean`).
TORCH_INDEX ?=

.PHONY: run test test-fast lint install clean evaluate

# eraserd's run-time dependencies are installed at the versions in the lock: the ones the
# tests ran with and the Docker image installs (its hashes are for the image, not used here).
LOCK   := deploy/docker/requirements.lock

$(BIN)/eraserd: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) $(TORCH)
	sed -n 's/^\([A-Za-z0-9._-]*==[^ \\]*\).*/\1/p' $(LOCK) > $(VENV)/constraints.txt
	$(BIN)/pip install --quiet -e '.[dev,ray]' -c $(VENV)/constraints.txt
	touch $@

install: $(BIN)/eraserd

run: install
	$(BIN)/eraserd run --config $(CONFIG)

test: install
	$(BIN)/ruff check eraserd tests benchmarks
	$(BIN)/mypy eraserd
	$(BIN)/python -m pytest -q

# The pure tests only (modules marked `pytestmark = pytest.mark.pure`): no torch, well under
# a minute. `make test` runs them too.
PURE   := $(shell grep -l '^pytestmark = pytest.mark.pure' tests/test_*.py)

test-fast: install
	$(BIN)/python -m pytest -q $(PURE)

# The full evaluation that docs/results.md records (21 minutes on 2 CPUs): LMEraser and
# every baseline over 3 seeds, the ablations, the figures in docs/img and the JSON report.
EVAL_FLAGS ?= --seeds 3 --forgets 5 --ablations --min-steps 50

evaluate: install
	$(BIN)/eraserd evaluate -c $(CONFIG) $(EVAL_FLAGS) --plots docs/img --json > docs/results.json.tmp
	mv docs/results.json.tmp docs/results.json

lint: install
	$(BIN)/ruff check eraserd tests benchmarks
	$(BIN)/ruff format --check eraserd tests benchmarks
	$(BIN)/mypy eraserd

clean:
	rm -rf $(VENV) state .pytest_cache .mypy_cache
