"""Figures stage: the collected tables -> seaborn PNGs, the analogues of the paper's Figures 3-6.

    cnnvit figures --tables-dir results/tables --out-dir results/figures

- ``curves_{model}.png``: train and test loss and accuracy against epoch (Figures 3-5);
- ``test_acc.png``: every model's test accuracy against epoch, seed spread as a band (Figure 6);
- ``best_acc.png``: best test accuracy per model and recipe, the paper's value marked.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: no display on CI or on a training box

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from matplotlib.ticker import MaxNLocator

from cnnvit.artifacts import atomic_path
from cnnvit.errors import CnnvitError
from cnnvit.paper import DISPLAY, paper_table4

DPI = 110


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)


def curves(epochs: pd.DataFrame, model: str) -> plt.Figure:
    d = epochs[(epochs.model == model) & epochs.metric.isin(["loss", "acc"])]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, metric, label in zip(axes, ["loss", "acc"], ["loss", "accuracy (%)"], strict=True):
        sns.lineplot(
            data=d[d.metric == metric], x="epoch", y="value", hue="split", style="recipe",
            errorbar="sd", marker="o", ax=ax,
        )  # fmt: skip
        ax.set(ylabel=label, title=f"{DISPLAY.get(model, model)}: {label}")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0].get_legend().remove()
    sns.move_legend(axes[1], "upper left", bbox_to_anchor=(1.02, 1), frameon=False)
    fig.tight_layout()
    return fig


def test_acc_all(epochs: pd.DataFrame) -> plt.Figure:
    d = epochs[(epochs.split == "test") & (epochs.metric == "acc")].copy()
    d["model"] = d.model.map(lambda m: DISPLAY.get(m, m))
    fig, ax = plt.subplots(figsize=(7, 4.2))
    sns.lineplot(data=d, x="epoch", y="value", hue="model", style="recipe", errorbar="sd", ax=ax)
    ax.set(ylabel="test accuracy (%)", title="Test accuracy of every model (band: seed spread)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    sns.move_legend(ax, "upper left", bbox_to_anchor=(1.02, 1), frameon=False)
    ax.grid(alpha=0.3)
    return fig


def best_acc_bars(summary: pd.DataFrame) -> plt.Figure:
    d = summary.copy()
    d["label"] = d.model.map(lambda m: DISPLAY.get(m, m))
    order = list(dict.fromkeys(d.label))
    fig, ax = plt.subplots(figsize=(7, 4.2))
    sns.barplot(data=d, x="label", y="best_test_acc_mean", hue="recipe", order=order, ax=ax)
    paper = paper_table4().set_index("model")["best_test_acc"]
    for i, label in enumerate(order):
        model = d.loc[d.label == label, "model"].iloc[0]
        if model in paper.index:
            ax.plot([i - 0.4, i + 0.4], [paper[model]] * 2, color="black", ls="--", lw=1.5)
            ax.annotate(f"paper {paper[model]:.2f}", (i, paper[model]), ha="center",
                        va="bottom", fontsize=8)  # fmt: skip
    ax.set(xlabel="", ylabel="best test accuracy (%)", title="Best test accuracy (dashed: paper)")
    sns.move_legend(ax, "upper left", bbox_to_anchor=(1.02, 1), frameon=False, title="recipe")
    ax.grid(axis="y", alpha=0.3)
    return fig


def figures(tables_dir, out_dir) -> list[Path]:
    tables_dir, out_dir = Path(tables_dir), Path(out_dir)
    for name in ("epochs.csv", "summary.csv"):
        if not (tables_dir / name).exists():
            raise CnnvitError(f"{tables_dir / name} not found: run `cnnvit collect` first")
    sns.set_theme(style="whitegrid", context="notebook")
    epochs = pd.read_csv(tables_dir / "epochs.csv")
    summary = pd.read_csv(tables_dir / "summary.csv")
    written = []
    for model in dict.fromkeys(epochs.model):
        _save(curves(epochs, model), p := out_dir / f"curves_{model}.png")
        written.append(p)
    _save(test_acc_all(epochs), p := out_dir / "test_acc.png")
    written.append(p)
    _save(best_acc_bars(summary), p := out_dir / "best_acc.png")
    written.append(p)
    return written


def add_args(p) -> None:
    p.add_argument("--tables-dir", default="results/tables")
    p.add_argument("--out-dir", default="results/figures")


def run(args, cfg: dict) -> None:
    for path in figures(args.tables_dir, args.out_dir):
        print(f"wrote {path}")
