"""Seed statistics and the three-way verdicts: pure functions of per-run accuracies.

    seed_stats([61.2, 60.4, 62.0])        # n, mean, sample std, 95% t-interval of the mean
    welch([78.1, 77.5], [60.9, 61.4])     # winner - loser: difference and 95% Welch t-interval
    verdict(ci_low, ci_high)              # reproduced | contradicted | inconclusive
    claims_table(per_run, CLAIMS, gaps)   # results/tables/claims.csv

A claim "winner beats loser" is ``reproduced`` when the 95% Welch interval of the difference in
per-seed best test accuracy lies wholly above 0, ``contradicted`` when it lies wholly below 0,
and ``inconclusive`` otherwise, and always when either side has fewer than 2 seeds (one seed
gives no noise estimate). With zero variance on both sides the interval is the difference
itself. ``binomial_se`` is the test-set sampling error of one accuracy on ``n`` images, to set
beside the seed spread.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as sps

CONFIDENCE = 0.95
CLAIM_COLUMNS = [
    "claim",
    "winner",
    "loser",
    "recipe",
    "seeds_winner",
    "seeds_loser",
    "diff_pp",
    "ci_low_pp",
    "ci_high_pp",
    "paper_diff_pp",
    "verdict",
]
NAN = float("nan")


@dataclass(frozen=True)
class SeedStats:
    n: int
    mean: float
    std: float  # sample std (ddof 1); NaN for one seed
    ci_low: float
    ci_high: float


def _t(df: float) -> float:
    return float(sps.t.ppf(0.5 + CONFIDENCE / 2, df))


def seed_stats(values) -> SeedStats:
    v = np.asarray(list(values), dtype=float)
    n = len(v)
    if n == 0:
        return SeedStats(0, NAN, NAN, NAN, NAN)
    mean = float(v.mean())
    if n < 2:
        return SeedStats(1, mean, NAN, NAN, NAN)
    std = float(v.std(ddof=1))
    half = _t(n - 1) * std / math.sqrt(n)
    return SeedStats(n, mean, std, mean - half, mean + half)


def binomial_se(acc_pct: float, n: int | float) -> float:
    """Standard error (pp) of an accuracy measured on ``n`` test images."""
    if not n or math.isnan(acc_pct) or math.isnan(n):
        return NAN
    p = acc_pct / 100
    return 100 * math.sqrt(p * (1 - p) / n)


def welch(winner, loser) -> tuple[float, float, float]:
    """(mean(winner) - mean(loser), CI low, CI high) at 95%, Welch-Satterthwaite degrees of freedom."""
    a, b = np.asarray(list(winner), dtype=float), np.asarray(list(loser), dtype=float)
    if len(a) == 0 or len(b) == 0:
        return NAN, NAN, NAN
    diff = float(a.mean() - b.mean())
    if len(a) < 2 or len(b) < 2:
        return diff, NAN, NAN
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return diff, diff, diff
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = _t(df) * se
    return diff, diff - half, diff + half


def verdict(ci_low: float, ci_high: float) -> str:
    if math.isnan(ci_low) or math.isnan(ci_high):
        return "inconclusive"
    if ci_low > 0:
        return "reproduced"
    if ci_high < 0:
        return "contradicted"
    return "inconclusive"


def summarise(per_run: pd.DataFrame) -> pd.DataFrame:
    """One row per model x recipe x fraction: seed statistics of best and final test accuracy,
    the binomial SE of the mean accuracy on n_test images, and mean costs."""
    rows = []
    for (model, recipe, fraction), g in per_run.groupby(["model", "recipe", "fraction"], sort=False):
        row = {"model": model, "recipe": recipe, "fraction": fraction, "seeds": len(g)}
        for what in ("best", "final"):
            s = seed_stats(g[f"{what}_test_acc"])
            row |= {
                f"{what}_test_acc_mean": s.mean,
                f"{what}_test_acc_std": s.std,
                f"{what}_test_acc_ci_low": s.ci_low,
                f"{what}_test_acc_ci_high": s.ci_high,
            }
        row["n_test"] = g["n_test"].mean() if "n_test" in g else NAN
        row["binomial_se_pp"] = binomial_se(row["best_test_acc_mean"], row["n_test"])
        for col in (
            "n_train",
            "epochs",
            "best_epoch",
            "train_seconds",
            "wall_seconds",
            "train_images_per_s",
            "infer_images_per_s",
            "train_pflops",
        ):
            row[col] = g[col].mean() if col in g and g[col].notna().any() else NAN
        for col in ("params", "flops_per_image", "peak_mem_mb", "device", "threads", "precision"):
            row[col] = g[col].dropna().iloc[0] if col in g and g[col].notna().any() else None
        rows.append(row)
    return pd.DataFrame(rows)


def _values(per_run: pd.DataFrame, model: str, recipe: str, fraction: float = 1.0) -> pd.Series:
    sel = (per_run.model == model) & (per_run.recipe == recipe) & (per_run.fraction == fraction)
    return per_run.loc[sel, "best_test_acc"]


def claims_table(per_run: pd.DataFrame, claims, paper_gaps: dict) -> pd.DataFrame:
    """Every (winner, loser, claim) of ``claims`` for every recipe, on the full training set."""
    rows = []
    for winner, loser, text in claims:
        for recipe in dict.fromkeys(per_run.recipe):
            a, b = _values(per_run, winner, recipe), _values(per_run, loser, recipe)
            if a.empty or b.empty:
                continue
            diff, low, high = welch(a, b)
            rows.append(
                {
                    "claim": text,
                    "winner": winner,
                    "loser": loser,
                    "recipe": recipe,
                    "seeds_winner": len(a),
                    "seeds_loser": len(b),
                    "diff_pp": diff,
                    "ci_low_pp": low,
                    "ci_high_pp": high,
                    "paper_diff_pp": paper_gaps.get((winner, loser), NAN),
                    "verdict": verdict(low, high),
                }
            )
    return pd.DataFrame(rows, columns=CLAIM_COLUMNS)


def crossing(per_run: pd.DataFrame, a: str, b: str, recipe: str) -> dict:
    """Where ``a``'s and ``b``'s accuracy-vs-data curves cross, judged with the claims' rules."""
    points = []
    for fraction in sorted(set(per_run.fraction)):
        va, vb = _values(per_run, a, recipe, fraction), _values(per_run, b, recipe, fraction)
        if va.empty or vb.empty:
            continue
        n = per_run.loc[(per_run.fraction == fraction) & (per_run.model == a), "n_train"]
        diff, low, high = welch(va, vb)
        points.append(
            {
                "fraction": fraction,
                "train_images": int(n.iloc[0]) if n.notna().any() else None,
                "diff_pp": diff,
                "ci_low_pp": low,
                "ci_high_pp": high,
                "verdict": verdict(low, high),
            }
        )
    ahead = [p for p in points if p["verdict"] != "inconclusive"]
    text = "fewer than two training-set sizes to compare"
    if len(points) >= 2:
        signs = [p["verdict"] for p in ahead]
        flips = [(p, q) for p, q in itertools.pairwise(ahead) if p["verdict"] != q["verdict"]]
        if flips:
            p, q = flips[0]
            lead = a if p["verdict"] == "reproduced" else b
            text = (
                f"the curves cross: {lead} is ahead at {p['train_images']} images and behind at "
                f"{q['train_images']} (95% intervals exclude 0 at both)"
            )
        elif ahead and len(set(signs)) == 1:
            lead = a if signs[0] == "reproduced" else b
            other = b if lead == a else a
            text = f"no crossing: {lead} is ahead of {other} wherever the difference is significant"
        else:
            text = "no crossing established: no training-set size gives a significant difference"
        means = [p["diff_pp"] for p in points]
        if any(x * y < 0 for x, y in itertools.pairwise(means)) and not flips:
            text += " (the mean curves do cross, within the noise)"
    return {"a": a, "b": b, "recipe": recipe, "points": points, "text": text}
