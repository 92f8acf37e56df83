# lstm_dist: the few targets people use. `make demo` and `make test` set up .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# torch is installed first, on its own: a CPU build where there is no CUDA (on this kind of machine
# `torch==2.13.0` resolves to a local CPU wheel), so that the project's own install never pulls a
# multi-GB CUDA build. Elsewhere, for a CPU-only machine: make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
TORCH_ARGS := $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX),)
CONFIG ?= conf/demo.yaml

.PHONY: setup demo test lint format bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q $(TORCH_ARGS) "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/lstm-dist run $(CONFIG)

# Two pytest processes, each taking whole modules (a module's Ray, server or pipeline fixtures are built
# once): most of the suite waits on Ray and MLflow processes, so two keep a 2-core machine busy.
TEST_WORKERS ?= 2

test: $(STAMP)
	$(VENV)/bin/pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .

clean:
	rm -rf runs .pytest_cache
