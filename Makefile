# The two commands: `make demo` and `make test`. Both create .venv and install what they need.
#
# PyTorch: the CPU build of torch 2.13.0 by default. GPU users choose their build with
#   make demo TORCH="torch==2.13.0" TORCH_INDEX=https://download.pytorch.org/whl/cu128
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
PY := $(VENV)/bin/python
STAMP := $(VENV)/.rlhfkit-installed

.PHONY: install demo test lint unit bench system-deps clean

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	@touch $@

install: $(STAMP)

# Chromium (browser tests) and PostgreSQL (store tests) from Debian's packages, where we can.
system-deps:
	@bash scripts/install-system-deps.sh

demo: install
	$(VENV)/bin/rlhfkit demo

lint: install
	$(VENV)/bin/ruff check rlhfkit tests benchmarks scripts

unit: install
	$(PY) -m pytest -q tests/unit

test: install system-deps lint
	$(PY) -m pytest -q

bench: install
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
