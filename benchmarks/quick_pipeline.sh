#!/usr/bin/env bash
# Benchmark: the whole quick-preset pipeline (5 models x 2 recipes x 3 seeds) from a clean clone
# on real data. Target <= 600 s on a 2-core machine. Run it alone: anything else running slows
# torch's threads several-fold.
#   bash benchmarks/quick_pipeline.sh [ARCHIVE] [--dvc]
# Clones the committed project into a temp dir (your results/ stay untouched and the report's
# provenance names the commit), installs it with `uv sync --locked` (timed apart), then times
# `uv run snakemake --cores all --config preset=quick` (or, with --dvc, `dvc exp run -S
# preset=quick`, which runs its stages one at a time) with data.url pointing at ARCHIVE, and
# prints where the time went.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
archive="$root/../shared/data/cifar10-imagefolder-jpeg.tar.gz"
tool=snakemake
for arg in "$@"; do
  case "$arg" in
    --dvc) tool=dvc ;;
    *) archive="$arg" ;;
  esac
done
archive="$(realpath "$archive")"
sha=b043693fe47f6b4dd6ba3649ebcc0fce6a061ee06a17908e875bb59f3cdc9ee7
work="$(mktemp -d)"
git clone -q "$root" "$work"
cd "$work"
t0=$(date +%s)
uv sync --locked -q
t1=$(date +%s)
echo "uv sync --locked: $((t1 - t0)) s (not counted)"
if [ "$tool" = dvc ]; then
  git config user.email bench@localhost && git config user.name bench
  uv run dvc exp run -S preset=quick -S "data.url=$archive" -S data.format=imagefolder \
    -S data.md5=null -S "data.sha256=$sha"
else
  uv run snakemake --cores all --config preset=quick \
    data="{url: $archive, format: imagefolder, md5: null, sha256: $sha}"
fi
t2=$(date +%s)
echo "quick pipeline ($tool): $((t2 - t1)) s wall (target <= 600); report: $work/report/index.html"
uv run python - "$t1" <<'EOF'
"""Where the time went, from the outputs' modification times and the runs' own summaries."""
import json, sys
from collections import defaultdict
from pathlib import Path

start = float(sys.argv[1])
mtime = lambda p: Path(p).stat().st_mtime - start  # noqa: E731
print(f"download done at {mtime('data/raw/cifar10.tar.gz'):.0f} s, prepare done at {mtime('data/prepared/stats.json'):.0f} s")
per_model = defaultdict(lambda: [0, 0.0, 0.0])
summaries = sorted(Path("results/runs").glob("*/summary.json"))
for path in summaries:
    s = json.loads(path.read_text())
    row = per_model[s["model"]]
    row[0] += 1
    row[1] += s["train_seconds"]
    row[2] += s["wall_seconds"]
for model, (n, train, wall) in per_model.items():
    print(f"{model:>10}: {n} runs, training {train:.0f} s, in-process wall {wall:.0f} s (job-seconds)")
last_run = max(path.stat().st_mtime for path in summaries) - start
print(f"last training done at {last_run:.0f} s; collect, figures and report done at {mtime('report/index.html'):.0f} s")
EOF
cat results/tables/claims.csv
