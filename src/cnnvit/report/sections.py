"""The report's tables as rows of formatted cells, built from the collected tables.

    claim_rows(claims)            # the verdicts, with the test, p-values and what the interval says
    table4(summary, recipe)       # Table 4 beside this run's selected, final and best accuracy
    epoch_table(epochs, m, r)     # Tables 1-3: per epoch, beside the paper's printed values

Nothing here decides anything: the verdicts come from ``cnnvit collect``.
"""

from __future__ import annotations

import math

import pandas as pd

from cnnvit.models import spec_from_dict
from cnnvit.paper import CLAIMS, MODELS, NOTES, TABLE_NUMBER, paper_best_final, paper_epochs
from cnnvit.stats.intervals import binomial_se

COLUMNS = [("train", "loss"), ("train", "acc"), ("test", "loss"), ("test", "acc")]
DASH = "—"


def fmt(value, digits: int = 2, pct: bool = False, sign: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return DASH
    return f"{value:{'+' if sign else ''}.{digits}f}{'%' if pct else ''}"


def fmt_p(p: float) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return DASH
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def fmt_seconds(s: float) -> str:
    if s is None or math.isnan(s):
        return DASH
    h, rem = divmod(round(s), 3600)
    m, sec = divmod(rem, 60)
    return f"{h} h {m} m" if h else (f"{m} m {sec} s" if m else f"{sec} s")


def paper_sentence(c) -> str:
    """How this run's effect compares with the paper's own gap, each with its noise."""
    if isinstance(c.paper_gap_pp, float) and math.isnan(c.paper_gap_pp):
        return ""
    ours = f"this run's last epoch gives {c.final_diff_pp:+.2f} pp"
    paper = (
        f"the paper's Tables 1-3 at epoch {int(c.paper_gap_epoch)} give {c.paper_gap_pp:+.2f} pp "
        f"(one run: ±{c.paper_gap_se_pp:.1f} pp of seed and test-set noise, taken from this run's spread)"
    )
    if c.paper_gap_consistent is True:
        return f"{ours}, consistent with the paper's effect: {paper}."
    if c.paper_gap_consistent is False:
        size = "smaller" if abs(c.final_diff_pp) < abs(c.paper_gap_pp) else "larger"
        return f"{ours}, an effect {size} than the paper's beyond their joint noise: {paper}."
    return f"{paper}."


def claim_rows(claims: pd.DataFrame) -> list[dict]:
    rows = []
    for c in claims.itertuples():
        rows.append(
            {
                "claim": c.claim,
                "section": c.section,
                "quote": c.quote,
                "recipe": c.recipe,
                "verdict": c.verdict,
                "seeds": f"{c.seeds_a} / {c.seeds_b}",
                "diff": fmt(c.diff_pp, 2, sign=True),
                "level": f"{100 * c.level:.1f}%",
                "ci": f"[{fmt(c.ci_low_pp, 2, sign=True)}, {fmt(c.ci_high_pp, 2, sign=True)}]",
                "threshold": fmt(c.threshold_pp, 1, sign=True) if c.threshold_pp else "0",
                "p": fmt_p(c.p_adjusted),
                "mde": fmt(c.mde_pp, 1),
                "se": f"{fmt(c.se_seed_pp, 2)} / {fmt(c.se_image_pp, 2)}",
                "paper": fmt(c.paper_gap_pp, 2, sign=True),
                "consistent": {True: "yes", False: "no"}.get(c.paper_gap_consistent, DASH),
                "mcnemar": f"{c.mcnemar_seeds_agree} (max p {fmt_p(c.mcnemar_p_max)})"
                if c.mcnemar_seeds_agree
                else DASH,
                "to_decide": c.to_decide if isinstance(c.to_decide, str) else "",
                "paper_sentence": paper_sentence(c),
            }
        )
    return rows


VERDICT_WORDS = {
    "reproduced": "reproduced",
    "contradicted": "contradicted",
    "inconclusive": "not decided",
}


def conclusions(claims: pd.DataFrame, n_test: int) -> list[str]:
    """One sentence per claim and recipe: what this run concludes, and how firmly."""
    out = []
    for c in claims.itertuples():
        where = f"{c.diff_pp:+.2f} pp ({100 * c.level:.1f}% interval {c.ci_low_pp:+.2f} to {c.ci_high_pp:+.2f})"
        if c.verdict == "inconclusive":
            tail = (
                f"the interval holds the threshold ({c.threshold_pp:+g} pp); these {c.seeds_a} seeds and "
                f"{n_test:,} test images detect {c.mde_pp:.1f} pp (80% power)"
            )
            if isinstance(c.to_decide, str) and c.to_decide:
                tail += f"; {c.to_decide}"
        else:
            side = "above" if c.verdict == "reproduced" else "below"
            tail = f"the whole interval lies {side} the threshold ({c.threshold_pp:+g} pp)"
        out.append(f"{c.claim} (recipe {c.recipe}): {VERDICT_WORDS[c.verdict]}. Difference {where}: {tail}.")
    return out


def untested(claim_ids: tuple[str, ...], models: tuple[str, ...]) -> list[str]:
    """The paper's claims this run does not test, and what each would need."""
    out = []
    for c in CLAIMS:
        if c.id in claim_ids:
            continue
        need = [MODELS[m].display for m in c.models if m not in models]
        why = f"needs {' and '.join(need)} in runs.models and" if need else "needs"
        out.append(
            f"{c.statement(2.0).split(' within')[0]} ({c.section}): not tested; it {why} {c.id} in analysis.claims."
        )
    return out


def epoch_table(epochs: pd.DataFrame, model: str, recipe: str) -> dict:
    """Mean over seeds of each (split, metric) per epoch, beside the paper's printed values."""
    d = epochs[(epochs.model == model) & (epochs.recipe == recipe) & (epochs.fraction == 1.0)]
    ours = d.groupby(["epoch", "split", "metric"]).value.mean()
    paper = paper_epochs().query("model == @model").set_index("epoch")
    has_paper = model in TABLE_NUMBER
    rows = []
    for e in sorted({int(v) for v in d.epoch} | (set(paper.index) if has_paper else set())):
        cells = [("val", "acc"), *COLUMNS]
        row = {"epoch": e, "ours": [fmt(ours.get((e, s, m)), 4 - 2 * (m == "acc"), m == "acc") for s, m in cells]}
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
        "split_loss": model in MODELS and not MODELS[model].loss_split_stated,
    }


def table4(summary: pd.DataFrame, recipe: str) -> list[dict]:
    """Table 4 beside this run: the paper's value is each model's last epoch, so it is set beside
    this run's last epoch (``final``), with the noise of a one-run value; the headline (selected)
    and the optimistic best-on-test are shown apart (:func:`timing_rows`)."""
    paper = paper_best_final().set_index("model")
    rows = []
    for r in summary[(summary.recipe == recipe) & (summary.fraction == 1.0)].itertuples():
        p = paper.loc[r.model] if r.model in paper.index else None
        gap = DASH
        if p is not None and not math.isnan(r.final_test_acc_mean):
            sd = 0.0 if math.isnan(r.final_test_acc_std) else r.final_test_acc_std
            # ours: a mean over seeds; the paper's: one run, with a seed's spread and its own 10,000 images
            se = math.hypot(sd * math.sqrt(1 + 1 / r.seeds), binomial_se(p.table4, 10_000))
            gap = f"{r.final_test_acc_mean - p.table4:+.2f} ± {1.96 * se:.2f}"
        rows.append(
            {
                "name": r.label,
                "paper_epochs": int(p.epochs) if p is not None else DASH,
                "paper_time": fmt_seconds(p.hours * 3600) if p is not None else DASH,
                "paper_t4": f"{p.table4:.2f}% (epoch {int(p.final_epoch)})" if p is not None else DASH,
                "paper_best": f"{p.best:.2f}% (epoch {int(p.best_epoch)})" if p is not None else DASH,
                "epochs": fmt(r.epochs, 0),
                "final": f"{fmt(r.final_test_acc_mean, 2, True)} ± {fmt(r.final_test_acc_std, 2)}",
                "diff": gap,
                "selected": f"{fmt(r.selected_test_acc_mean, 2, True)} ± {fmt(r.selected_test_acc_std, 2)}",
                "selected_epoch": fmt(r.selected_epoch, 1 if r.selected_epoch % 1 else 0),
                "seeds": int(r.seeds),
            }
        )
    return rows


def timing_rows(summary: pd.DataFrame, recipe: str) -> list[dict]:
    """What the runs cost, and what choosing the epoch on the test set would have added."""
    return [
        {
            "name": r.label,
            "train_time": fmt_seconds(r.train_seconds),
            "wall_time": fmt_seconds(r.wall_seconds),
            "best": fmt(r.best_test_acc_mean, 2, True),
            "optimism": fmt(r.optimism_pp, 2, sign=True),
            "se": fmt(r.binomial_se_pp, 2),
            "std": fmt(r.selected_test_acc_std, 2),
        }
        for r in summary[(summary.recipe == recipe) & (summary.fraction == 1.0)].itertuples()
    ]


def calibration_rows(summary: pd.DataFrame) -> list[dict]:
    return [
        {
            "name": r.label,
            "recipe": r.recipe,
            "selected": fmt(r.selected_test_acc_mean, 2, True),
            "nll": fmt(r.selected_test_loss, 3),
            "ece": fmt(r.selected_ece, 2),
            "final_ece": fmt(r.final_ece, 2),
            "epoch": fmt(r.selected_epoch, 1),
            "best_epoch": fmt(r.best_test_epoch, 1),
            "optimism": fmt(r.optimism_pp, 2, sign=True),
        }
        for r in summary[summary.fraction == 1.0].itertuples()
    ]


def per_class_table(per_class: pd.DataFrame, names: dict[str, str]) -> dict:
    classes = list(dict.fromkeys(per_class["class"]))
    rows = []
    for (model, recipe), g in per_class.groupby(["model", "recipe"], sort=False):
        acc = g.set_index("class").acc_mean
        rows.append({"name": names.get(model, model), "recipe": recipe, "cells": [fmt(acc.get(c), 1) for c in classes]})
    return {"classes": classes, "rows": rows}


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
                "acc_per_pflop": fmt(r.selected_test_acc_mean / pf, 1) if pf and pf > 0 else DASH,
            }
        )
    return rows


def datasize_section(size: pd.DataFrame, pairs: pd.DataFrame, metric: str) -> dict:
    names = dict(zip(size.model, size.label, strict=False))
    acc = f"{metric}_test_acc"
    rows = [
        {
            "name": r["label"],
            "recipe": r["recipe"],
            "fraction": f"{r['fraction']:g}",
            "images": fmt(r["train_images"], 0),
            "mean": fmt(r[f"{acc}_mean"], 2, True),
            "std": fmt(r[f"{acc}_std"], 2),
            "ci": f"[{fmt(r[f'{acc}_ci_low'], 2)}, {fmt(r[f'{acc}_ci_high'], 2)}]",
            "seeds": int(r["seeds"]),
        }
        for _, r in size.iterrows()
    ]
    crossings = []
    if len(pairs):
        for (a, b, recipe), g in pairs.groupby(["a", "b", "recipe"], sort=False):
            crossings.append({"pair": f"{names[a]} vs {names[b]}", "recipe": recipe, "text": g.text.iloc[0]})
    return {"rows": rows, "crossings": crossings, "fractions": sorted(set(size.fraction))}


def _text(value) -> bool:
    """A non-empty string (a CSV's empty cell reads back as NaN)."""
    return isinstance(value, str) and bool(value)


def robustness_rows(summary: pd.DataFrame) -> list[dict]:
    """The corruption benchmark per model and recipe; ``rel_mce_note`` says why a relative mCE is
    missing (its denominator within noise of zero)."""
    return [
        {
            "name": r.label,
            "recipe": r.recipe,
            "clean": fmt(r.clean_acc_mean, 2, True),
            "corrupted": fmt(r.corrupted_acc_mean, 2, True),
            "ci": f"[{fmt(r.corrupted_acc_ci_low, 2)}, {fmt(r.corrupted_acc_ci_high, 2)}]",
            "drop": fmt(r.drop_pp_mean, 2),
            "drop_ci": f"[{fmt(r.drop_pp_ci_low, 2)}, {fmt(r.drop_pp_ci_high, 2)}]",
            "mce": fmt(r.mce_pct, 1),
            "rel_mce": fmt(r.relative_mce_pct, 1),
            "rel_mce_note": f"Recipe {r.recipe}: {r.relative_mce_note}." if _text(r.relative_mce_note) else "",
            "seeds": int(r.seeds),
        }
        for r in summary.itertuples()
    ]


def robustness_pair_rows(pairs: pd.DataFrame) -> list[dict]:
    return [
        {
            "comparison": c.comparison,
            "recipe": c.recipe,
            "diff": fmt(c.diff_pp, 2, sign=True),
            "ci": f"[{fmt(c.ci_low_pp, 2, sign=True)}, {fmt(c.ci_high_pp, 2, sign=True)}]",
            "se": f"{fmt(c.se_seed_pp, 2)} / {fmt(c.se_image_pp, 2)}",
            "n": f"{c.seeds} / {c.images}",
            "p": fmt_p(c.p_value),
            "result": c.result,
        }
        for c in pairs.itertuples()
    ]


def token_sight(entry: dict) -> str:
    """What one token of a ViT or the hybrid already sees before any attention, from its model entry."""
    spec = spec_from_dict(entry)
    cell = getattr(spec, "token_pixels", None)
    rf = getattr(spec, "receptive_field", None)
    if rf is not None:
        deformable = getattr(spec, "stem_conv", "") == "deformable"
        moved = ", which its deformable conv's offsets can move" if deformable else ""
        return (
            f"each token (one per {cell}x{cell}-pixel cell) already sees a {rf}x{rf}-pixel window through the conv "
            f"stem{moved}, so its reach is that window plus the distance attention spans"
        )
    return f"each token sees its own {cell}x{cell}-pixel patch" if cell else ""


def attention_sentences(attention: pd.DataFrame, models: dict[str, dict] | None = None) -> list[str]:
    """Per model and recipe, how far the first and the last layer's heads look, in words: statistics
    over each run's heads (their mean, least and largest distance), averaged over seeds with their
    s.d. (``cnnvit.stats.robustness.attention_summary``). ``models``: the preset's model entries,
    for what a token sees on its own."""
    out = []
    for (model, label, recipe), g in attention.groupby(["model", "label", "recipe"], sort=False):
        g = g.set_index("layer")
        parts = []
        for layer in (g.index.min(), g.index.max()):
            r = g.loc[layer]
            parts.append(
                f"layer {layer}: mean over heads {fmt(r.mean_px, 1)} px (s.d. over seeds {fmt(r.mean_px_sd, 1)}), "
                f"the heads spanning {fmt(r.min_px, 1)} to {fmt(r.max_px, 1)} px (range {fmt(r.range_px, 1)}, "
                f"s.d. {fmt(r.range_px_sd, 1)})"
            )
        sight = token_sight(models[model]) if models and model in models else ""
        head = f"{label} ({recipe}; {int(g.seeds.max())} seed(s), {int(g.heads.max())} heads a layer)"
        out.append(f"{head}: {'; '.join(parts)}." + (f" {sight[0].upper()}{sight[1:]}." if sight else ""))
    return out


def cost_rows(cost: pd.DataFrame) -> list[dict]:
    return [
        {
            "name": r.label,
            "size": int(r.size),
            "params": fmt(r.params / 1e6, 2) + " M",
            "gflops": fmt(r.flops_per_image / 1e9, 3),
            "latency": f"{r.latency_ms_median:.2f} / {r.latency_ms_p95:.2f}",
            "throughput": fmt(r.throughput_images_per_s, 0),
            "infer_mb": fmt(r.inference_step_mb, 0),  # measured at the training size only: DASH elsewhere
            "train_mb": fmt(r.training_step_mb, 0),
        }
        for r in cost.itertuples()
    ]
