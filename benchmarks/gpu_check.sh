#!/usr/bin/env bash
# This project's GPU figures in one run that always reports, under eight minutes on one H100 once
# the environment is installed: the device, the matmul peaks (fp32/TF32, bf16), img/s and MFU per
# paper model in TF32 and bf16, 1 and 4 runs of ViT and the hybrid sharing the GPU, one Snakemake run
# with its forecast, and the compile rows last (see benchmarks/gpu_check.py).
#   bash benchmarks/gpu_check.sh [--smoke] [--archive PATH] [--out DIR] [--budget-s 460]
#                                [--sections ...] [--force ROW=fail|hang] [--row-timeout-s N]
# Writes gpu_check.json and gpu_check.md into --out, else $OUT, else a folder it names, after every
# row; exits 1 when any row failed, timed out or was skipped. `uv sync` is timed apart (it is not
# part of the budget). --smoke: the same code on a CPU with tiny sizes (CI runs it).
set -euo pipefail
cd "$(dirname "$0")/.."
if command -v uv >/dev/null 2>&1; then
  start=$(date +%s%N)
  uv sync --locked -q
  GPU_CHECK_UV_SYNC_S=$(awk "BEGIN { printf \"%.1f\", ($(date +%s%N) - $start) / 1e9 }")
  export GPU_CHECK_UV_SYNC_S
  echo "uv sync --locked: ${GPU_CHECK_UV_SYNC_S} s (not part of the check's budget)"
fi
if [ -x .venv/bin/python ]; then
  py=.venv/bin/python
else  # an environment without uv that already has the locked packages
  py=python3
  export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
exec "$py" benchmarks/gpu_check.py "$@"
