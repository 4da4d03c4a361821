#!/usr/bin/env bash
# Benchmark: the whole quick-profile pipeline from a clean state on real data. Target <= 10 min.
#   bash benchmarks/quick_pipeline.sh [ARCHIVE]
# Clones the committed project into a temp dir (so your results/ stay untouched and the report's
# provenance names the commit) and times `snakemake --cores all --config profile=quick` with
# data.url pointing at ARCHIVE.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
archive="${1:-$root/../shared/data/cifar10-imagefolder-jpeg.tar.gz}"
sha=b043693fe47f6b4dd6ba3649ebcc0fce6a061ee06a17908e875bb59f3cdc9ee7
work="$(mktemp -d)"
git clone -q "$root" "$work"
export PATH="$root/.venv/bin:$PATH"
cd "$work"
start=$(date +%s)
snakemake --cores all --config profile=quick \
  data="{url: $archive, format: imagefolder, sha256: $sha}"
end=$(date +%s)
echo "quick pipeline: $((end - start)) s wall (target <= 600); report: $work/report/index.html"
cat results/metrics.json
