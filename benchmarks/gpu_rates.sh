#!/usr/bin/env bash
# The GPU check of the study engine, one command of a few minutes for a lent GPU (the device tool):
# R = 4096 replicates in ONE batched float64 fit on the GPU, seconds per fit, and the records of 64
# seeds against the CPU's (same key; tolerance in benchmarks/gpu_check.py), plus a --device cuda
# study through the CLI. Needs only python3 with torch, typer, tqdm, scipy, matplotlib (no install).
#   bash benchmarks/gpu_rates.sh [OUT]        # OUT: the device tool's $OUT, else runs/gpu
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-runs/gpu}}
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python3 benchmarks/gpu_check.py --out "$out" --setting monomial-sigmoid-exact --n 1000 --replicates 4096
python3 benchmarks/gpu_check.py --out "$out/over" --setting monomial-sigmoid-over --n 1000 --replicates 4096
python3 -m attnmoe.cli rates --preset quick --device cuda --no-progress --workers 1 --out "$out/quick-cuda" | head -20
