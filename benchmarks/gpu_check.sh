#!/usr/bin/env bash
# The prepared GPU check (benchmarks/gpu.py): run from the repository root on the lent GPU machine.
#   bash benchmarks/gpu_check.sh            -> $OUT/gpu.json and $OUT/gpu.md (OUT defaults to ./bench_out)
# Needs only torch, transformers, lightning and tokenizers (no mlflow/hydra/optuna/gguf/trl/vllm).
set -euo pipefail
cd "$(dirname "$0")/.."
export OUT="${OUT:-bench_out}" PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
exec timeout 300 python3 -m benchmarks.gpu "$@"
