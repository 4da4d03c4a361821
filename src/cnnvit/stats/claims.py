"""The paper's claims judged from this run's per-image predictions, and the per-model summary.

    claims_table(CLAIMS, recipes, right, final, margin=2.0)   # results/tables/claims.csv
    crossing(right_by_fraction, "vit", "resnet50", "paper")   # the data-size curves (exploratory)
    summarise(per_run)                                         # results/tables/summary.csv

Each claim is a difference ``a - b`` of test accuracy (pp) at the epoch chosen on the validation
split (``analysis.metric: selected``; or the last epoch), estimated from the per-image correctness
of every seed of both models on the same test images (:func:`cnnvit.stats.intervals.paired_difference`:
seed noise and test-image noise, each with its own degrees of freedom, combined in quadrature).

The claims of one recipe are one family, tested at the Bonferroni level: each interval is a
``1 - 0.05/m`` interval (m = the claims planned, ``analysis.claims``), and the verdict is read off
that very interval against the claim's threshold (0 for "a beats b", ``-margin`` for "a comes
close to b or exceeds it"): ``reproduced`` when the whole interval lies above it, ``contradicted``
when below, ``inconclusive`` when it holds it (and always with fewer than 2 seeds a side). The
adjusted p-value (``m`` x the two-sided p of "the difference equals the threshold", capped at 1)
is below 0.05 exactly when the interval excludes the threshold. Beside each verdict: the minimum
detectable effect (80% power at the same level), what would decide an inconclusive claim, the
paper's own gap with its noise, and McNemar's exact test per seed. Other comparisons (a variant
of a paper model, the data-size pairs) are exploratory: 95% intervals, unadjusted, marked so.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as sps

from cnnvit.paper import Claim, paper_gap
from cnnvit.stats.intervals import (
    NAN,
    POWER,
    Difference,
    binomial_se,
    decide,
    mcnemar_p,
    paired_difference,
    seed_stats,
    t_quantile,
)

ALPHA = 0.05
FULL_TEST_SET = 10_000  # CIFAR-10's test split: the most test images any preset can score on
MAX_SEEDS = 50  # beyond this, "more seeds" is no advice
CLAIM_COLUMNS = [
    "claim_id",
    "claim",
    "kind",
    "a",
    "b",
    "recipe",
    "metric",
    "seeds_a",
    "seeds_b",
    "n_test",
    "diff_pp",
    "threshold_pp",
    "level",
    "ci_low_pp",
    "ci_high_pp",
    "verdict",
    "p_adjusted",
    "mde_pp",
    "to_decide",
    "se_pp",
    "se_seed_pp",
    "se_image_pp",
    "df",
    "test",
    "final_diff_pp",
    "paper_gap_pp",
    "paper_gap_epoch",
    "paper_gap_se_pp",
    "paper_gap_consistent",
    "paper_table4_gap_pp",
    "paper_table4_epochs",
    "mcnemar_p_max",
    "mcnemar_seeds_agree",
    "exploratory",
    "quote",
    "section",
]

Right = Mapping[tuple[str, str, int], np.ndarray]  # (model, recipe, seed) -> per test image: was it right?


def difference(right: Right, a: str, b: str, recipe: str) -> Difference:
    """a - b in pp over every seed either ran, from per-image correctness."""
    xa = {s: 100.0 * r for (m, rc, s), r in right.items() if (m, rc) == (a, recipe)}
    xb = {s: 100.0 * r for (m, rc, s), r in right.items() if (m, rc) == (b, recipe)}
    return paired_difference(xa, xb)


def to_decide(d: Difference, threshold: float, level: float) -> str:
    """For an inconclusive claim: how many seeds (or test images) would make its MDE as small as
    the distance between its estimate and its threshold."""
    if not d.testable:
        return "run at least 2 seeds of each model (runs.seeds)"
    gap = abs(d.diff - threshold)
    if d.mde(level) <= gap:
        return ""
    images = max(d.n_images, FULL_TEST_SET)
    for seeds in range(max(d.seeds) + 1, MAX_SEEDS + 1):
        for n in dict.fromkeys((d.n_images, images)):
            if d.scaled(seeds, n).mde(level) <= gap:
                more = f" and all {n:,} test images (test_size: 0)" if n > d.n_images else ""
                return f"about {seeds} seeds a model{more} would detect a difference of {gap:.1f} pp from the threshold"
    best = d.scaled(MAX_SEEDS, images).mde(level)
    return (
        f"no practical number of seeds: the estimate is {gap:.2f} pp from the threshold, and even {MAX_SEEDS} seeds "
        f"on {images:,} test images detect only {best:.1f} pp"
    )


def _mcnemar(right: Right, a: str, b: str, recipe: str, sign: float) -> tuple[float, str]:
    """McNemar's exact p per seed both ran: the largest, and how many seeds are significant with the
    estimate's sign."""
    seeds = sorted(
        {s for m, rc, s in right if (m, rc) == (a, recipe)} & {s for m, rc, s in right if (m, rc) == (b, recipe)}
    )
    if not seeds:
        return NAN, ""
    agree, ps = 0, []
    for s in seeds:
        ra, rb = right[(a, recipe, s)], right[(b, recipe, s)]
        p = mcnemar_p(ra, rb)
        ps.append(p)
        agree += p < ALPHA and np.sign(ra.mean() - rb.mean()) == sign
    return max(ps), f"{agree}/{len(seeds)}"


def claim_row(
    claim: Claim, recipe: str, right: Right, final: Right, margin: float, planned: int, exploratory: bool, metric: str
) -> dict | None:
    """One claim in one recipe, or None when one of its models has no run in that recipe."""
    d = difference(right, claim.a, claim.b, recipe)
    if math.isnan(d.diff):
        return None
    level = 1 - ALPHA if exploratory else 1 - ALPHA / planned
    threshold = claim.threshold(margin)
    low, high = d.interval(level)
    p = d.p_value(threshold)
    fin = difference(final, claim.a, claim.b, recipe)
    gap = paper_gap(claim) if not exploratory else None
    se_paper = math.sqrt(sum(fin.seed_var) + fin.image_var / FULL_TEST_SET) if fin.testable else NAN
    consistent: object = NAN
    if gap is not None and fin.testable:
        consistent = bool(abs(fin.diff - gap.equal) <= 1.96 * math.hypot(fin.se, se_paper))
    p_max, agree = _mcnemar(right, claim.a, claim.b, recipe, np.sign(d.diff))
    verdict = decide(low, high, threshold) if d.testable else "inconclusive"
    return {
        "claim_id": claim.id,
        "claim": claim.statement(margin),
        "kind": claim.kind,
        "a": claim.a,
        "b": claim.b,
        "recipe": recipe,
        "metric": metric,
        "seeds_a": d.n_a,
        "seeds_b": d.n_b,
        "n_test": d.n_images,
        "diff_pp": d.diff,
        "threshold_pp": threshold,
        "level": level,
        "ci_low_pp": low,
        "ci_high_pp": high,
        "verdict": verdict,
        "p_adjusted": p if exploratory else min(1.0, planned * p),
        "mde_pp": d.mde(level, POWER),
        "to_decide": to_decide(d, threshold, level) if verdict == "inconclusive" else "",
        "se_pp": d.se,
        "se_seed_pp": d.se_seed,
        "se_image_pp": d.se_image,
        "df": d.df,
        "test": d.test,
        "final_diff_pp": fin.diff,
        "paper_gap_pp": gap.equal if gap else NAN,
        "paper_gap_epoch": gap.equal_epoch if gap else NAN,
        "paper_gap_se_pp": se_paper if gap else NAN,
        "paper_gap_consistent": consistent,
        "paper_table4_gap_pp": gap.table4 if gap else NAN,
        "paper_table4_epochs": gap.table4_epochs if gap else "",
        "mcnemar_p_max": p_max,
        "mcnemar_seeds_agree": agree,
        "exploratory": exploratory,
        "quote": claim.quote,
        "section": claim.section,
    }


def claims_table(
    claims: Sequence[Claim],
    recipes: Sequence[str],
    right: Right,
    final: Right,
    margin: float,
    metric: str = "selected",
    planned: int | None = None,
    exploratory: bool = False,
) -> pd.DataFrame:
    """Every claim in every recipe. ``right`` holds the per-image correctness at ``metric``'s epoch,
    ``final`` at the last epoch (set beside the paper's last-epoch numbers). The family of a recipe
    is ``planned`` claims (default: as many as given), tested at the Bonferroni level."""
    planned = planned or max(1, len(claims))
    rows = [
        row
        for recipe in recipes
        for claim in claims
        if (row := claim_row(claim, recipe, right, final, margin, planned, exploratory, metric)) is not None
    ]
    return pd.DataFrame(rows, columns=CLAIM_COLUMNS)


def crossing(right_by_fraction: Mapping[float, Right], a: str, b: str, recipe: str, n_train: Mapping) -> dict:
    """Where ``a``'s and ``b``'s accuracy-vs-data curves cross (exploratory: 95%, unadjusted)."""
    points = []
    for fraction in sorted(right_by_fraction):
        d = difference(right_by_fraction[fraction], a, b, recipe)
        if math.isnan(d.diff):
            continue
        low, high = d.interval(1 - ALPHA)
        points.append(
            {
                "fraction": fraction,
                "train_images": n_train.get(fraction),
                "diff_pp": d.diff,
                "ci_low_pp": low,
                "ci_high_pp": high,
                "test": d.test,
                "p_value": d.p_value(0.0),
                "verdict": decide(low, high) if d.testable else "inconclusive",
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
                f"{q['train_images']} (95% intervals, unadjusted)"
            )
        elif ahead and len(set(signs)) == 1:
            lead = a if signs[0] == "reproduced" else b
            other = b if lead == a else a
            text = f"no crossing: {lead} is ahead of {other} wherever the difference is clear"
        else:
            text = "no crossing established: no training-set size gives a clear difference"
        means = [float(p["diff_pp"]) for p in points]  # type: ignore[arg-type]
        if any(x * y < 0 for x, y in itertools.pairwise(means)) and not flips:
            text += " (the mean curves do cross, within the noise)"
    return {"a": a, "b": b, "recipe": recipe, "points": points, "text": text}


# ----------------------------------------------------------------------------- legacy seed-level t-tests
# (robustness.py's pairs until they move to per-image pairing; then this goes)


def _t(df: float) -> float:
    return t_quantile(1 - ALPHA / 2, df)


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
        ci = res.confidence_interval(1 - ALPHA)
        return Comparison(diff, float(ci.low), float(ci.high), se, False, df, float(res.pvalue), test)
    se = max(floor, se)
    if se == 0:
        return Comparison(diff, NAN, NAN, 0.0, True, df, NAN, f"{test}: no spread and no floor")
    half = _t(df) * se
    p = float(2 * sps.t.sf(abs(diff) / se, df))
    return Comparison(diff, diff - half, diff + half, se, True, df, p, test)


def verdict(p: float, diff: float) -> str:
    if math.isnan(p) or p >= ALPHA or diff == 0:
        return "inconclusive"
    return "reproduced" if diff > 0 else "contradicted"


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
