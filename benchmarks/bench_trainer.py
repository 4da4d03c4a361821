"""Benchmark: the trainer's step against a bare training loop, per model. Target ratio >= 0.95.

    uv run python benchmarks/bench_trainer.py --data-dir data/prepared [--preset quick] [--threads 2]

Runs `cnnvit bench` (see `cnnvit.bench`) on prepared data and checks `trainer_vs_bare` for every
model. Prepare the data first (`cnnvit download` + `cnnvit prepare`, or the DAG).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", default="data/prepared")
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--recipe", default="modern")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--min-ratio", type=float, default=0.95)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench.json"
        cmd = [sys.executable, "-m", "cnnvit.cli", "bench", "--params", str(ROOT / "params.yaml"),
               "--set", f"preset={args.preset}", "--data-dir", args.data_dir, "--out", str(out),
               "--recipe", args.recipe, "--steps", str(args.steps)]  # fmt: skip
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        subprocess.run(cmd, check=True)
        result = json.loads(out.read_text())
    print(f"device: {result['device']}")
    ok = True
    for name, m in result["models"].items():
        passed = m["trainer_vs_bare"] >= args.min_ratio
        ok &= passed
        print(f"{name:>10}: ratio {m['trainer_vs_bare']:.3f} {'PASS' if passed else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
