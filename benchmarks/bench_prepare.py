"""Benchmark: `cnnvit prepare` on the real CIFAR-10 archive. Target: <= 30 s wall, <= 1.5 GB RSS.

    uv run python benchmarks/bench_prepare.py [ARCHIVE] [--sha256 HASH]

ARCHIVE defaults to ../shared/data/cifar10-imagefolder-jpeg.tar.gz (imagefolder, JPEG). It runs
download (a verified local copy) and then times prepare alone in a child process, reading the
child's peak RSS from the kernel. Exits non-zero when a target is missed.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT = Path(__file__).resolve().parents[2] / "shared/data/cifar10-imagefolder-jpeg.tar.gz"
SHA256 = "b043693fe47f6b4dd6ba3649ebcc0fce6a061ee06a17908e875bb59f3cdc9ee7"
ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("archive", nargs="?", default=str(DEFAULT))
    ap.add_argument("--sha256", default=SHA256)
    ap.add_argument("--max-seconds", type=float, default=30.0)
    ap.add_argument("--max-rss-mb", type=float, default=1536.0)
    args = ap.parse_args()
    sets = ["--set", f"data.url={args.archive}", "--set", "data.format=imagefolder",
            "--set", f"data.sha256={args.sha256}"]  # fmt: skip
    cnnvit = [sys.executable, "-m", "cnnvit.cli"]
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.tar.gz"
        params = ["--params", str(ROOT / "params.yaml")]
        subprocess.run([*cnnvit, "download", *params, "--out", str(raw), *sets], check=True)
        start = time.perf_counter()
        subprocess.run([*cnnvit, "prepare", *params, "--raw", str(raw), "--out-dir",
                        str(Path(tmp) / "prepared"), *sets], check=True)  # fmt: skip
        wall = time.perf_counter() - start
    rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    ok = wall <= args.max_seconds and rss_mb <= args.max_rss_mb
    print(f"prepare: {wall:.1f} s wall (target <= {args.max_seconds:.0f}), peak RSS {rss_mb:.0f} MB "
          f"(target <= {args.max_rss_mb:.0f}): {'PASS' if ok else 'FAIL'}")  # fmt: skip
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
