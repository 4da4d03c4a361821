"""Report stage: tables + figures -> one self-contained HTML page (figures inlined as base64).

    cnnvit report --tables-dir results/tables --figures-dir results/figures \
        --template report/template.html.j2 --out report/index.html

The page shows the verdicts ``cnnvit collect`` reached (it decides nothing itself), what differs
from the paper (:mod:`cnnvit.report.deviations`), the paper's Tables 1-4 beside this run's numbers with
the paper's own oddities noted where they bear on a comparison, the figures, the data-size study,
efficiency, and the provenance of the runs.
"""

from __future__ import annotations

import base64
import datetime as dt
from pathlib import Path

import jinja2
import yaml

from cnnvit import paths
from cnnvit.config.types import Params
from cnnvit.errors import CnnvitError
from cnnvit.files import check_tables_made_with, write_text
from cnnvit.paper import MODELS, NOTES, TABLE_NUMBER, unequal_observation
from cnnvit.report.deviations import deviations
from cnnvit.report.sections import (
    attention_sentences,
    calibration_rows,
    claim_rows,
    conclusions,
    cost_rows,
    datasize_section,
    efficiency,
    epoch_table,
    per_class_table,
    robustness_pair_rows,
    robustness_rows,
    table4,
    timing_rows,
    untested,
)
from cnnvit.stage import Out, Stage
from cnnvit.stages.figures import FIGURE_TABLES, figure_list, read_table

STAGE = Stage(
    name="report",
    help="tables + figures -> report/index.html",
    cmd=f"cnnvit report --tables-dir {paths.TABLES_DIR} --figures-dir {paths.FIGURES_DIR} "
    f"--template {paths.TEMPLATE} --out {paths.REPORT}",
    deps=(*paths.TABLES, paths.FIGURES_DIR, paths.TEMPLATE),
    outs=(Out(paths.REPORT, cache=False, report="Report"),),
    params=(
        "preset",
        "data.url",
        "data.md5",
        "data.sha256",
        "data.format",
        "data.expect_train",
        "data.val_size",
        "data.val_seed",
        "runs.models",
        "runs.recipes",
        "runs.seeds",
        "runs.fraction_budget",
        "presets.{preset}.train_size",
        "presets.{preset}.test_size",
        "presets.{preset}.epochs",
        "presets.{preset}.models",
        "recipes",
        "runtime.precision",
        "analysis",
    ),
)


def inline_png(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def figure_captions(names: dict[str, str], models: list[str], drawn: list[str]) -> list[tuple[str, str]]:
    """(caption, file) for every figure of the main gallery, in the paper's order."""
    spread, paper = "Bands: ±1 s.d. over seeds", "dashed: the paper's values"
    out = [(f"Figure 6 analogue: test accuracy of every model. {spread}; {paper}.", "test_acc.png")]
    for m in models:  # the paper's Figures 3-5 follow its Tables 1-3
        title = f"Figure {TABLE_NUMBER[m] + 2} analogue" if m in TABLE_NUMBER else "Extra figure"
        notes = f"{spread}; {paper}" if m in TABLE_NUMBER else spread
        if m in MODELS and not MODELS[m].test_loss_comparable:
            notes += (
                f" (its test loss is left out: the paper's is on another scale, see Table {MODELS[m].table}'s notes)"
            )
        out.append((f"{title}: {names[m]} loss and accuracy (train, validation, test). {notes}.", f"curves_{m}.png"))
    out.append(
        (
            "Test accuracy at the epoch chosen on the validation split, per model and recipe (error bars: ±1 s.d. "
            f"over seeds); triangles: the best test accuracy over epochs, chosen on the test set; {paper}.",
            "accuracy.png",
        )
    )
    out += [
        (f"Confusion matrix of {names[m]} at the selected epoch, pooled over seeds.", f"confusion_{m}.png")
        for m in models
    ]
    return [(caption, f) for caption, f in out if f in drawn]


def mflops_range(summary) -> str:
    """The forward MFLOPs of the runs' models, low to high, for the banner."""
    flops = summary.flops_per_image.dropna() / 1e6 if "flops_per_image" in summary else []
    if not len(flops):
        return "unrecorded"
    low, high = float(min(flops)), float(max(flops))
    return f"{low:,.0f}" if round(low) == round(high) else f"{low:,.0f}-{high:,.0f}"


def render(params: Params, tables_dir, figures_dir, template: Path) -> str:
    tables_dir, figures_dir = Path(tables_dir), Path(figures_dir)
    tables = ("claims", "variants", "datasize", "datasize_pairs", "per_class", "robustness", "robustness_pairs")
    t = {n: read_table(tables_dir, f"{n}.csv") for n in (*tables, *FIGURE_TABLES)}
    prov = check_tables_made_with(tables_dir, params.raw, "report")
    if not template.exists():
        raise CnnvitError(f"report template {template} not found: pass --template")
    drawn = list(figure_list(t))  # what `cnnvit figures` draws from these tables
    for name in drawn:
        if not (figures_dir / name).exists():
            raise CnnvitError(f"{figures_dir / name} not found: run `cnnvit figures` again")
    whole = t["summary"][t["summary"].fraction == 1.0]
    if whole.empty:
        raise CnnvitError(
            "no run trained on the whole training set: the report compares models at fraction 1.0; add 1.0 to "
            "runs.train_fractions"
        )
    names = dict(zip(t["summary"].model, t["summary"].label, strict=False))
    recipes = list(dict.fromkeys(whole.recipe))
    models = sorted(dict.fromkeys(whole.model), key=lambda m: (TABLE_NUMBER.get(m, 9), m))
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(template.parent), autoescape=True, undefined=jinja2.StrictUndefined
    )
    full = t["runs"][t["runs"].fraction == 1.0]
    n_train, n_val, n_test = (int(full[c].max()) for c in ("n_train", "n_val", "n_test"))
    inline = lambda f: inline_png(figures_dir / f) if f in drawn else None  # noqa: E731
    return env.get_template(template.name).render(
        preset=params.preset,
        full_data=n_train + n_val >= 50_000 and n_test >= 10_000,
        mflops=mflops_range(whole),
        prof=params.active,
        n_train=n_train,
        n_val=n_val,
        n_test=n_test,
        metric=params.analysis.metric,
        recipes=recipes,
        claims=claim_rows(t["claims"]),
        conclusions=conclusions(t["claims"], n_test),
        untested=untested(params.analysis.claims, params.runs.models),
        unequal=unequal_observation(),
        n_claims=len(params.analysis.claims),
        claim_level=f"{100 * (1 - 0.05 / max(1, len(params.analysis.claims))):.2f}%",
        margin=f"{params.analysis.close_margin_pp:g}",
        timing={r: timing_rows(t["summary"], r) for r in recipes},
        diverged=[(r.run, r.diverged) for r in t["runs"].itertuples() if isinstance(getattr(r, "diverged", None), str)],
        variants=claim_rows(t["variants"]),
        single_seed=bool((t["claims"][["seeds_a", "seeds_b"]] < 2).any().any()) if len(t["claims"]) else False,
        deviations=deviations(params, t["runs"]),
        table4={r: table4(t["summary"], r) for r in recipes},
        calibration=calibration_rows(t["summary"]),
        per_class=per_class_table(t["per_class"], names),
        epoch_tables=[epoch_table(t["epochs"], m, r) for m in models for r in recipes],
        general_notes=NOTES["all"],
        efficiency=efficiency(t["summary"]),
        robustness=robustness_rows(t["robustness"]),
        robustness_pairs=robustness_pair_rows(t["robustness_pairs"]),
        robustness_fig=inline("robustness.png"),
        attention=attention_sentences(t["attention"], params.active.models),
        attention_figs=[inline(f"attention_{m}.png") for m in dict.fromkeys(t["attention"].model)],
        cost=cost_rows(t["cost"]),
        cost_device=f"{t['cost'].device.iloc[0]}, {t['cost'].threads.iloc[0]} thread(s)" if len(t["cost"]) else "",
        cost_size_fig=inline("cost_size.png"),
        datasize=datasize_section(t["datasize"], t["datasize_pairs"], params.analysis.metric),
        budget=params.runs.fraction_budget,
        figures=[(caption, inline_png(figures_dir / f)) for caption, f in figure_captions(names, models, drawn)],
        datasize_fig=inline("datasize.png"),
        cost_fig=inline("cost.png"),
        provenance=prov,
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
