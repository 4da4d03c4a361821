"""Seed statistics, paired comparisons and the three-way verdicts: pure functions of accuracies.

    seed_stats([61.2, 60.4, 62.0])           # n, mean, sample std, 95% t-interval of the mean
    compare(a, b, floor)                     # winner - loser, by seed: paired t when the seeds match,
                                             # else Welch; SE floored at the test set's binomial SE
    holm([0.01, 0.04, 0.3])                  # Holm-adjusted p-values (statsmodels)
    claims_table(per_run, CLAIMS, gaps, ...)  # results/tables/claims.csv

A claim "winner beats loser" is judged on the test accuracy of the epoch chosen on the validation
split (or of the last epoch; never the best on the test set). Runs of two models that share their
seeds share data order, augmentation draws and subsets, so their per-seed differences are tested
with a paired t-test; otherwise Welch's t-test. The standard error never goes below the binomial
standard error of the two accuracies on this many test images (seeds that agree to the last
image do not make the test set infinitely large). The paper's three claims are one family per
recipe: their p-values are Holm-adjusted and the verdict uses the adjusted one: ``reproduced`` when
it is below 0.05 and the difference is positive, ``contradicted`` when it is below 0.05 and the
difference is negative, ``inconclusive`` otherwise, and always with fewer than 2 seeds a side.
Other comparisons (the stem variant, the data-size pairs) are exploratory: unadjusted, and marked so.
Beside each verdict: whether the paper's own gap lies inside the interval, the smallest difference
these seeds and test set could have detected (the interval's half-width), and McNemar's exact test
on the per-image predictions of each seed.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as sps
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests

CONFIDENCE = 0.95
ALPHA = 1 - CONFIDENCE
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
    # added with the paired statistics
    "metric",
    "test",
    "se_pp",
    "se_floored",
    "p_value",
    "p_holm",
    "detectable_pp",
    "paper_gap_in_interval",
    "mcnemar_p_max",
    "mcnemar_seeds_agree",
    "exploratory",
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
    return float(sps.t.ppf(1 - ALPHA / 2, df))


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


def binomial_se(acc_pct: float, n: float) -> float:
    """Standard error (pp) of an accuracy measured on ``n`` test images."""
    if not n or math.isnan(acc_pct) or math.isnan(n):
        return NAN
    p = acc_pct / 100
    return 100 * math.sqrt(p * (1 - p) / n)


@dataclass(frozen=True)
class Comparison:
    diff: float  # mean(a) - mean(b), pp
    ci_low: float
    ci_high: float
    se: float  # the standard error used (after the floor)
    floored: bool  # the test-set floor was larger than the seeds' standard error
    df: float
    p_value: float  # two-sided, for a difference of 0
    test: str  # "paired t", "Welch t", or why there is no test

    @property
    def half_width(self) -> float:
        return (self.ci_high - self.ci_low) / 2


def compare(a: Mapping[int, float], b: Mapping[int, float], floor: float = 0.0) -> Comparison:
    """a - b over seeds (``{seed: accuracy}``): a paired t-test when both have the same seeds,
    else Welch's; the standard error is at least ``floor``."""
    va, vb = np.array(list(a.values()), dtype=float), np.array(list(b.values()), dtype=float)
    diff = float(va.mean() - vb.mean()) if len(va) and len(vb) else NAN
    if len(va) < 2 or len(vb) < 2:
        return Comparison(diff, NAN, NAN, NAN, False, NAN, NAN, "none: fewer than 2 seeds a side")
    quiet = warnings.catch_warnings()  # identical seeds make scipy warn; the floor below handles them
    with quiet:
        warnings.simplefilter("ignore", RuntimeWarning)
        if set(a) == set(b):
            seeds = sorted(a)
            res = sps.ttest_rel([a[s] for s in seeds], [b[s] for s in seeds])
        else:
            res = sps.ttest_ind(va, vb, equal_var=False)
    if set(a) == set(b):
        d = np.array([a[s] - b[s] for s in seeds])
        se, df, test = float(d.std(ddof=1) / math.sqrt(len(d))), float(len(d) - 1), "paired t"
    else:
        se = math.sqrt(va.var(ddof=1) / len(va) + vb.var(ddof=1) / len(vb))
        df, test = float(res.df), "Welch t"
        if not math.isfinite(df):  # both sides without spread: Welch's df is 0/0
            df = float(min(len(va), len(vb)) - 1)
    if se >= floor and se > 0:  # scipy's own interval and p-value
        ci = res.confidence_interval(CONFIDENCE)
        return Comparison(diff, float(ci.low), float(ci.high), se, False, df, float(res.pvalue), test)
    se = max(floor, se)
    if se == 0:
        return Comparison(diff, NAN, NAN, 0.0, True, df, NAN, f"{test}: no spread and no floor")
    half = _t(df) * se
    p = float(2 * sps.t.sf(abs(diff) / se, df))
    return Comparison(diff, diff - half, diff + half, se, True, df, p, test)


def holm(p_values) -> list[float]:
    """Holm's step-down adjustment (statsmodels); NaN p-values stay NaN and do not count."""
    p = np.asarray(list(p_values), dtype=float)
    out = np.full(len(p), NAN)
    ok = ~np.isnan(p)
    if ok.any():
        out[ok] = multipletests(p[ok], alpha=ALPHA, method="holm")[1]
    return [float(v) for v in out]


def verdict(p: float, diff: float) -> str:
    if math.isnan(p) or p >= ALPHA or diff == 0:
        return "inconclusive"
    return "reproduced" if diff > 0 else "contradicted"


def mcnemar_p(right_a: np.ndarray, right_b: np.ndarray) -> float:
    """McNemar's exact test of two models on the same images (booleans: was each right?)."""
    n01 = int((right_a & ~right_b).sum())
    n10 = int((~right_a & right_b).sum())
    both, neither = int((right_a & right_b).sum()), int((~right_a & ~right_b).sum())
    return float(mcnemar([[both, n01], [n10, neither]], exact=True).pvalue)


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """ECE in percent: the mean over equal-width confidence bins of |accuracy - confidence|,
    weighted by the share of images in each bin (Guo et al. 2017)."""
    conf = probs.max(1)
    right = probs.argmax(1) == labels
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            total += inside.mean() * abs(right[inside].mean() - conf[inside].mean())
    return 100 * float(total)


# ----------------------------------------------------------------------------- tables


def _accs(per_run: pd.DataFrame, model: str, recipe: str, metric: str, fraction: float = 1.0) -> pd.Series:
    sel = (per_run.model == model) & (per_run.recipe == recipe) & (per_run.fraction == fraction)
    return per_run.loc[sel].set_index("seed")[f"{metric}_test_acc"]


def floor_se(per_run: pd.DataFrame, a: pd.Series, b: pd.Series) -> float:
    """The binomial standard error of the difference of the two mean accuracies on this test set."""
    n = float(per_run["n_test"].max()) if "n_test" in per_run and per_run["n_test"].notna().any() else NAN
    return math.hypot(binomial_se(float(a.mean()), n), binomial_se(float(b.mean()), n)) if n == n else 0.0


def comparison_row(per_run: pd.DataFrame, winner: str, loser: str, recipe: str, metric: str, fraction: float = 1.0):
    a, b = _accs(per_run, winner, recipe, metric, fraction), _accs(per_run, loser, recipe, metric, fraction)
    if a.empty or b.empty:
        return None
    return a, b, compare(a.to_dict(), b.to_dict(), floor_se(per_run, a, b))


def claims_table(
    per_run: pd.DataFrame,
    claims,
    paper_gaps: dict,
    metric: str = "selected",
    right: Mapping[tuple[str, str, int], np.ndarray] | None = None,
    exploratory: bool = False,
) -> pd.DataFrame:
    """Every (winner, loser, claim) of ``claims`` for every recipe, on the full training set.
    ``right[(model, recipe, seed)]`` (the per-image correctness at ``metric``'s epoch) adds
    McNemar's test per seed. The claims of one recipe are Holm-adjusted unless ``exploratory``."""
    rows = []
    for recipe in dict.fromkeys(per_run.recipe):
        family = []
        for winner, loser, text in claims:
            got = comparison_row(per_run, winner, loser, recipe, metric)
            if got is None:
                continue
            a, b, c = got
            gap = paper_gaps.get((winner, loser), NAN)
            p_mc = [
                mcnemar_p(right[(winner, recipe, s)], right[(loser, recipe, s)])
                for s in sorted(set(a.index) & set(b.index))
                if right is not None and (winner, recipe, s) in right and (loser, recipe, s) in right
            ]
            agree = [
                s
                for s, p in zip(sorted(set(a.index) & set(b.index)), p_mc, strict=False)
                if p < ALPHA and np.sign(a[s] - b[s]) == np.sign(c.diff)
            ]
            family.append(
                {
                    "claim": text,
                    "winner": winner,
                    "loser": loser,
                    "recipe": recipe,
                    "seeds_winner": len(a),
                    "seeds_loser": len(b),
                    "diff_pp": c.diff,
                    "ci_low_pp": c.ci_low,
                    "ci_high_pp": c.ci_high,
                    "paper_diff_pp": gap,
                    "metric": metric,
                    "test": c.test,
                    "se_pp": c.se,
                    "se_floored": c.floored,
                    "p_value": c.p_value,
                    "detectable_pp": c.half_width,
                    "paper_gap_in_interval": bool(c.ci_low <= gap <= c.ci_high) if gap == gap else False,
                    "mcnemar_p_max": max(p_mc) if p_mc else NAN,
                    "mcnemar_seeds_agree": f"{len(agree)}/{len(p_mc)}" if p_mc else "",
                    "exploratory": exploratory,
                }
            )
        adjusted = [r["p_value"] for r in family] if exploratory else holm(r["p_value"] for r in family)
        for r, p in zip(family, adjusted, strict=True):
            r["p_holm"] = NAN if exploratory else p
            r["verdict"] = verdict(p, r["diff_pp"])
        rows += family
    return pd.DataFrame(rows, columns=CLAIM_COLUMNS)


def crossing(per_run: pd.DataFrame, a: str, b: str, recipe: str, metric: str = "selected") -> dict:
    """Where ``a``'s and ``b``'s accuracy-vs-data curves cross (exploratory: unadjusted tests)."""
    points = []
    for fraction in sorted(set(per_run.fraction)):
        got = comparison_row(per_run, a, b, recipe, metric, fraction)
        if got is None:
            continue
        n = per_run.loc[(per_run.fraction == fraction) & (per_run.model == a), "n_train"]
        c = got[2]
        points.append(
            {
                "fraction": fraction,
                "train_images": int(n.iloc[0]) if n.notna().any() else None,
                "diff_pp": c.diff,
                "ci_low_pp": c.ci_low,
                "ci_high_pp": c.ci_high,
                "test": c.test,
                "p_value": c.p_value,
                "verdict": verdict(c.p_value, c.diff),
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
                f"{q['train_images']} (p < {ALPHA:g} at both, unadjusted)"
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


SUMMARY_METRICS = ("selected", "final", "best")


def summarise(per_run: pd.DataFrame) -> pd.DataFrame:
    """One row per model x recipe x fraction: seed statistics of the selected, final and best test
    accuracy, the optimism of the best (best - selected), calibration, the binomial SE of one
    accuracy on n_test images, and mean costs."""
    rows = []
    for (model, recipe, fraction), g in per_run.groupby(["model", "recipe", "fraction"], sort=False):
        row = {"model": model, "recipe": recipe, "fraction": fraction, "seeds": len(g)}
        for what in SUMMARY_METRICS:
            s = seed_stats(g[f"{what}_test_acc"])
            row |= {
                f"{what}_test_acc_mean": s.mean,
                f"{what}_test_acc_std": s.std,
                f"{what}_test_acc_ci_low": s.ci_low,
                f"{what}_test_acc_ci_high": s.ci_high,
            }
        row["optimism_pp"] = float((g.best_test_acc - g.selected_test_acc).mean())
        row["diverged_runs"] = int(g["diverged"].notna().sum()) if "diverged" in g else 0
        row["n_test"] = g["n_test"].mean() if "n_test" in g else NAN
        row["binomial_se_pp"] = binomial_se(row["selected_test_acc_mean"], row["n_test"])
        for col in (
            "selected_epoch",
            "best_test_epoch",
            "selected_ece",
            "final_ece",
            "selected_test_loss",
            "n_train",
            "n_val",
            "epochs",
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
