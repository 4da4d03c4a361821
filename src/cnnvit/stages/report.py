"""Report stage: tables + figures -> one self-contained HTML page (figures inlined as base64).

    cnnvit report --tables-dir results/tables --figures-dir results/figures \
        --template report/template.html.j2 --out report/index.html

The page shows the verdicts ``cnnvit collect`` reached (it decides nothing itself), what differs
from the paper (:mod:`cnnvit.analysis.deviations`), the paper's Tables 1-4 beside this run's numbers with
the paper's own oddities noted where they bear on a comparison, the figures, the data-size study,
efficiency, and the provenance of the runs.
"""

from __future__ import annotations

import base64
import datetime as dt
import math
from pathlib import Path

import jinja2
import pandas as pd
import yaml

from cnnvit.analysis.deviations import deviations
from cnnvit.analysis.paper import NOTES, PAPER_NAME, TABLE_NUMBER, paper_best_final, paper_epochs
from cnnvit.artifacts import read_json, write_text
from cnnvit.config.types import Params
from cnnvit.dag import paths
from cnnvit.errors import CnnvitError
from cnnvit.stages.figures import read_table

COLUMNS = [("train", "loss"), ("train", "acc"), ("test", "loss"), ("test", "acc")]


def fmt(value, digits: int = 2, pct: bool = False, sign: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:{'+' if sign else ''}.{digits}f}{'%' if pct else ''}"


def fmt_seconds(s: float) -> str:
    if s is None or math.isnan(s):
        return "—"
    h, rem = divmod(round(s), 3600)
    m, sec = divmod(rem, 60)
    return f"{h} h {m} m" if h else (f"{m} m {sec} s" if m else f"{sec} s")


def epoch_table(epochs: pd.DataFrame, model: str, recipe: str) -> dict:
    """Mean over seeds of each (split, metric) per epoch, beside the paper's printed values."""
    d = epochs[(epochs.model == model) & (epochs.recipe == recipe) & (epochs.fraction == 1.0)]
    ours = d.groupby(["epoch", "split", "metric"]).value.mean()
    paper = paper_epochs().query("model == @model").set_index("epoch")
    has_paper = model in TABLE_NUMBER
    rows = []
    for e in sorted({int(v) for v in d.epoch} | (set(paper.index) if has_paper else set())):
        row = {"epoch": e, "ours": [fmt(ours.get((e, s, m)), 4 - 2 * (m == "acc"), m == "acc") for s, m in COLUMNS]}
        if has_paper:
            p = paper.loc[e] if e in paper.index else None
            get = lambda c, p=p: None if p is None or pd.isna(p[c]) else float(p[c])  # noqa: E731
            row["paper"] = [fmt(get(f"{s}_{m}"), 4 - 2 * (m == "acc"), m == "acc") for s, m in COLUMNS]
            row["paper_loss"] = fmt(get("loss"), 4)
        rows.append(row)
    return {
        "model": model,
        "name": d.label.iloc[0] if len(d) else model,
        "number": TABLE_NUMBER.get(model),
        "recipe": recipe,
        "rows": rows,
        "notes": NOTES.get(model, []),
        "split_loss": model == "cnn_vit",
    }


def table4(summary: pd.DataFrame, recipe: str) -> list[dict]:
    paper = paper_best_final().set_index("model")
    rows = []
    for r in summary[(summary.recipe == recipe) & (summary.fraction == 1.0)].itertuples():
        p = paper.loc[r.model] if r.model in paper.index else None
        rows.append(
            {
                "name": r.label,
                "train_time": fmt_seconds(r.train_seconds),
                "wall_time": fmt_seconds(r.wall_seconds),
                "epochs": fmt(r.epochs, 0),
                "best_epoch": fmt(r.best_epoch, 1 if r.best_epoch % 1 else 0),
                "best": fmt(r.best_test_acc_mean, 2, True),
                "std": fmt(r.best_test_acc_std, 2),
                "final": fmt(r.final_test_acc_mean, 2, True),
                "seeds": int(r.seeds),
                "se": fmt(r.binomial_se_pp, 2),
                "paper_time": fmt_seconds(p.hours * 3600) if p is not None else "—",
                "paper_epochs": int(p.epochs) if p is not None else "—",
                "paper_t4": fmt(p.table4_best, 2, True) if p is not None else "—",
                "paper_best": f"{p.best:.2f}% (epoch {int(p.best_epoch)})" if p is not None else "—",
                "paper_final": f"{p.final:.2f}% (epoch {int(p.final_epoch)})" if p is not None else "—",
                "diff": fmt(r.best_test_acc_mean - p.table4_best, 2, sign=True) if p is not None else "—",
            }
        )
    return rows


def claim_rows(claims: pd.DataFrame) -> list[dict]:
    return [
        {
            "claim": c.claim,
            "recipe": c.recipe,
            "verdict": c.verdict,
            "seeds": f"{c.seeds_winner} / {c.seeds_loser}",
            "diff": fmt(c.diff_pp, 2, sign=True),
            "ci": f"[{fmt(c.ci_low_pp, 2, sign=True)}, {fmt(c.ci_high_pp, 2, sign=True)}]",
            "paper": fmt(c.paper_diff_pp, 2, sign=True),
            "share": fmt(100 * c.diff_pp / c.paper_diff_pp, 0) + "%" if c.paper_diff_pp else "—",
        }
        for c in claims.itertuples()
    ]


def efficiency(summary: pd.DataFrame) -> list[dict]:
    rows = []
    for r in summary[summary.fraction == 1.0].itertuples():
        pf = r.train_pflops
        rows.append(
            {
                "name": r.label,
                "recipe": r.recipe,
                "params": fmt(r.params / 1e6, 2) + " M",
                "gflops": fmt(r.flops_per_image / 1e9, 3),
                "gmacs": fmt(r.flops_per_image / 2e9, 3),
                "train_ips": f"{r.train_images_per_s:,.0f}",
                "infer_ips": f"{r.infer_images_per_s:,.0f}",
                "peak_mem": f"{r.peak_mem_mb:,.0f}",
                "pflops": fmt(pf, 4),
                "acc_per_pflop": fmt(r.best_test_acc_mean / pf, 1) if pf and pf > 0 else "—",
            }
        )
    return rows


def datasize_section(size: pd.DataFrame, pairs: pd.DataFrame) -> dict:
    names = dict(zip(size.model, size.label, strict=True))
    rows = [
        {
            "name": r.label,
            "recipe": r.recipe,
            "fraction": f"{r.fraction:g}",
            "images": fmt(r.train_images, 0),
            "mean": fmt(r.best_test_acc_mean, 2, True),
            "std": fmt(r.best_test_acc_std, 2),
            "ci": f"[{fmt(r.best_test_acc_ci_low, 2)}, {fmt(r.best_test_acc_ci_high, 2)}]",
            "seeds": int(r.seeds),
        }
        for r in size.itertuples()
    ]
    crossings = []
    if len(pairs):
        for (a, b, recipe), g in pairs.groupby(["a", "b", "recipe"], sort=False):
            crossings.append({"pair": f"{names[a]} vs {names[b]}", "recipe": recipe, "text": g.text.iloc[0]})
    return {"rows": rows, "crossings": crossings, "fractions": sorted(set(size.fraction))}


def inline_png(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def render(params: Params, tables_dir, figures_dir, template: Path) -> str:
    tables_dir, figures_dir = Path(tables_dir), Path(figures_dir)
    tables = ("epochs", "runs", "summary", "claims", "variants", "datasize", "datasize_pairs")
    t = {n: read_table(tables_dir, f"{n}.csv") for n in tables}
    names = dict(zip(t["summary"].model, t["summary"].label, strict=False))
    prov = read_json(tables_dir / "provenance.json", "run `cnnvit collect` again")
    if not (figures_dir / "test_acc.png").exists():
        raise CnnvitError(f"{figures_dir / 'test_acc.png'} not found: run `cnnvit figures` first")
    if not template.exists():
        raise CnnvitError(f"report template {template} not found: pass --template")
    recipes = list(dict.fromkeys(t["summary"].recipe))
    models = sorted(dict.fromkeys(t["summary"].model), key=lambda m: (TABLE_NUMBER.get(m, 9), m))
    spread, paper = "Bands: ±1 s.d. over seeds", "dashed: the paper's values"
    figs = [(f"Figure 6 analogue: test accuracy of every model. {spread}; {paper}.", "test_acc.png")]
    for m in models:  # the paper's Figures 3-5 follow its Tables 1-3
        title = f"Figure {TABLE_NUMBER[m] + 2} analogue" if m in TABLE_NUMBER else "Extra figure"
        notes = f"{spread}; {paper}" if m in TABLE_NUMBER else spread
        if m == "vit":
            notes += " (its test loss is left out: the paper's is on another scale, see Table 1's notes)"
        figs.append((f"{title}: {names[m]} loss and accuracy. {notes}.", f"curves_{m}.png"))
    figs.append((f"Best test accuracy per model and recipe. Error bars: ±1 s.d. over seeds; {paper}.", "best_acc.png"))
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(template.parent), autoescape=True, undefined=jinja2.StrictUndefined
    )
    prof = params.active
    full = t["runs"][t["runs"].fraction == 1.0]
    n_train, n_test = int(full.n_train.max()), int(full.n_test.max())
    return env.get_template(template.name).render(
        preset=params.preset,
        paper_scale=n_train >= 50_000 and n_test >= 10_000,
        prof=prof,
        n_train=n_train,
        n_test=n_test,
        recipes=recipes,
        claims=claim_rows(t["claims"]),
        variants=claim_rows(t["variants"]),
        single_seed=bool((t["claims"][["seeds_winner", "seeds_loser"]] < 2).any().any()) if len(t["claims"]) else True,
        deviations=deviations(params, t["runs"]),
        table4={r: table4(t["summary"], r) for r in recipes},
        epoch_tables=[epoch_table(t["epochs"], m, r) for m in models for r in recipes],
        general_notes=NOTES["all"],
        efficiency=efficiency(t["summary"]),
        datasize=datasize_section(t["datasize"], t["datasize_pairs"]),
        budget=params.runs.fraction_budget,
        figures=[(title, inline_png(figures_dir / f)) for title, f in figs if (figures_dir / f).exists()],
        datasize_fig=inline_png(figures_dir / "datasize.png") if (figures_dir / "datasize.png").exists() else None,
        cost_fig=inline_png(figures_dir / "cost.png") if (figures_dir / "cost.png").exists() else None,
        provenance=prov,
        paper_models=PAPER_NAME,
        params_yaml=yaml.safe_dump(params.raw, sort_keys=False),
        rendered=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    )


def add_args(p) -> None:
    p.add_argument("--tables-dir", default=paths.TABLES_DIR)
    p.add_argument("--figures-dir", default=paths.FIGURES_DIR)
    p.add_argument("--template", default=paths.TEMPLATE)
    p.add_argument("--out", default=paths.REPORT)


def run(args, params: Params) -> None:
    write_text(args.out, render(params, args.tables_dir, args.figures_dir, Path(args.template)))
    print(f"wrote {args.out}")
