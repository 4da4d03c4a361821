"""Collect stage: every run's files -> tidy tables, statistics, verdicts.

    cnnvit collect --runs-dir results/runs --eval-dir results/eval --cost results/cost/cost.csv \
        --out-dir results/tables

The runs collected are exactly those params.yaml lists, and each must have been trained with the
config params.yaml now gives it: a run trained under another preset or recipe is refused, naming
the keys that differ (a summary that records no config, made by hand, is accepted with a
warning). Writes, in ``--out-dir`` (replaced as a whole, so the tables always belong together):

- ``epochs.csv``: long form (run, model, label, recipe, fraction, seed, epoch, split, metric, value);
- ``runs.csv``: one row per run (selected, final and best test accuracy, calibration, costs);
  ``summary.csv``: one row per model x recipe x fraction, with the seed mean, std and 95%
  t-interval of each accuracy, the best-over-test optimism and calibration (cnnvit.stats.claims);
- ``claims.csv``: the paper's claims (``analysis.claims``), one row per claim x recipe: the
  difference on the accuracy ``analysis.metric`` names, from every seed's per-image predictions,
  its interval at the Bonferroni level, the verdict that interval gives, the minimum detectable
  effect and the paper's own gap (cnnvit.stats.claims);
  ``variants.csv``: the same claims with each variant of a paper model (the ResNet stem, the
  deformable hybrid), exploratory;
- ``datasize.csv`` and ``datasize_pairs.csv``: accuracy against training-set size, and every pair
  of models at every size (exploratory);
- ``per_class.csv`` and ``confusion.csv``: per-class accuracy and confusion counts, pooled over seeds;
- ``robustness.csv`` (per model: clean and corrupted accuracy, relative drop, mCE against ResNet50),
  ``robustness_detail.csv`` (per run, corruption and severity) and ``robustness_pairs.csv`` (is the
  ViT more robust than ResNet50 / the hybrid? exploratory), from ``--eval-dir`` (cnnvit evaluate);
- ``attention.csv``: mean attention distance per head and layer; ``cost.csv``: cost to run (cnnvit cost);
- ``provenance.json``: params, the devices the runs trained on, versions, commits;
- ``metrics.json``: for ``dvc metrics show``, mean accuracies and every verdict.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from cnnvit import paths
from cnnvit.cifar import IMG_SIZE
from cnnvit.config.recorded import run_config_differs
from cnnvit.config.runs import run_config
from cnnvit.config.types import Params, RunSpec
from cnnvit.errors import CnnvitError
from cnnvit.files import atomic_dir, cpu_name, made_with_hint, provenance, read_json, write_json
from cnnvit.models import spec_from_dict
from cnnvit.paper import CLAIMS, PAPER_NAME
from cnnvit.runfiles import (
    METRICS,
    METRICS_FILE,
    PREDICTIONS_FILE,
    SUMMARY_FILE,
    VALUE_METRICS,
    RunSummary,
    read_predictions,
)
from cnnvit.stage import Out, Stage
from cnnvit.stats import predictions as P
from cnnvit.stats import robustness as R
from cnnvit.stats.claims import Right, claims_table, crossing, summarise
from cnnvit.tables import read_table

STAGE = Stage(
    name="collect",
    help="per-run results -> tidy tables, statistics and verdicts",
    cmd=f"cnnvit collect --runs-dir {paths.RUNS_DIR} --eval-dir {paths.EVAL_DIR} --cost {paths.COST} "
    f"--out-dir {paths.TABLES_DIR}",
    deps=(paths.COST,),
    outs=tuple(
        Out(t, cache=False, metric=True) if t == paths.METRICS else Out(t, report="Tables") for t in paths.TABLES
    ),
    params=(
        "preset",
        "runs",
        "presets.{preset}.train_size",
        "presets.{preset}.val_size",
        "presets.{preset}.test_size",
        "presets.{preset}.epochs",
        "presets.{preset}.models",
        "recipes",
        "runtime.precision",
        "analysis",
    ),
    reads_all_runs=("train", "evaluate"),
)

PAIR_COLUMNS = ["a", "b", "recipe", "fraction", "train_images", "diff_pp", "ci_low_pp", "ci_high_pp", "test",
                "p_value", "verdict", "text", "exploratory"]  # fmt: skip


def check_config(s: RunSummary, expected: dict, where: str, preset: str) -> None:
    if s.config is None:
        print(f"warning: {where} records no training config; cannot check it matches params.yaml")
        return
    if diff := run_config_differs(s.config, expected):
        more = f" and {len(diff) - 4} more" if len(diff) > 4 else ""
        made = s.config.get("preset")
        hint = made_with_hint({"preset": made}) if made != preset else ""
        raise CnnvitError(
            f"run {s.run} was trained with other params than params.yaml gives it "
            f"({'; '.join(diff[:4])}{more}): train it again{hint}"
        )


def read_metrics(path: Path) -> pd.DataFrame:
    """A run's metrics.csv: every column of records.METRICS that a row needs, checked finite."""
    kinds = {"epoch": "int", "val_acc": "float", "test_acc": "float"}
    # read twice: the first read says which of the other metric columns this run recorded
    table = read_table(path, kinds, fix="delete its run directory and train it again")
    numbers = [c.column for c in METRICS if c.column in table.columns and c.column not in kinds]
    return read_table(path, kinds | dict.fromkeys(numbers, "float"), fix="delete its run directory and train it again")


def load_run(params: Params, run: RunSpec, runs_dir: Path) -> tuple[pd.DataFrame, RunSummary, dict]:
    d = runs_dir / run.name
    if not (d / SUMMARY_FILE).exists() or not (d / METRICS_FILE).exists():
        hint = " (for DVC, runs.train_fractions changed: run `uv run cnnvit dvc-yaml`, then `dvc repro`)" * (
            run.fraction < 1
        )
        fraction = f" --fraction {run.fraction}" if run.fraction < 1 else ""
        raise CnnvitError(
            f"run {run.name} has no results in {d}: train it first (cnnvit train --model {run.model} "
            f"--recipe {run.recipe} --seed {run.seed}{fraction}){hint}"
        )
    raw = read_json(d / SUMMARY_FILE, "delete its run directory and train it again")
    base = {"run": run.name, "model": run.model, "recipe": run.recipe, "seed": run.seed, "fraction": run.fraction}
    s = RunSummary.from_json({**base, **raw} if isinstance(raw, dict) else raw, str(d / SUMMARY_FILE))
    check_config(s, run_config(params, run).identity(), str(d / SUMMARY_FILE), params.preset)
    m = read_metrics(d / METRICS_FILE)
    if not (d / PREDICTIONS_FILE).exists():
        raise CnnvitError(
            f"run {run.name} has no {PREDICTIONS_FILE} in {d}: its per-image predictions decide the verdicts; train "
            f"it again (delete {d} and run cnnvit train --model {run.model} --recipe {run.recipe} --seed {run.seed})"
        )
    preds = read_predictions(d / PREDICTIONS_FILE)
    check_predictions(s, preds, d, m)
    cols = [c.column for c in VALUE_METRICS if c.column in m.columns]
    long = m.melt(id_vars="epoch", value_vars=cols, var_name="column")
    split = {c.column: (c.split, c.metric) for c in METRICS}
    long["split"] = long.column.map(lambda c: split[c][0])
    long["metric"] = long.column.map(lambda c: split[c][1])
    long = long.assign(run=run.name, model=run.model, recipe=run.recipe, fraction=run.fraction, seed=run.seed)
    return long[["run", "model", "recipe", "fraction", "seed", "epoch", "split", "metric", "value"]], s, preds


def check_predictions(s: RunSummary, preds: dict, d: Path, metrics: pd.DataFrame) -> None:
    """A run's files must belong together: the predictions name the run and its weights, and give
    the accuracies the summary and metrics.csv record."""
    fix = f"the run's files do not belong together; delete {d} and train the run again"
    if str(preds["run"]) != s.run or (s.weights_sha256 and str(preds["weights_sha256"]) != s.weights_sha256):
        raise CnnvitError(f"{d}: {PREDICTIONS_FILE} is of run {preds['run']} or of other weights: {fix}")
    epochs = metrics.set_index("epoch").test_acc
    for metric, epoch in (("selected", s.selected_epoch), ("final", int(metrics.epoch.iloc[-1]))):
        recorded = getattr(s, f"{metric}_test_acc")
        if epoch in epochs.index and abs(float(epochs[epoch]) - recorded) > 1e-6:
            raise CnnvitError(
                f"{d}: {METRICS_FILE} gives {epochs[epoch]:.4f} at epoch {epoch}, {SUMMARY_FILE} {metric}_test_acc "
                f"{recorded:.4f}: {fix}"
            )
    for metric in ("selected", "final"):
        got = 100 * float(P.correct(preds, metric).mean())
        recorded = getattr(s, f"{metric}_test_acc")
        if abs(got - recorded) > 1e-6 * max(1.0, abs(recorded)):
            raise CnnvitError(
                f"{d}: {SUMMARY_FILE} records {metric}_test_acc {recorded:.4f} but {PREDICTIONS_FILE} gives "
                f"{got:.4f}: {fix}"
            )


def per_run_row(s: RunSummary, preds: dict) -> dict:
    row = {k: v for k, v in s.to_json().items() if k not in ("config", "provenance", "pretrained")}
    if preds:
        row |= P.calibration(preds)
    row["train_images"], row["train_pflops"] = s.train_images, s.train_pflops
    row["pretrained_source"] = (s.pretrained or {}).get("source")
    row["pretrained_sha256"] = (s.pretrained or {}).get("sha256")
    return row


def labels(params: Params) -> dict[str, str]:
    """The name every table and figure prints for each model (they read it from summary.csv): the
    paper's for its three models, else the arch's display name, with the model's own name when it
    is a variant."""
    out = {}
    for name in params.runs.models:
        spec = spec_from_dict(params.active.models[name])
        out[name] = PAPER_NAME.get(name) or (spec.display if name == spec.arch else f"{spec.display} ({name})")
    return out


def variants(params: Params) -> dict[str, str]:
    """Models in the runs that are variants of a paper model (same arch, another name)."""
    entries = params.active.models
    out = {}
    for name in params.runs.models:
        for paper in PAPER_NAME:
            if name != paper and paper in entries and entries[name]["arch"] == entries[paper]["arch"]:
                out[name] = paper
    return out


def variant_claims(params: Params, right: Right, final: Right) -> pd.DataFrame:
    """The paper's claims with each variant of a paper model in its place: exploratory (95%, unadjusted)."""
    analysis, tables = params.analysis, []
    for variant, paper_model in variants(params).items():
        label = f"{spec_from_dict(params.active.models[variant]).display} as {variant}"
        swapped = [
            dataclasses.replace(
                c,
                id=f"{c.id}:{variant}",
                a=variant if c.a == paper_model else c.a,
                b=variant if c.b == paper_model else c.b,
                text=f"{c.text} ({label})",
            )
            for c in CLAIMS
            if paper_model in c.models and c.id in analysis.claims
        ]
        tables.append(
            claims_table(
                swapped, params.runs.recipes, right, final, analysis.close_margin_pp, analysis.metric, exploratory=True
            )
        )
    return pd.concat(tables, ignore_index=True) if tables else claims_table([], [], {}, {}, 0.0)


def datasize(
    summary: pd.DataFrame, params: Params, by_fraction: Mapping[float, Right]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    acc = f"{params.analysis.metric}_test_acc"
    cols = ["model", "label", "recipe", "fraction", "n_train", f"{acc}_mean", f"{acc}_std", f"{acc}_ci_low",
            f"{acc}_ci_high", "seeds"]  # fmt: skip
    table = summary[cols].rename(columns={"n_train": "train_images"}).sort_values(["recipe", "model", "fraction"])
    table["train_images"] = table.train_images.round().astype("Int64")  # a count, the same for every seed
    rows = []
    for recipe in params.runs.recipes:
        for a, b in itertools.combinations(params.runs.models, 2):
            n_train = dict(zip(table.fraction[table.model == a], table.train_images[table.model == a], strict=True))
            c = crossing(by_fraction, a, b, recipe, n_train)
            rows += [
                {"a": a, "b": b, "recipe": recipe, **p, "text": c["text"], "exploratory": True} for p in c["points"]
            ]
    return table, pd.DataFrame(rows, columns=PAIR_COLUMNS)  # the header even when one model has no pair


def dvc_metrics(summary: pd.DataFrame, claims: pd.DataFrame) -> dict:
    models = {}
    for r in summary.itertuples():
        key = f"{r.model}-{r.recipe}" + (f"-f{r.fraction}" if r.fraction < 1 else "")
        models[key] = {
            "selected_test_acc": round(r.selected_test_acc_mean, 4),
            "final_test_acc": round(r.final_test_acc_mean, 4),
            "best_test_acc": round(r.best_test_acc_mean, 4),
            "seeds": int(r.seeds),
        }
    verdicts = {
        f"{c.claim_id}-{c.recipe}": {
            "verdict": c.verdict,
            "diff_pp": round(c.diff_pp, 4),
            "ci_low_pp": round(c.ci_low_pp, 4),
            "ci_high_pp": round(c.ci_high_pp, 4),
            "level": round(c.level, 4),
            "p_adjusted": round(c.p_adjusted, 6),
            "mde_pp": round(c.mde_pp, 4),
        }
        for c in claims.itertuples()
    }
    return json.loads(json.dumps({"models": models, "claims": verdicts}).replace("NaN", "null"))


TABLE_NAMES = {Path(t).name for t in paths.TABLES}


ROBUSTNESS = {"corruption": "str", "severity": "int", "acc": "float", "images": "int"}
ATTENTION = {"layer": "int", "head": "int", "distance_px": "float"}
COST = {"model": "str", "size": "int", "params": "int", "flops_per_image": "float", "latency_ms_median": "float",
        "latency_ms_p95": "float", "throughput_images_per_s": "float?", "inference_step_mb": "float?",
        "training_step_mb": "float?", "device": "str", "threads": "int"}  # fmt: skip


def check_evaluated(d: Path, run: str, weights: str | None, fix: str) -> None:
    """An evaluation belongs to the run's current weights, not to those of an earlier training."""
    record = read_json(d / paths.EVAL_RECORD, fix)
    if not isinstance(record, dict) or record.get("run") != run:
        raise CnnvitError(f"{d / paths.EVAL_RECORD} is not run {run}'s evaluation: {fix}")
    if weights and record.get("weights_sha256") != weights:
        raise CnnvitError(f"{d} was evaluated on other weights than run {run}'s (it was trained again since): {fix}")


def evaluations(
    params: Params, eval_dir: Path, names: dict[str, str], weights: dict[str, str | None] | None = None
) -> dict[str, pd.DataFrame]:
    """The evaluation stage's tables of every run on the whole training set; ``weights``: each run's
    weights sha256, which its evaluation must name."""
    long, attention, per_image, weights = [], [], {}, weights or {}
    for run in params.all_runs():
        if run.fraction < 1:
            continue
        keys = {"model": run.model, "recipe": run.recipe, "seed": run.seed}
        fix = f"evaluate run {run.name} again (cnnvit evaluate, or the pipeline)"
        long.append(read_table(eval_dir / run.name / "robustness.csv", ROBUSTNESS, fix=fix).assign(**keys))
        # a transformer's evaluation has a row per layer and head; a convnet's only the header
        attends = not spec_from_dict(params.active.models[run.model]).convnet
        table = read_table(eval_dir / run.name / "attention.csv", ATTENTION, fix=fix, min_rows=int(attends))
        attention.append(table.assign(**keys))
        check_evaluated(eval_dir / run.name, run.name, weights.get(run.name), fix)
        right = R.read_per_image(eval_dir / run.name / paths.EVAL_PER_IMAGE, run.name)
        per_image[run.model, run.recipe, run.seed] = right
    detail = pd.concat(long, ignore_index=True) if long else pd.DataFrame(columns=["model", "recipe", "seed"])
    per_run = R.robustness_runs(detail) if long else pd.DataFrame()
    summary = R.robustness_summary(detail, per_run, per_image) if long else pd.DataFrame(columns=["model"])
    summary.insert(1, "label", summary.model.map(names))
    attn = R.attention_summary(pd.concat(attention, ignore_index=True) if attention else pd.DataFrame())
    attn.insert(1, "label", attn.model.map(names))
    return {
        "robustness.csv": summary,
        "robustness_detail.csv": detail,
        "robustness_pairs.csv": R.robustness_pairs(per_image),
        "attention.csv": attn,
    }


def cost_table(path: Path, names: dict[str, str], trained_params: dict[str, int] | None = None) -> pd.DataFrame:
    cost = read_table(path, COST, fix="run `cnnvit cost` again", missing="run `cnnvit cost` first (or the pipeline)")
    absent = sorted(set(names) - set(cost.model))
    if absent:
        raise CnnvitError(f"{path} has no row for {', '.join(absent)}: run `cnnvit cost` again")
    for model, n in (trained_params or {}).items():
        measured = set(cost.params[(cost.model == model) & (cost["size"] == IMG_SIZE)])  # a ViT grows with the size
        if measured and measured != {n}:
            raise CnnvitError(
                f"{path} was measured for another {model} ({', '.join(f'{p:,}' for p in sorted(measured))} parameters; "
                f"its runs have {n:,}): run `cnnvit cost` again"
            )
    cost.insert(1, "label", cost.model.map(names))
    return cost


def collect(params: Params, runs_dir, out_dir, eval_dir=paths.EVAL_DIR, cost=paths.COST) -> pd.DataFrame:
    out_dir, runs_dir = Path(out_dir), Path(runs_dir)
    metric = params.analysis.metric
    loaded = [load_run(params, run, runs_dir) for run in params.all_runs()]
    long = pd.concat([x[0] for x in loaded], ignore_index=True)
    per_run = pd.DataFrame([per_run_row(s, preds) for _, s, preds in loaded])
    by_fraction: dict[float, dict] = {}
    for _, s, preds in loaded:
        by_fraction.setdefault(s.fraction, {})[(s.model, s.recipe, s.seed)] = preds
    whole = by_fraction.get(1.0, {})
    P.check_same_images({f"{k[0]}-{k[1]}-s{k[2]}": v for k, v in whole.items()})
    right = {k: P.correct(v, metric) for k, v in whole.items()}
    final = {k: P.correct(v, "final") for k, v in whole.items()}
    names = labels(params)
    long.insert(2, "label", long.model.map(names))
    per_run.insert(2, "label", per_run.model.map(names))
    summary = summarise(per_run)
    summary.insert(1, "label", summary.model.map(names))
    a = params.analysis
    tested = [c for c in CLAIMS if c.id in a.claims]
    claims = claims_table(tested, params.runs.recipes, right, final, a.close_margin_pp, metric, planned=len(tested))
    sized = {f: {k: P.correct(v, metric) for k, v in runs.items()} for f, runs in by_fraction.items()}
    size_table, pairs = datasize(summary, params, sized)
    devices = sorted({s.device for _, s, _ in loaded if s.device}) or ["not recorded"]
    prov = provenance(params.raw, ", ".join(devices))
    prov["collected_on"] = cpu_name()
    prov["runs"] = {
        s.run: {k: s.provenance.get(k) for k in ("device", "git_commit", "created", "host")}
        | {"threads": s.threads, "precision": s.precision}
        for _, s, _ in loaded
    }
    tables = {
        "epochs.csv": long,
        "runs.csv": per_run,
        "summary.csv": summary,
        "claims.csv": claims,
        "variants.csv": variant_claims(params, right, final),
        "datasize.csv": size_table,
        "datasize_pairs.csv": pairs,
        "per_class.csv": P.per_class(whole, metric),
        "confusion.csv": P.confusion(whole, metric),
        **evaluations(
            params, Path(eval_dir), names, {s.run: s.weights_sha256 for _, s, _ in loaded if s.weights_sha256}
        ),
        "cost.csv": cost_table(Path(cost), names, {s.model: s.params for _, s, _ in loaded if s.params}),
    }
    assert set(tables) | {"provenance.json", "metrics.json"} == TABLE_NAMES, TABLE_NAMES
    with atomic_dir(out_dir, owned=lambda name: name in TABLE_NAMES) as tmp:
        for name, df in tables.items():
            df.to_csv(tmp / name, index=False)
        write_json(tmp / "provenance.json", prov)
        write_json(tmp / "metrics.json", dvc_metrics(summary, claims))
    return claims


def add_args(p) -> None:
    p.add_argument("--runs-dir", default=paths.RUNS_DIR)
    p.add_argument("--eval-dir", default=paths.EVAL_DIR)
    p.add_argument("--cost", default=paths.COST)
    p.add_argument("--out-dir", default=paths.TABLES_DIR)


def run(args, params: Params) -> None:
    claims = collect(params, args.runs_dir, args.out_dir, args.eval_dir, args.cost)
    for c in claims.itertuples():
        print(
            f"{c.verdict:>12}  {c.claim} [{c.recipe}]: {c.diff_pp:+.2f} pp, {100 * c.level:.2f}% interval "
            f"[{c.ci_low_pp:+.2f}, {c.ci_high_pp:+.2f}] against {c.threshold_pp:+g}, MDE {c.mde_pp:.2f} pp "
            f"({c.seeds_a} vs {c.seeds_b} seeds, {c.n_test:,} test images)"
        )
