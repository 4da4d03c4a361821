"""Benchmark: the sweep that sizes the laptop preset: test accuracy against CPU minutes per model size.

    uv run python benchmarks/laptop_sweep.py --params P --data-dir data/prepared --out sweep \
        [--candidates NAME ...] [--reuse results/runs] [--parallel 2] [--epochs N] [--train-size N]

Each candidate is one training (seed 0, the paper recipe, the laptop preset's data and epochs) of
one size of one of the paper's families, run through ``cnnvit train`` as the preset's jobs run:
``--parallel`` at once, one thread each. ``--params`` is the config the data was prepared under
(a laptop run's ``.snakemake/cnnvit/params.yaml`` will do); each candidate is written into it as
the laptop preset's only model. ``--reuse DIR`` takes the candidates named as the preset's own
models (``resnet50``, ``vit``, ``cnn_vit``) from a laptop run's seed 0 instead of training them
again. Writes ``sweep.csv`` and ``sweep.md`` into ``--out``: the size, forward MFLOPs, minutes of
one run (with ``--parallel`` at once), and the validation and test accuracy at the epoch chosen on
validation, with the test accuracy after each epoch (the frontier along the epochs too).
Run it alone: anything else running slows torch's threads several-fold.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from cnnvit.models import spec_from_dict

ENCODER = {"embed_dim": 64, "depth": 6, "num_heads": 2, "mlp_ratio": 2.0}
CANDIDATES = {  # the preset's sizes (resnet50, vit, cnn_vit) and their neighbours
    "resnet50": {"arch": "resnet50", "layers": [1, 1, 1, 1], "channels": [32, 64, 128, 256], "stem": "imagenet"},
    "resnet50_w24": {"arch": "resnet50", "layers": [1, 1, 1, 1], "channels": [24, 48, 96, 192], "stem": "imagenet"},
    "resnet50_w48": {"arch": "resnet50", "layers": [1, 1, 1, 1], "channels": [48, 96, 192, 384], "stem": "imagenet"},
    "vit": {"arch": "vit", "patch_size": 4, **ENCODER},
    "vit_w48d4": {"arch": "vit", "patch_size": 4, "embed_dim": 48, "depth": 4, "num_heads": 3, "mlp_ratio": 2.0},
    "vit_w96": {"arch": "vit", "patch_size": 4, **ENCODER, "embed_dim": 96, "num_heads": 3},
    "cnn_vit": {"arch": "cnn_vit", "stem_channels": [16, 32, 64], "stem_strides": [1, 2, 2], **ENCODER},
    "cnn_vit_s221": {"arch": "cnn_vit", "stem_channels": [16, 32, 64], "stem_strides": [2, 2, 1], **ENCODER},
    "cnn_vit_w32_s221": {"arch": "cnn_vit", "stem_channels": [32, 48, 64], "stem_strides": [2, 2, 1], **ENCODER},
}


def size(spec: dict) -> str:
    keys = [k for k in spec if k != "arch"]
    return ", ".join(f"{k} {spec[k]}" for k in keys)


def reusable(run_dir: Path, spec: dict) -> bool:
    """A laptop run's seed 0 stands in for a candidate only if it trained that very size."""
    summary = run_dir / "summary.json"
    if not summary.is_file():
        return False
    made = spec_from_dict(json.loads(summary.read_text())["config"]["model"])
    if made != spec_from_dict(spec):
        print(f"{run_dir} trained another size than this candidate's ({size(spec)}): training it", file=sys.stderr)
    return made == spec_from_dict(spec)


def candidate_params(base: dict, name: str, spec: dict, epochs: int | None, train_size: int | None) -> dict:
    cfg = json.loads(json.dumps(base))
    cfg["preset"] = "laptop"
    laptop = cfg["presets"]["laptop"]
    laptop["models"] = {name: spec}
    laptop["runs"] = {"models": [name], "recipes": ["paper"], "seeds": [0]}
    if epochs:
        laptop["epochs"] = epochs
    if train_size is not None:
        laptop["train_size"] = train_size
    cfg["analysis"]["claims"] = []  # one model: no claim to test
    return cfg


def train(name: str, params_file: Path, data_dir: str, out: Path) -> Path:
    log = out / "logs" / f"{name}.log"
    cmd = ["cnnvit", "train", "--model", name, "--recipe", "paper", "--seeds", "0", "--data-dir", data_dir,
           "--runs-dir", str(out / "runs"), "--ckpt-dir", str(out / "checkpoints"), "--params", str(params_file),
           "--threads", "1"]  # fmt: skip
    with log.open("w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode:
        sys.exit(f"error: {name} failed (exit {proc.returncode}); see {log}")
    return out / "runs" / f"{name}-paper-s0"


def row(name: str, spec: dict, run_dir: Path) -> dict:
    s = json.loads((run_dir / "summary.json").read_text())
    with (run_dir / "metrics.csv").open() as f:
        epochs = list(csv.DictReader(f))
    return {
        "candidate": name,
        "arch": spec["arch"],
        "size": size(spec),
        "mflops": s["flops_per_image"] / 1e6,
        "minutes": s["wall_seconds"] / 60,
        "epochs": s["epochs"],
        "selected_epoch": s["selected_epoch"],
        "val_acc": s["selected_val_acc"],
        "test_acc": s["selected_test_acc"],
        "test_acc_by_epoch": " ".join(f"{float(e['test_acc']):.1f}" for e in epochs),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", required=True, help="the config the data was prepared under")
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=list(CANDIDATES))
    ap.add_argument("--reuse", help="a laptop run's results/runs: the preset's own sizes are taken from its seed 0")
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=None, help="default: the laptop preset's")
    ap.add_argument("--train-size", type=int, default=None, help="default: the laptop preset's (all)")
    args = ap.parse_args()
    out = Path(args.out)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    (out / "params").mkdir(exist_ok=True)
    base = yaml.safe_load(Path(args.params).read_text())
    done: dict[str, Path] = {}
    todo = []
    for name in args.candidates:
        kept = Path(args.reuse or "") / f"{name}-paper-s0"
        if args.reuse and reusable(kept, CANDIDATES[name]):
            done[name] = kept
            continue
        path = out / "params" / f"{name}.yaml"
        path.write_text(yaml.safe_dump(candidate_params(base, name, CANDIDATES[name], args.epochs, args.train_size)))
        todo.append((name, path))
    with ThreadPoolExecutor(args.parallel) as pool:
        for (name, _), run_dir in zip(
            todo, pool.map(lambda t: train(t[0], t[1], args.data_dir, out), todo), strict=True
        ):
            done[name] = run_dir
    rows = [row(name, CANDIDATES[name], done[name]) for name in args.candidates]
    with (out / "sweep.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    lines = ["| candidate | size | MFLOPs | minutes | val acc | test acc | test acc after each epoch |",
             "|---|---|---:|---:|---:|---:|---|"]  # fmt: skip
    for r in rows:
        cells = [f"`{r['candidate']}`", r["size"], f"{r['mflops']:.1f}", f"{r['minutes']:.1f}", f"{r['val_acc']:.2f}"]
        lines.append("| " + " | ".join([*cells, f"{r['test_acc']:.2f}", r["test_acc_by_epoch"]]) + " |")
    (out / "sweep.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
