"""Collect stage: every run's metrics.csv and summary.json -> tidy tables for figures and report.

    cnnvit collect --runs-dir results/runs --out-dir results/tables --metrics results/metrics.json

Writes ``epochs.csv`` (long form: run, model, recipe, seed, epoch, split, metric, value),
``summary.csv`` (one row per model x recipe, mean and std over seeds), ``provenance.json`` beside
them, and ``metrics.json`` for ``dvc metrics show``. The runs collected are exactly those
params.yaml lists, so stale run directories never leak into the report.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cnnvit.artifacts import atomic_path, provenance, read_json, write_json
from cnnvit.config import run_name, runs
from cnnvit.errors import CnnvitError

# metrics.csv column -> (split, metric) in the long table
LONG = {
    "train_loss": ("train", "loss"),
    "train_acc": ("train", "acc"),
    "test_loss": ("test", "loss"),
    "test_acc": ("test", "acc"),
    "lr": ("train", "lr"),
    "epoch_seconds": ("train", "seconds"),
    "train_images_per_s": ("train", "images_per_s"),
    "peak_mem_mb": ("train", "peak_mem_mb"),
}
SUMMARY_MEAN = ["epochs", "best_epoch", "train_seconds", "train_images_per_s", "infer_images_per_s"]
SUMMARY_FIRST = ["params", "flops_per_image", "n_train", "n_test", "device"]


def load_runs(run_list: list[tuple[str, str, int]], runs_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(long per-epoch table, one row per run) for the listed runs."""
    longs, rows = [], []
    for model, recipe, seed in run_list:
        name = run_name(model, recipe, seed)
        d = runs_dir / name
        if not (d / "metrics.csv").exists() or not (d / "summary.json").exists():
            raise CnnvitError(
                f"run {name} has no results in {d}: train it first "
                f"(cnnvit train --model {model} --recipe {recipe} --seed {seed})"
            )
        m = pd.read_csv(d / "metrics.csv")
        long = m.melt(id_vars="epoch", value_vars=list(LONG), var_name="column")
        long["split"] = long["column"].map(lambda c: LONG[c][0])
        long["metric"] = long["column"].map(lambda c: LONG[c][1])
        long = long.assign(run=name, model=model, recipe=recipe, seed=seed)
        longs.append(long[["run", "model", "recipe", "seed", "epoch", "split", "metric", "value"]])
        s = read_json(d / "summary.json")
        rows.append({k: v for k, v in s.items() if k != "provenance"})
    return pd.concat(longs, ignore_index=True), pd.DataFrame(rows)


def summarise(per_run: pd.DataFrame) -> pd.DataFrame:
    """Mean and sample std over seeds of best and final test accuracy, plus costs."""
    g = per_run.groupby(["model", "recipe"], sort=False)
    out = g.agg(
        seeds=("seed", "count"),
        best_test_acc_mean=("best_test_acc", "mean"),
        best_test_acc_std=("best_test_acc", "std"),
        final_test_acc_mean=("final_test_acc", "mean"),
        final_test_acc_std=("final_test_acc", "std"),
        peak_mem_mb=("peak_mem_mb", "max"),
        **{f"{c}": (c, "mean") for c in SUMMARY_MEAN},
        **{f"{c}": (c, "first") for c in SUMMARY_FIRST},
    )
    return out.reset_index()


def dvc_metrics(summary: pd.DataFrame) -> dict:
    return {
        f"{r.model}-{r.recipe}": {
            "best_test_acc": round(float(r.best_test_acc_mean), 4),
            "final_test_acc": round(float(r.final_test_acc_mean), 4),
            "train_seconds": round(float(r.train_seconds), 2),
        }
        for r in summary.itertuples()
    }


def write_csv(df: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def collect(cfg: dict, runs_dir, out_dir, metrics_path) -> pd.DataFrame:
    out_dir = Path(out_dir)
    long, per_run = load_runs(runs(cfg), Path(runs_dir))
    summary = summarise(per_run)
    write_csv(long, out_dir / "epochs.csv")
    write_csv(summary, out_dir / "summary.csv")
    write_csv(per_run, out_dir / "runs.csv")
    write_json(
        out_dir / "provenance.json",
        provenance({"profile": cfg["profile"], "runs": cfg["runs"]}, per_run["device"].iloc[0]),
    )
    write_json(metrics_path, dvc_metrics(summary))
    return summary


def add_args(p) -> None:
    p.add_argument("--runs-dir", default="results/runs")
    p.add_argument("--out-dir", default="results/tables")
    p.add_argument("--metrics", default="results/metrics.json")


def run(args, cfg: dict) -> None:
    summary = collect(cfg, args.runs_dir, args.out_dir, args.metrics)
    cols = ["model", "recipe", "seeds", "best_test_acc_mean", "final_test_acc_mean"]
    print(summary[cols].to_string(index=False, float_format=lambda v: f"{v:.2f}"))
