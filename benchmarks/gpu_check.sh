#!/usr/bin/env bash
# This project's GPU figures in one run, under eight minutes on one H100-class GPU: img/s per
# paper-size model in fp32 (TF32), bf16 and bf16 + torch.compile, MFU against the measured bf16
# matmul peak, peak memory, the trainer against a bare loop, 1/2/4 runs sharing the GPU, and the
# quick profile plus one epoch of the paper profile through Snakemake (see benchmarks/gpu_check.py).
#   bash benchmarks/gpu_check.sh [--smoke] [--archive PATH] [--out DIR] [--budget-s 460]
# Writes gpu_check.json and gpu_check.md into --out, else $OUT, else a folder it names.
# --smoke: the same code on a CPU with tiny sizes in about a minute (CI runs it).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ] && command -v uv >/dev/null 2>&1; then
  uv sync --locked -q
fi
if [ -x .venv/bin/python ]; then
  py=.venv/bin/python
else  # an environment without uv that already has the locked packages
  py=python3
  export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
exec "$py" benchmarks/gpu_check.py "$@"
