"""Figures stage: the collected tables -> PNGs, the analogues of the paper's Figures 3-6 and more.

    cnnvit figures --tables-dir results/tables --out-dir results/figures

- ``curves_{model}.png`` (Figures 3-5): loss and accuracy against epoch, train, validation and
  test, one line per recipe with a band of +-1 s.d. over seeds; the paper's own curves dashed;
- ``test_acc.png`` (Figure 6): every model's test accuracy against epoch, the paper's dashed;
- ``accuracy.png``: test accuracy at the epoch chosen on validation, per model and recipe (error
  bars +-1 s.d. over seeds), the best test accuracy over epochs as an optimistic marker, and Table
  4's values;
- ``confusion_{model}.png``: the confusion matrix at the selected epoch, pooled over seeds, one
  panel per recipe;
- ``datasize.png`` (when two or more training-set sizes ran): test accuracy against training
  images (log x), one panel per recipe;
- ``cost.png``: test accuracy against training compute (PFLOPs, log x);
- ``robustness.png``: accuracy against corruption severity per model; ``attention_{model}.png``:
  per layer, the mean attention distance over a run's heads and the range its heads span, each
  averaged over seeds (heads are not matched across seeds); ``cost_size.png``: FLOPs and latency by
  input size.

All of them are drawn into a temporary directory that replaces ``--out-dir`` only when complete.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: no display on CI or on a training box

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from matplotlib.ticker import MaxNLocator, NullFormatter

from cnnvit import paths
from cnnvit.errors import CnnvitError
from cnnvit.files import atomic_dir, check_tables_made_with
from cnnvit.paper import MODELS, PAPER_NAME, TABLE_NUMBER, paper_epochs, paper_table4
from cnnvit.stage import Out, Stage

STAGE = Stage(
    name="figures",
    help="tables -> PNG figures",
    cmd=f"cnnvit figures --tables-dir {paths.TABLES_DIR} --out-dir {paths.FIGURES_DIR}",
    deps=paths.TABLES,
    outs=(Out(paths.FIGURES_DIR, directory=True, report="Figures"),),
)

DPI = 110
PAPER_STYLE = {"color": "black", "ls": "--", "lw": 1.4, "marker": "x", "ms": 4}


def legend(ax, **kw) -> None:
    """The axes' legend, where something on them is labelled: a plot with no data (every run
    without the column it plots) gets none, not matplotlib's "No artists with labels" warning."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**kw)
    elif ax.get_legend() is not None:  # seaborn's own, empty
        ax.get_legend().remove()


def _paper_series(model: str, column: str) -> pd.DataFrame:
    p = paper_epochs()
    p = p[(p.model == model) & p[column].notna()]
    if column == "test_loss" and not MODELS[model].test_loss_comparable:
        return p.iloc[0:0]  # on another scale (see cnnvit.paper.NOTES): not drawn beside per-image losses
    return p


def curves(epochs: pd.DataFrame, model: str) -> plt.Figure:
    d = epochs[(epochs.model == model) & (epochs.fraction == 1.0) & epochs.metric.isin(["loss", "acc"])]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, metric, ylabel in zip(axes, ["loss", "acc"], ["loss", "accuracy (%)"], strict=True):
        sns.lineplot(
            data=d[d.metric == metric],
            x="epoch",
            y="value",
            hue="split",
            style="recipe",
            errorbar="sd",
            marker="o",
            ax=ax,
        )
        if model in TABLE_NUMBER:
            for split in ("train", "test"):
                p = _paper_series(model, f"{split}_{metric}")
                if len(p):
                    ax.plot(
                        p.epoch,
                        p[f"{split}_{metric}"],
                        label=f"paper, {split}",
                        alpha=0.45 if split == "train" else 1,
                        **PAPER_STYLE,
                    )
            if metric == "loss" and not MODELS[model].loss_split_stated:
                p = paper_epochs().query("model == @model")
                ax.plot(p.epoch, p.loss, label="paper (split not stated)", **{**PAPER_STYLE, "color": "grey"})
        ax.set(ylabel=ylabel, title=f"{d.label.iloc[0]}: {ylabel}")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0].get_legend().remove()
    legend(axes[1], loc="upper left", bbox_to_anchor=(1.02, 1), frameon=False, fontsize=8)
    fig.tight_layout()
    return fig


def test_acc_all(epochs: pd.DataFrame) -> plt.Figure:
    d = epochs[(epochs.split == "test") & (epochs.metric == "acc") & (epochs.fraction == 1.0)].copy()
    fig, ax = plt.subplots(figsize=(8, 4.4))
    sns.lineplot(
        data=d.rename(columns={"label": "model", "model": "name"}),
        x="epoch",
        y="value",
        hue="model",
        style="recipe",
        errorbar="sd",
        ax=ax,
    )
    paper = paper_epochs().dropna(subset=["test_acc"])
    for model, g in paper.groupby("model", sort=False):
        ax.plot(g.epoch, g.test_acc, ls="--", lw=1.2, color="grey")
        ax.annotate(
            f"paper {PAPER_NAME[model]}",
            (g.epoch.iloc[-1], g.test_acc.iloc[-1]),
            fontsize=7,
            color="dimgrey",
            xytext=(0, 4),  # above the curve's last point, inside the axes, clear of the legend
            textcoords="offset points",
            ha="right",
            va="bottom",
        )
    ax.set(ylabel="test accuracy (%)", title="Test accuracy of every model (band: +-1 s.d. over seeds; dashed: paper)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    legend(ax, loc="upper left", bbox_to_anchor=(1.02, 1), frameon=False, fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def accuracy_bars(summary: pd.DataFrame) -> plt.Figure:
    d = summary[summary.fraction == 1.0].copy()
    models, recipes = list(dict.fromkeys(d.label)), list(dict.fromkeys(d.recipe))
    fig, ax = plt.subplots(figsize=(8, 4.4))
    width = 0.8 / len(recipes)
    colors = sns.color_palette(n_colors=len(recipes))
    for j, recipe in enumerate(recipes):
        r = d[d.recipe == recipe].set_index("label").reindex(models)
        xs = [i - 0.4 + width * (j + 0.5) for i in range(len(models))]
        ax.bar(
            xs,
            r.selected_test_acc_mean,
            width,
            yerr=r.selected_test_acc_std.fillna(0),
            capsize=3,
            label=recipe,
            color=colors[j],
        )
        best = "best over epochs (chosen on test)" if j == 0 else None
        ax.scatter(xs, r.best_test_acc_mean, marker="v", facecolors="none", edgecolors="black", s=30, label=best)
    paper = paper_table4().set_index("model")["best_test_acc"]
    for i, model in enumerate(dict.fromkeys(d.model)):
        if model in paper.index:
            ax.plot([i - 0.4, i + 0.4], [paper[model]] * 2, color="black", ls="--", lw=1.5)
            ax.annotate(f"paper {paper[model]:.2f}", (i, paper[model]), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(models)), [m.replace(" (", "\n(") for m in models])  # a variant's name on its own line
    ax.set(
        ylabel="test accuracy (%)",
        title="Test accuracy at the epoch chosen on validation (error bars: +-1 s.d. over seeds; dashed: paper)",
    )
    legend(ax, title="recipe", loc="upper left", bbox_to_anchor=(1.02, 1), frameon=False)
    ax.grid(axis="y", alpha=0.3)
    return fig


def datasize_plot(per_run: pd.DataFrame) -> plt.Figure:
    recipes = list(dict.fromkeys(per_run.recipe))
    fig, axes = plt.subplots(1, len(recipes), figsize=(5.5 * len(recipes), 4.2), squeeze=False, sharey=True)
    d = per_run
    for ax, recipe in zip(axes[0], recipes, strict=True):
        mine = d[d.recipe == recipe]
        sns.lineplot(data=mine, x="n_train", y="selected_test_acc", hue="label", errorbar="sd", marker="o", ax=ax)
        ax.set(xscale="log", xlabel="training images (log)", ylabel="test accuracy (%)", title=f"recipe {recipe}")
        sizes = sorted(d.n_train.unique())  # ticks at the sizes trained, as plain numbers
        ax.set_xticks(sizes, [f"{int(n):,}" for n in sizes])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.grid(alpha=0.3, which="both")
        legend(ax, fontsize=8, title=None)
    fig.suptitle("How much data does each model need? (band: +-1 s.d. over seeds)")
    fig.tight_layout()
    return fig


def cost_plot(summary: pd.DataFrame) -> plt.Figure:
    d = summary[summary.train_pflops.notna() & (summary.train_pflops > 0)]
    d = d.rename(columns={"model": "name", "label": "model"})  # the legend's header reads "model"
    fig, ax = plt.subplots(figsize=(7, 4.2))
    sns.scatterplot(data=d, x="train_pflops", y="selected_test_acc_mean", hue="model", style="recipe", s=70, ax=ax)
    ax.set(
        xscale="log",
        xlabel="training compute (PFLOPs, 3x forward, log)",
        ylabel="test accuracy (%), selected epoch",
        title="Cost against accuracy (mean over seeds)",
    )
    legend(ax, loc="upper left", bbox_to_anchor=(1.02, 1), frameon=False, fontsize=8)
    ax.grid(alpha=0.3, which="both")
    return fig


def confusion_plot(confusion: pd.DataFrame, label: str) -> plt.Figure:
    """Row-normalised confusion matrices (percent of each true class), one panel per recipe."""
    recipes = list(dict.fromkeys(confusion.recipe))
    fig, axes = plt.subplots(1, len(recipes), figsize=(5.2 * len(recipes), 4.6), squeeze=False)
    for ax, recipe in zip(axes[0], recipes, strict=True):
        d = confusion[confusion.recipe == recipe]
        order = list(dict.fromkeys(d.true))
        m = d.pivot_table(index="true", columns="predicted", values="count", aggfunc="sum")
        m = m.reindex(index=order, columns=order)
        pct = 100 * m.div(m.sum(axis=1).where(lambda s: s > 0), axis=0)
        sns.heatmap(pct, annot=True, fmt=".0f", cmap="Blues", vmin=0, vmax=100, cbar=False, ax=ax,
                    annot_kws={"fontsize": 7})  # fmt: skip
        ax.set(xlabel="predicted", ylabel="true class", title=f"{label}, recipe {recipe}")
    fig.suptitle("Confusion matrix at the selected epoch, pooled over seeds (% of each true class)")
    fig.tight_layout()
    return fig


def read_table(tables_dir: Path, name: str) -> pd.DataFrame:
    path = tables_dir / name
    if not path.exists():
        raise CnnvitError(f"{path} not found: run `cnnvit collect` first")
    try:
        return pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise CnnvitError(f"{path} is corrupt ({type(exc).__name__}): run `cnnvit collect` again") from None


def robustness_plot(detail: pd.DataFrame, labels: dict[str, str]) -> plt.Figure:
    """Accuracy against severity (0 = clean), averaged over corruptions; one line per model."""
    recipes = list(dict.fromkeys(detail.recipe))
    fig, axes = plt.subplots(1, len(recipes), figsize=(5.5 * len(recipes), 4.2), squeeze=False, sharey=True)
    per_seed = detail.groupby(["model", "recipe", "seed", "severity"], sort=False).acc.mean().reset_index()
    per_seed["model"] = per_seed.model.map(labels)
    for ax, recipe in zip(axes[0], recipes, strict=True):
        d = per_seed[per_seed.recipe == recipe]
        sns.lineplot(data=d, x="severity", y="acc", hue="model", errorbar="sd", marker="o", ax=ax)
        ax.set(xlabel="severity (0 = clean)", ylabel="test accuracy (%)", title=f"recipe {recipe}")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        legend(ax, fontsize=8, title=None)
    fig.suptitle("Accuracy under corruption, mean over corruptions (band: +-1 s.d. over seeds)")
    fig.tight_layout()
    return fig


def attention_plot(attention: pd.DataFrame, label: str) -> plt.Figure:
    """Per layer, the heads of a run as a set: their mean distance (line, +-1 s.d. over seeds) and
    the span from the least to the largest (band: each seed's minimum and maximum over heads,
    averaged over seeds), one panel per recipe. A per-head picture (ViT Fig. 7's dots) would have to
    match heads across seeds, which share nothing but their index."""
    recipes = list(dict.fromkeys(attention.recipe))
    fig, axes = plt.subplots(1, len(recipes), figsize=(5.5 * len(recipes), 4.0), squeeze=False, sharey=True)
    for ax, recipe in zip(axes[0], recipes, strict=True):
        d = attention[attention.recipe == recipe].sort_values("layer")
        ax.fill_between(d.layer, d.min_px, d.max_px, alpha=0.2, label="heads' range (min to max)")
        ax.errorbar(d.layer, d.mean_px, yerr=d.mean_px_sd.fillna(0), marker="o", capsize=3, label="mean over heads")
        ax.set(xlabel="layer", ylabel="mean attention distance (input pixels)", title=f"{label}, recipe {recipe}")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        legend(ax, fontsize=8)
    seeds = int(attention.seeds.max())
    fig.suptitle(f"Where the heads attend: per layer, over each run's heads, then over {seeds} seed(s)")
    fig.tight_layout()
    return fig


def cost_size_plot(cost: pd.DataFrame) -> plt.Figure:
    """Forward FLOPs and batch-1 latency against input size (log-log): attention's quadratic term."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.0))
    d = cost.rename(columns={"model": "name", "label": "model"})
    for ax, col, ylabel in zip(axes, ["flops_per_image", "latency_ms_median"],
                               ["forward GFLOPs per image", "batch-1 latency (ms, median)"], strict=True):  # fmt: skip
        data = d.assign(value=d[col] / (1e9 if col == "flops_per_image" else 1))
        sns.lineplot(data=data, x="size", y="value", hue="model", marker="o", ax=ax)
        ax.set(xscale="log", yscale="log", xlabel="input size (pixels, upsampled)", ylabel=ylabel)
        sizes = sorted(d["size"].unique())
        ax.set_xticks(sizes, [str(s) for s in sizes])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.grid(alpha=0.3, which="both")
        legend(ax, fontsize=8, title=None)
    fig.suptitle(f"What each model costs to run, by input size ({d.device.iloc[0]}, {d.threads.iloc[0]} thread(s))")
    fig.tight_layout()
    return fig


FIGURE_TABLES = ("epochs", "summary", "runs", "confusion", "robustness_detail", "attention", "cost")


def figure_list(t: dict[str, pd.DataFrame]) -> dict[str, tuple]:
    """Every figure these tables (FIGURE_TABLES, by name) give: file name -> (drawing function,
    its arguments). The report asks for exactly these, so a missing one is an error there."""
    epochs, summary = t["epochs"], t["summary"]
    whole = epochs[epochs.fraction == 1.0]
    drawn: dict[str, tuple] = {f"curves_{m}.png": (curves, epochs, m) for m in dict.fromkeys(whole.model)}
    if len(whole):
        drawn |= {"test_acc.png": (test_acc_all, epochs), "accuracy.png": (accuracy_bars, summary)}
    labels = dict(zip(summary.model, summary.label, strict=False))
    for m in dict.fromkeys(t["confusion"].model):
        drawn[f"confusion_{m}.png"] = (confusion_plot, t["confusion"][t["confusion"].model == m], labels.get(m, m))
    if t["runs"].fraction.nunique() >= 2:
        drawn["datasize.png"] = (datasize_plot, t["runs"])
    drawn["cost.png"] = (cost_plot, summary)
    if len(t["robustness_detail"]):
        drawn["robustness.png"] = (robustness_plot, t["robustness_detail"], labels)
    for m in dict.fromkeys(t["attention"].model):
        drawn[f"attention_{m}.png"] = (attention_plot, t["attention"][t["attention"].model == m], labels.get(m, m))
    if len(t["cost"]):
        drawn["cost_size.png"] = (cost_size_plot, t["cost"])
    return drawn


def figures(tables_dir, out_dir) -> list[str]:
    tables_dir = Path(tables_dir)
    t = {n: read_table(tables_dir, f"{n}.csv") for n in FIGURE_TABLES}
    sns.set_theme(style="whitegrid", context="notebook")
    drawn = figure_list(t)
    # Labels come from the data (class and model names): plain text, never TeX or mathtext ($...$)
    plain: dict = {"text.parse_math": False, "text.usetex": False}
    with atomic_dir(out_dir, owned=lambda name: name.endswith(".png")) as tmp, plt.rc_context(plain):
        for name, (fn, *args) in drawn.items():
            fig = fn(*args)
            fig.savefig(tmp / name, format="png", dpi=DPI, bbox_inches="tight")
            plt.close(fig)
    return list(drawn)


def add_args(p) -> None:
    p.add_argument("--tables-dir", default=paths.TABLES_DIR)
    p.add_argument("--out-dir", default=paths.FIGURES_DIR)


def run(args, params) -> None:
    check_tables_made_with(args.tables_dir, params.raw, "figures")
    names = figures(args.tables_dir, args.out_dir)
    print(f"wrote {len(names)} figures to {args.out_dir}: {', '.join(names)}")
