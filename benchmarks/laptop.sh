#!/usr/bin/env bash
# Benchmark: the laptop preset (the paper's three models on all of CIFAR-10, sized for a 2-core
# CPU) end to end, from prepared data. Targets, on 2 cores: the whole pipeline (train, evaluate,
# collect, figures, report) <= 60 minutes; every paper model >= 50% test accuracy, the best >= 70%;
# mde_pp <= 3 for every claim; the forecast within 30%. Run it alone: anything else running slows
# torch's threads several-fold.
#   bash benchmarks/laptop.sh [ARCHIVE] [--dvc] [KEY=VALUE ...]
# KEY=VALUE pairs are added to Snakemake's --config (e.g. 'runtime={group_seeds: false}').
# Clones the committed project into a temp dir, installs it (uv sync --locked, not timed), prepares
# the data (download + prepare, timed apart), then times `uv run snakemake --cores all --config
# preset=laptop` (or `dvc exp run -S preset=laptop`) and prints: the wall time, the forecast the
# tool printed at its start, each paper model's accuracy (mean and s.d. over seeds), the verdicts
# with their intervals and mde_pp, and the share of the machine's core-seconds spent in optimizer
# steps, and the frontier (benchmarks/laptop_frontier.py).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
archive="$root/../shared/data/cifar10-imagefolder-jpeg.tar.gz"
tool=snakemake
extra=()
for arg in "$@"; do
  case "$arg" in
    --dvc) tool=dvc ;;
    *=*) extra+=("$arg") ;;
    *) archive="$arg" ;;
  esac
done
archive="$(realpath "$archive")"
sha=b043693fe47f6b4dd6ba3649ebcc0fce6a061ee06a17908e875bb59f3cdc9ee7
data="{url: $archive, format: imagefolder, md5: null, sha256: $sha}"
work="$(mktemp -d)"
git clone -q "$root" "$work"
cd "$work"
uv sync --locked -q
t0=$(date +%s)
uv run snakemake --cores all --config preset=laptop data="$data" -- data/prepared/stats.json > prepare.log 2>&1
t1=$(date +%s)
echo "download + prepare: $((t1 - t0)) s (not counted)"
if [ "$tool" = dvc ]; then
  git config user.email bench@localhost && git config user.name bench
  uv run dvc exp run -S preset=laptop -S "data.url=$archive" -S data.format=imagefolder -S data.md5=null \
    -S "data.sha256=$sha" 2>&1 | tee pipeline.log
else
  uv run snakemake --cores all --config preset=laptop data="$data" "${extra[@]}" 2>&1 | tee pipeline.log
fi
t2=$(date +%s)
echo "laptop pipeline ($tool): $((t2 - t1)) s wall from prepared data (target <= 3600); report: $work/report/index.html"
grep -m1 -E "^  forecast:" pipeline.log || true
uv run python - "$t1" "$t2" <<'EOF'
"""Accuracy per model, the verdicts, and where the machine's time went."""
import json, os, re, sys
from datetime import datetime
from pathlib import Path

import pandas as pd

start, end = float(sys.argv[1]), float(sys.argv[2])
cores = os.cpu_count() or 1
summary = pd.read_csv("results/tables/summary.csv")
print("\nmodel      recipe  seeds  selected test acc (mean ± s.d.)  final")
for r in summary.itertuples():
    print(f"{r.model:<10} {r.recipe:<7} {r.seeds:>5}  {r.selected_test_acc_mean:6.2f} ± {r.selected_test_acc_std:.2f}"
          f"                {r.final_test_acc_mean:6.2f}")
claims = pd.read_csv("results/tables/claims.csv")
print("\nclaim                verdict        diff    interval             MDE")
for c in claims.itertuples():
    print(f"{c.claim_id:<20} {c.verdict:<13} {c.diff_pp:+6.2f}  [{c.ci_low_pp:+6.2f}, {c.ci_high_pp:+6.2f}]  "
          f"{c.mde_pp:5.2f}  (threshold {c.threshold_pp:+g}, {100 * c.level:.1f}%)")
runs = [json.loads(p.read_text()) for p in Path("results/runs").glob("*/summary.json")]
steps = sum(r["train_seconds"] for r in runs)
core_s = cores * (end - start)
print(f"\noptimizer steps: {steps:.0f} s of {cores} x {end - start:.0f} core-seconds = {100 * steps / core_s:.0f}%")
# Evaluation: each run's time outside its steps (the per-epoch validation and test passes, with its
# checkpoint writes) and the jobs of the stages that evaluate (Snakemake's log: start and finish).
per_epoch = sum(r["wall_seconds"] - r["train_seconds"] for r in runs)
stamp, rule, started, job_s = None, None, {}, {}
for line in Path("pipeline.log").read_text().splitlines():
    if line.startswith("[") and line.endswith("]"):
        stamp = datetime.strptime(line[1:-1], "%a %b %d %H:%M:%S %Y")
    elif m := re.fullmatch(r"(?:local)?rule (\w+):", line):
        rule = m.group(1)
    elif line.strip().startswith("jobid:") and rule in ("evaluate", "corrupt", "cost"):
        started[line.split()[-1]] = (stamp, rule)
    elif line.startswith("Finished jobid:") and (jid := line.split()[2]) in started:
        t0, name = started.pop(jid)
        job_s[name] = job_s.get(name, 0.0) + (stamp - t0).total_seconds()
evaluation = per_epoch + sum(job_s.values())
parts = ", ".join(f"{k} {v:.0f}" for k, v in sorted(job_s.items()))
print(f"evaluation: {evaluation:.0f} s of {core_s:.0f} core-seconds = {100 * evaluation / core_s:.1f}% "
      f"(per-epoch passes and checkpoints {per_epoch:.0f}; jobs: {parts})")
EOF
echo
echo "The frontier (accuracy after each epoch; mde_pp against seeds and wall minutes):"
uv run python benchmarks/laptop_frontier.py . --wall-min "$(( (t2 - t1) / 60 ))"
