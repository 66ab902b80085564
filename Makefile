# Two commands a newcomer needs: `make demo` (set up, then run the demo) and `make test` (set up, then test).
# Setup makes a virtual environment in $(VENV) once; it is redone when pyproject.toml changes.

PYTHON ?= python3
VENV ?= .venv
# PyTorch and torchvision, pinned: 2.14 is the last release with Pascal kernels. For a Pascal GPU add
#   TORCH_INDEX="--index-url https://download.pytorch.org/whl/cu126"
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
TORCH_INDEX ?=
PYTEST_ARGS ?=

# Ray binds to 127.0.0.1 and needs no token with these (see README, "Ray on one machine").
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER ?= 0
export RAY_AUTH_MODE ?= disabled
export RAY_USAGE_STATS_ENABLED ?= 0

BIN := $(VENV)/bin

.PHONY: setup demo test bench gpu-check clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_SPEC) $(TORCH_INDEX)
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

demo: setup
	$(BIN)/python -m jobs.demo

test: setup
	$(BIN)/python -m pytest -q --durations=10 $(PYTEST_ARGS)

bench: setup
	$(BIN)/python -m jobs.bench generate

# On a lent GPU only: the CUDA tests, then fp16 vs NF4 decode with and without CUDA graphs, sm61 settings forced.
gpu-check: setup
	$(BIN)/pip install --quiet -e '.[cuda,test]'
	timeout 480 $(BIN)/python -m jobs.gpu_check

clean:
	rm -rf $(VENV) artifacts .pytest_cache
