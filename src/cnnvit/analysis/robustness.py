"""The corruption benchmark's numbers: per run, per model, the mCE, and who is more robust.

    per_run = robustness_runs(long)      # clean and mean corruption accuracy, relative drop, per run
    summary = robustness_summary(...)    # per model x recipe: seed means with intervals, and the mCE
    pairs = robustness_pairs(...)        # "is the ViT more robust than ResNet50 / the hybrid?" (exploratory)

The relative drop is (clean - mean corrupted) / clean, on the same images. The mCE follows
Hendrycks & Dietterich (2019): for each corruption, the model's errors summed over severities
divided by the baseline's (here the ResNet50 of the same recipe, not AlexNet), averaged over
corruptions, in percent; the relative mCE does the same with each error less the clean error.
Errors are means over seeds.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cnnvit.analysis.verdicts import compare, seed_stats, verdict

BASELINE = "resnet50"
PAIRS = [  # (more robust, less robust, the comparison): the lower relative drop wins
    ("vit", "resnet50", "ViT drops less than ResNet50 under corruption"),
    ("vit", "cnn_vit", "ViT drops less than the CNN+ViT hybrid under corruption"),
    ("cnn_vit", "resnet50", "the CNN+ViT hybrid drops less than ResNet50 under corruption"),
]


def robustness_runs(long: pd.DataFrame) -> pd.DataFrame:
    """One row per run: accuracy on the clean robustness images, the mean over every corruption
    and severity, and the relative drop (%)."""
    rows = []
    for (model, recipe, seed), g in long.groupby(["model", "recipe", "seed"], sort=False):
        clean = float(g.loc[g.corruption == "clean", "acc"].iloc[0])
        mean = float(g.loc[g.corruption != "clean", "acc"].mean())
        drop = 100 * (clean - mean) / clean if clean else float("nan")
        rows.append({"model": model, "recipe": recipe, "seed": seed, "clean_acc": clean, "corrupted_acc": mean,
                     "relative_drop_pct": drop})  # fmt: skip
    return pd.DataFrame(rows, columns=["model", "recipe", "seed", "clean_acc", "corrupted_acc", "relative_drop_pct"])


def mce(long: pd.DataFrame, model: str, recipe: str, baseline: str = BASELINE) -> tuple[float, float]:
    """(mCE, relative mCE) in percent of ``baseline``'s, from errors averaged over seeds."""
    err = (100 - long[long.recipe == recipe].groupby(["model", "corruption", "severity"]).acc.mean()).rename("err")
    if model not in err.index.get_level_values(0) or baseline not in err.index.get_level_values(0):
        return float("nan"), float("nan")
    ours, base = err.loc[model], err.loc[baseline]
    clean_ours, clean_base = float(ours.loc["clean"].iloc[0]), float(base.loc["clean"].iloc[0])
    ces, rel = [], []
    for corruption in ours.index.get_level_values(0).unique():
        if corruption == "clean":
            continue
        o, b = ours.loc[corruption], base.loc[corruption]
        ces.append(o.sum() / b.sum() if b.sum() else np.nan)
        denominator = (b - clean_base).sum()
        rel.append((o - clean_ours).sum() / denominator if denominator else np.nan)
    return 100 * float(np.nanmean(ces)), 100 * float(np.nanmean(rel))


def robustness_summary(long: pd.DataFrame, per_run: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (model, recipe), g in per_run.groupby(["model", "recipe"], sort=False):
        row: dict = {"model": model, "recipe": recipe, "seeds": len(g)}
        for col in ("clean_acc", "corrupted_acc", "relative_drop_pct"):
            s = seed_stats(g[col])
            row |= {f"{col}_mean": s.mean, f"{col}_std": s.std, f"{col}_ci_low": s.ci_low, f"{col}_ci_high": s.ci_high}
        row["mce_pct"], row["relative_mce_pct"] = mce(long, model, recipe)
        rows.append(row)
    return pd.DataFrame(rows)


def robustness_by_severity(long: pd.DataFrame) -> pd.DataFrame:
    """Mean accuracy per model x recipe x severity (0 = clean), over corruptions, then seeds."""
    per = long.groupby(["model", "recipe", "seed", "severity"], sort=False).acc.mean().reset_index()
    return per.groupby(["model", "recipe", "severity"], sort=False).acc.agg(["mean", "std"]).reset_index()


def robustness_pairs(per_run: pd.DataFrame) -> pd.DataFrame:
    """The exploratory comparisons on the relative drop: paired over seeds where they match."""
    rows = []
    for recipe in dict.fromkeys(per_run.recipe):
        for robust, fragile, text in PAIRS:
            a = per_run[(per_run.model == fragile) & (per_run.recipe == recipe)].set_index("seed").relative_drop_pct
            b = per_run[(per_run.model == robust) & (per_run.recipe == recipe)].set_index("seed").relative_drop_pct
            if a.empty or b.empty:
                continue
            c = compare(a.to_dict(), b.to_dict())  # fragile's drop - robust's drop: > 0 when the claim holds
            rows.append({"comparison": text, "more_robust": robust, "less_robust": fragile, "recipe": recipe,
                         "diff_pp": c.diff, "ci_low_pp": c.ci_low, "ci_high_pp": c.ci_high, "test": c.test,
                         "p_value": c.p_value, "verdict": verdict(c.p_value, c.diff), "exploratory": True})  # fmt: skip
    columns = ["comparison", "more_robust", "less_robust", "recipe", "diff_pp", "ci_low_pp", "ci_high_pp", "test",
               "p_value", "verdict", "exploratory"]  # fmt: skip
    return pd.DataFrame(rows, columns=columns)


def attention_summary(attention: pd.DataFrame) -> pd.DataFrame:
    """Mean attention distance per model x recipe x layer x head, over seeds."""
    if attention.empty:
        return pd.DataFrame(columns=["model", "recipe", "layer", "head", "distance_px", "distance_px_std", "seeds"])
    g = attention.groupby(["model", "recipe", "layer", "head"], sort=False).distance_px
    out = g.agg(distance_px="mean", distance_px_std="std", seeds="count").reset_index()
    return out
