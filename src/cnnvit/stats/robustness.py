"""The corruption benchmark's numbers: per run, per model, the mCE, and how the models' drops compare.

    per_image = {(model, recipe, seed): read_per_image(path, run), ...}   # each run's robustness_correct.npz
    per_run = robustness_runs(long)              # clean and mean corrupted accuracy, drops, per run
    summary = robustness_summary(long, per_run, per_image)   # per model x recipe: seed means, mCE
    pairs = robustness_pairs(per_image)          # ViT vs ResNet50 / the hybrid: exploratory
    attention_summary(attention)                 # per layer: statistics over each run's heads, then seeds

The drop is clean accuracy less the mean over every corruption and severity, on the same images: in
points (``drop_pp``, linear in the per-image results) and relative to the clean accuracy
(``relative_drop_pct``). The mCE follows Hendrycks & Dietterich (2019): for each corruption, the
model's errors summed over severities divided by the baseline's (here the ResNet50 of the same
recipe, not AlexNet), averaged over corruptions, in percent; the relative mCE does the same with each
error less the clean error. Errors are means over seeds. The relative mCE divides by how much the
baseline's error rises under each corruption; on a few hundred images that rise can be within noise
of zero (or below it), and the ratio then means nothing: where the 95% interval of any corruption's
rise (seeds and images, :func:`cnnvit.stats.intervals.paired_difference`) reaches down to zero, the
relative mCE is left out (NaN) and ``relative_mce_note`` says which corruptions.

The paper makes no claim about corruptions, so every comparison here is exploratory: the difference
in the per-image drop of two models, paired by seed and by image, with a 95% interval (unadjusted),
read as ``exploratory: higher``, ``lower`` or ``no difference detected``; never reproduced or
contradicted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cnnvit.errors import CnnvitError
from cnnvit.paper import ROBUSTNESS_BASELINE, ROBUSTNESS_PAIRS
from cnnvit.stats.intervals import paired_difference, seed_stats

BASELINE = ROBUSTNESS_BASELINE
LEVEL = 0.95
PAIRS = ROBUSTNESS_PAIRS  # (a, b, the comparison): a's drop minus b's
PAIR_COLUMNS = ["comparison", "a", "b", "recipe", "quantity", "seeds", "images", "diff_pp", "ci_low_pp",
                "ci_high_pp", "se_seed_pp", "se_image_pp", "test", "p_value", "result", "exploratory"]  # fmt: skip


@dataclass(frozen=True)
class PerImage:
    """One run on the robustness images: was it right, clean (N) and per corruption x severity x image."""

    clean: np.ndarray
    corrupted: np.ndarray
    indices: np.ndarray  # the images' positions in the prepared test split
    corruptions: tuple[str, ...]
    severities: tuple[int, ...]

    @property
    def drop_pp(self) -> np.ndarray:
        """Per image: 100 x (clean right - the share of corrupted versions it got right)."""
        return 100.0 * (self.clean.astype(float) - self.corrupted.mean(axis=(0, 1)))

    def error_rise_pp(self, corruption: str) -> np.ndarray:
        """Per image: 100 x (corrupted errors summed over severities - that many clean errors), the
        relative mCE's term for this corruption."""
        i = self.corruptions.index(corruption)
        return 100.0 * (len(self.severities) * self.clean.astype(float) - self.corrupted[i].sum(axis=0))


def write_per_image(path: Path, clean: np.ndarray, corrupted: np.ndarray, indices, corruptions, severities) -> None:
    """What ``cnnvit evaluate`` writes per run (``robustness_correct.npz``): bools, clean (N) and
    corruptions x severities x N, with the images' test-split positions and the axes' names."""
    np.savez(path, clean=clean.astype(bool), corrupted=corrupted.astype(bool), indices=np.asarray(indices),
             corruptions=np.asarray(corruptions, dtype=str), severities=np.asarray(severities))  # fmt: skip


def read_per_image(path: Path, run: str) -> PerImage:
    again = f"run `cnnvit evaluate` for {run} again"
    try:
        with np.load(path, allow_pickle=False) as z:
            p = PerImage(z["clean"], z["corrupted"], z["indices"], tuple(str(c) for c in z["corruptions"]),
                         tuple(int(s) for s in z["severities"]))  # fmt: skip
    except FileNotFoundError:
        raise CnnvitError(f"{path} not found: evaluate run {run} first (cnnvit evaluate, or the pipeline)") from None
    except (OSError, ValueError, KeyError) as exc:
        raise CnnvitError(f"{path} is corrupt or not a cnnvit per-image file ({type(exc).__name__}): {again}") from None
    shape = (len(p.corruptions), len(p.severities), len(p.clean))
    if p.clean.dtype != bool or p.corrupted.dtype != bool or p.corrupted.shape != shape:
        raise CnnvitError(f"{path} does not hold per-image results shaped corruptions x severities x images: {again}")
    return p


def robustness_runs(long: pd.DataFrame) -> pd.DataFrame:
    """One row per run: accuracy on the clean robustness images, the mean over every corruption
    and severity, the drop in points and relative to the clean accuracy (%)."""
    rows = []
    for (model, recipe, seed), g in long.groupby(["model", "recipe", "seed"], sort=False):
        clean = float(g.loc[g.corruption == "clean", "acc"].iloc[0])
        mean = float(g.loc[g.corruption != "clean", "acc"].mean())
        drop = 100 * (clean - mean) / clean if clean else float("nan")
        rows.append({"model": model, "recipe": recipe, "seed": seed, "clean_acc": clean, "corrupted_acc": mean,
                     "drop_pp": clean - mean, "relative_drop_pct": drop})  # fmt: skip
    columns = ["model", "recipe", "seed", "clean_acc", "corrupted_acc", "drop_pp", "relative_drop_pct"]
    return pd.DataFrame(rows, columns=columns)


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


def baseline_rises(per_image: dict, recipe: str, baseline: str = BASELINE) -> dict[str, tuple[float, float]]:
    """Per corruption, the 95% interval of how much the baseline's error rises under it (pp summed
    over severities, mean over seeds and images): the relative mCE's denominator, with its noise."""
    runs = {seed: p for (m, r, seed), p in per_image.items() if m == baseline and r == recipe}
    if not runs:
        return {}
    zeros = {seed: np.zeros(len(p.clean)) for seed, p in runs.items()}
    corruptions = next(iter(runs.values())).corruptions
    return {c: paired_difference({s: p.error_rise_pp(c) for s, p in runs.items()}, zeros).interval(LEVEL)
            for c in corruptions}  # fmt: skip


def relative_mce_note(rises: dict[str, tuple[float, float]], baseline: str = BASELINE) -> str:
    """Why there is no relative mCE, or "" when its every denominator is clear of zero."""
    if not rises:
        return f"no relative mCE: no {baseline} runs of this recipe"
    if any(math.isnan(low) for low, _ in rises.values()):
        return f"no relative mCE: with fewer than 2 seeds of {baseline}, its error rise has no interval"
    noisy = [c for c, (low, _) in rises.items() if low <= 0]
    if noisy:
        return (f"no relative mCE: {baseline}'s error rise under {', '.join(noisy)} is within noise of zero "
                f"(its {LEVEL:.0%} interval reaches 0)")  # fmt: skip
    return ""


def robustness_summary(long: pd.DataFrame, per_run: pd.DataFrame, per_image: dict) -> pd.DataFrame:
    rows = []
    notes = {recipe: relative_mce_note(baseline_rises(per_image, recipe)) for recipe in dict.fromkeys(per_run.recipe)}
    for (model, recipe), g in per_run.groupby(["model", "recipe"], sort=False):
        row: dict = {"model": model, "recipe": recipe, "seeds": len(g)}
        for col in ("clean_acc", "corrupted_acc", "drop_pp", "relative_drop_pct"):
            s = seed_stats(g[col])
            row |= {f"{col}_mean": s.mean, f"{col}_std": s.std, f"{col}_ci_low": s.ci_low, f"{col}_ci_high": s.ci_high}
        row["mce_pct"], relative = mce(long, model, recipe)
        row["relative_mce_pct"] = float("nan") if notes[recipe] else relative
        row["relative_mce_note"] = notes[recipe]
        rows.append(row)
    return pd.DataFrame(rows)


def robustness_by_severity(long: pd.DataFrame) -> pd.DataFrame:
    """Mean accuracy per model x recipe x severity (0 = clean), over corruptions, then seeds."""
    per = long.groupby(["model", "recipe", "seed", "severity"], sort=False).acc.mean().reset_index()
    return per.groupby(["model", "recipe", "severity"], sort=False).acc.agg(["mean", "std"]).reset_index()


def _same_images(runs: dict[str, PerImage]) -> None:
    (first, ref), *rest = runs.items()
    for name, p in rest:
        same_axes = (p.corruptions, p.severities) == (ref.corruptions, ref.severities)
        if not (same_axes and np.array_equal(p.indices, ref.indices)):
            raise CnnvitError(
                f"runs {first} and {name} were evaluated on other robustness images or corruptions: run "
                f"`cnnvit evaluate` for both again (after `cnnvit corrupt`)"
            )


def result(low: float, high: float) -> str:
    if math.isnan(low) or math.isnan(high):
        return "exploratory: no interval (fewer than 2 seeds a side)"
    if low > 0:
        return "exploratory: higher"
    if high < 0:
        return "exploratory: lower"
    return "exploratory: no difference detected"


def robustness_pairs(per_image: dict) -> pd.DataFrame:
    """a's drop minus b's (pp) from the per-image drops of every seed of both, paired by seed and by
    image (the same robustness images in the same order), with a 95% interval: exploratory."""
    rows = []
    for recipe in dict.fromkeys(r for _, r, _ in per_image):
        for a, b, text in PAIRS:
            ra = {s: p for (m, r, s), p in per_image.items() if m == a and r == recipe}
            rb = {s: p for (m, r, s), p in per_image.items() if m == b and r == recipe}
            if not ra or not rb:
                continue
            _same_images({f"{m}-{recipe}-s{s}": p for m, runs in ((a, ra), (b, rb)) for s, p in runs.items()})
            d = paired_difference({s: p.drop_pp for s, p in ra.items()}, {s: p.drop_pp for s, p in rb.items()})
            low, high = d.interval(LEVEL)
            rows.append({"comparison": text, "a": a, "b": b, "recipe": recipe,
                         "quantity": "drop under corruption (clean - mean corrupted accuracy, pp)",
                         "seeds": "/".join(str(n) for n in d.seeds), "images": d.n_images, "diff_pp": d.diff,
                         "ci_low_pp": low, "ci_high_pp": high, "se_seed_pp": d.se_seed, "se_image_pp": d.se_image,
                         "test": d.test, "p_value": d.p_value(0.0), "result": result(low, high),
                         "exploratory": True})  # fmt: skip
    return pd.DataFrame(rows, columns=PAIR_COLUMNS)


ATTENTION_STATS = ("mean", "min", "max", "range")  # over the heads of one layer of one run
ATTENTION_COLUMNS = ["model", "recipe", "layer", "seeds", "heads"] + [
    f"{stat}_px{sd}" for stat in ATTENTION_STATS for sd in ("", "_sd")
]


def attention_summary(attention: pd.DataFrame) -> pd.DataFrame:
    """Per model x recipe x layer: statistics over the heads of each run (seed), then their mean
    and sample s.d. over seeds. Heads are never matched across seeds: head 2 of seed 0 and head 2
    of seed 1 are unrelated, so only what a layer's heads do as a set (their mean, least, largest
    distance and the range between) is compared, and renumbering a run's heads changes nothing."""
    if attention.empty:
        return pd.DataFrame(columns=ATTENTION_COLUMNS)
    per_seed = attention.groupby(["model", "recipe", "layer", "seed"], sort=False).distance_px
    stats = per_seed.agg(["mean", "min", "max", "count"])
    stats["range"] = stats["max"] - stats["min"]
    over_seeds = stats.groupby(["model", "recipe", "layer"], sort=False)
    out = over_seeds[list(ATTENTION_STATS)].agg(["mean", "std"])
    out.columns = [f"{stat}_px" + ("_sd" if how == "std" else "") for stat, how in out.columns]
    out["seeds"] = over_seeds.size()
    out["heads"] = over_seeds["count"].max()
    return out.reset_index()[ATTENTION_COLUMNS]
