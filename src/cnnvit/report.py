"""Report stage: tables + figures -> one self-contained HTML page (figures inlined as base64).

    cnnvit report --tables-dir results/tables --figures-dir results/figures \
        --template report/template.html.j2 --out report/index.html

The page holds the paper's Tables 1-3 (per-epoch curves, this run beside the paper's), Table 4,
the figures, an efficiency table, a statement of which claims this run reproduces (computed from
the numbers) and the provenance of the run.
"""

from __future__ import annotations

import base64
import datetime as dt
import math
from pathlib import Path

import jinja2
import pandas as pd
import yaml

from cnnvit.artifacts import read_json, write_text
from cnnvit.errors import CnnvitError
from cnnvit.paper import CLAIMS, DISPLAY, TABLE_NUMBER, paper_epochs, paper_table4

COLUMNS = [("train", "loss"), ("train", "acc"), ("test", "loss"), ("test", "acc")]


def fmt(value, digits: int = 2, pct: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.{digits}f}{'%' if pct else ''}"


def fmt_seconds(s: float) -> str:
    h, rem = divmod(round(s), 3600)
    m, sec = divmod(rem, 60)
    return f"{h} h {m} m" if h else (f"{m} m {sec} s" if m else f"{sec} s")


def epoch_table(epochs: pd.DataFrame, paper: pd.DataFrame, model: str, recipe: str) -> dict:
    """Mean over seeds of each (split, metric) per epoch, beside the paper's published value."""
    d = epochs[(epochs.model == model) & (epochs.recipe == recipe)]
    ours = d.groupby(["epoch", "split", "metric"]).value.mean()
    theirs = paper[paper.model == model].set_index(["epoch", "split", "metric"]).value
    # Only epochs either side has: the paper's lone best-epoch value must not pad the table.
    rows = []
    for e in sorted({int(v) for v in [*d.epoch, *paper[paper.model == model].epoch]}):
        row = {"epoch": e, "ours": [], "paper": []}
        for split, metric in COLUMNS:
            pct = metric == "acc"
            row["ours"].append(fmt(ours.get((e, split, metric)), 4 - 2 * pct, pct))
            row["paper"].append(fmt(theirs.get((e, split, metric)), 4 - 2 * pct, pct))
        rows.append(row)
    return {
        "model": model,
        "name": DISPLAY.get(model, model),
        "number": TABLE_NUMBER.get(model),
        "recipe": recipe,
        "rows": rows,
        "paper_cells": int(theirs.notna().sum()),
    }


def table4(summary: pd.DataFrame, recipe: str) -> list[dict]:
    paper = paper_table4().set_index("model")
    rows = []
    for r in summary[summary.recipe == recipe].itertuples():
        p = paper.loc[r.model] if r.model in paper.index else None
        rows.append({
            "name": DISPLAY.get(r.model, r.model),
            "time": fmt_seconds(r.train_seconds),
            "epochs": int(r.epochs),
            "best_epoch": fmt(r.best_epoch, 0 if float(r.best_epoch).is_integer() else 1),
            "best": fmt(r.best_test_acc_mean, 2, True),
            "std": fmt(r.best_test_acc_std, 2),
            "seeds": int(r.seeds),
            "paper_time": p["time"] if p is not None else "—",
            "paper_epochs": int(p["epochs"]) if p is not None else "—",
            "paper_best": fmt(p["best_test_acc"], 2, True) if p is not None else "—",
            "diff": fmt(r.best_test_acc_mean - p["best_test_acc"], 2) if p is not None else "—",
        })  # fmt: skip
    return rows


def claims(summary: pd.DataFrame) -> list[dict]:
    """Each paper claim, judged per recipe from best test accuracy (mean over seeds)."""
    acc = summary.set_index(["model", "recipe"])
    out = []
    for winner, loser, text in CLAIMS:
        for recipe in dict.fromkeys(summary.recipe):
            if (winner, recipe) not in acc.index or (loser, recipe) not in acc.index:
                continue
            a, b = acc.loc[(winner, recipe)], acc.loc[(loser, recipe)]
            diff = a.best_test_acc_mean - b.best_test_acc_mean
            noise = max(a.best_test_acc_std, b.best_test_acc_std)
            if not math.isnan(noise) and abs(diff) <= 2 * noise:
                verdict = "inconclusive"
            else:
                verdict = "reproduced" if diff > 0 else "not reproduced"
            out.append({
                "claim": text,
                "recipe": recipe,
                "verdict": verdict,
                "detail": f"{DISPLAY.get(winner, winner)} {a.best_test_acc_mean:.2f}% vs "
                f"{DISPLAY.get(loser, loser)} {b.best_test_acc_mean:.2f}% "
                f"({diff:+.2f} pp, {int(min(a.seeds, b.seeds))} seed(s))",
            })  # fmt: skip
    return out


def efficiency(summary: pd.DataFrame) -> list[dict]:
    return [
        {
            "name": DISPLAY.get(r.model, r.model),
            "recipe": r.recipe,
            "params": f"{r.params / 1e6:.2f} M",
            "gflops": f"{r.flops_per_image / 1e9:.3f}",
            "train_ips": f"{r.train_images_per_s:,.0f}",
            "infer_ips": f"{r.infer_images_per_s:,.0f}",
            "peak_mem": f"{r.peak_mem_mb:,.0f}",
        }
        for r in summary.itertuples()
    ]


def inline_png(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def render(cfg: dict, tables_dir, figures_dir, template: Path) -> str:
    tables_dir, figures_dir = Path(tables_dir), Path(figures_dir)
    for need in (
        tables_dir / "epochs.csv",
        tables_dir / "summary.csv",
        figures_dir / "test_acc.png",
    ):
        if not need.exists():
            raise CnnvitError(f"{need} not found: run `cnnvit collect` and `cnnvit figures` first")
    if not template.exists():
        raise CnnvitError(f"report template {template} not found: pass --template")
    epochs = pd.read_csv(tables_dir / "epochs.csv")
    summary = pd.read_csv(tables_dir / "summary.csv")
    prov = read_json(tables_dir / "provenance.json")
    recipes = list(dict.fromkeys(summary.recipe))
    main_recipe = "paper" if "paper" in recipes else recipes[0]
    models = list(dict.fromkeys(summary.model))
    paper = paper_epochs()
    ordered = sorted(models, key=lambda m: TABLE_NUMBER.get(m, 99))
    figs = [("Figure 6 analogue: test accuracy of all models", figures_dir / "test_acc.png")]
    figs += [
        (
            f"Figures 3-5 analogue: {DISPLAY.get(m, m)} loss and accuracy",
            figures_dir / f"curves_{m}.png",
        )
        for m in ordered
    ]
    figs.append(("Best test accuracy per model and recipe", figures_dir / "best_acc.png"))
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(template.parent),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    return env.get_template(template.name).render(
        profile=cfg["profile"],
        quick=cfg["profile"] != "paper",
        prof=cfg["profiles"][cfg["profile"]],
        main_recipe=main_recipe,
        recipes=recipes,
        epoch_tables=[epoch_table(epochs, paper, m, r) for m in ordered for r in recipes],
        table4={r: table4(summary, r) for r in recipes},
        claims=claims(summary),
        efficiency=efficiency(summary),
        figures=[(title, inline_png(p)) for title, p in figs if p.exists()],
        provenance=prov,
        params_yaml=yaml.safe_dump(cfg, sort_keys=False),
        rendered=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    )


def add_args(p) -> None:
    p.add_argument("--tables-dir", default="results/tables")
    p.add_argument("--figures-dir", default="results/figures")
    p.add_argument("--template", default="report/template.html.j2")
    p.add_argument("--out", default="report/index.html")


def run(args, cfg: dict) -> None:
    write_text(args.out, render(cfg, args.tables_dir, args.figures_dir, Path(args.template)))
    print(f"wrote {args.out}")
