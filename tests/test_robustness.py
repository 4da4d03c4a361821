"""Robustness statistics: the mCE relative to ResNet50, per-image pairing, the relative mCE only
where its denominator is clear of noise, and comparisons the paper never made read as exploratory."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cnnvit.errors import CnnvitError
from cnnvit.report.sections import robustness_pair_rows, robustness_rows
from cnnvit.stats import robustness as R
from cnnvit.stats.robustness import mce

CORRUPTIONS, SEVERITIES, N = ("fog", "contrast"), (1, 2), 400


FRAGILE = np.random.default_rng(99).random(N) - 0.5  # how much each image suffers, the same in every run


def per_image(rng, clean_acc: float, corrupted_acc, indices=None, spread: float = 0.0) -> R.PerImage:
    """A run whose images are right at these rates (corrupted_acc: one rate, or one per corruption),
    its corrupted rate lower on the fragile images by ``spread`` (a model's own sensitivity)."""
    rates = np.broadcast_to(np.asarray(corrupted_acc, dtype=float), (len(CORRUPTIONS),))
    clean = rng.random(N) < clean_acc
    corrupted = np.stack([rng.random((len(SEVERITIES), N)) < np.clip(r - spread * FRAGILE, 0, 1) for r in rates])
    return R.PerImage(clean, corrupted, np.arange(N) if indices is None else indices, CORRUPTIONS, SEVERITIES)


def long_from(runs: dict) -> pd.DataFrame:
    """robustness.csv of every run, as cnnvit evaluate writes it, from its per-image results."""
    rows = []
    for (model, recipe, seed), p in runs.items():
        rows.append({"model": model, "recipe": recipe, "seed": seed, "corruption": "clean", "severity": 0,
                     "acc": 100 * p.clean.mean()})  # fmt: skip
        for i, c in enumerate(p.corruptions):
            for j, s in enumerate(p.severities):
                rows.append({"model": model, "recipe": recipe, "seed": seed, "corruption": c, "severity": s,
                             "acc": 100 * p.corrupted[i, j].mean()})  # fmt: skip
    return pd.DataFrame(rows)


def test_mce_is_relative_to_resnet50():
    rows = []
    for model, err in (("resnet50", 40.0), ("vit", 60.0)):
        rows += [{"model": model, "recipe": "paper", "seed": 0, "corruption": "clean", "severity": 0, "acc": 80.0}]
        rows += [{"model": model, "recipe": "paper", "seed": 0, "corruption": c, "severity": s, "acc": 100 - err}
                 for c in ("fog", "snow") for s in (1, 2)]  # fmt: skip
    long = pd.DataFrame(rows)
    assert mce(long, "resnet50", "paper") == pytest.approx((100.0, 100.0))
    ours, relative = mce(long, "vit", "paper")
    assert ours == pytest.approx(150.0) and relative == pytest.approx(100 * (60 - 20) / (40 - 20))


def test_the_per_image_file_round_trips_and_bad_files_are_one_line(tmp_path):
    p = per_image(np.random.default_rng(0), 0.8, 0.5)
    R.write_per_image(tmp_path / "r.npz", p.clean, p.corrupted, p.indices, p.corruptions, p.severities)
    back = R.read_per_image(tmp_path / "r.npz", "vit-paper-s0")
    assert np.array_equal(back.corrupted, p.corrupted) and (back.corruptions, back.severities) == (CORRUPTIONS, (1, 2))
    assert back.drop_pp.mean() == pytest.approx(100 * (p.clean.mean() - p.corrupted.mean()))
    with pytest.raises(CnnvitError, match="not found: evaluate run vit-paper-s0 first"):
        R.read_per_image(tmp_path / "missing.npz", "vit-paper-s0")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(CnnvitError, match=r"is corrupt or not a cnnvit per-image file .*evaluate` for vit-paper-s0"):
        R.read_per_image(tmp_path / "bad.npz", "vit-paper-s0")
    R.write_per_image(tmp_path / "short.npz", p.clean[:10], p.corrupted, p.indices, p.corruptions, p.severities)
    with pytest.raises(CnnvitError, match="shaped corruptions x severities x images"):
        R.read_per_image(tmp_path / "short.npz", "vit-paper-s0")


def test_pairs_are_paired_by_image_and_exploratory():
    rng = np.random.default_rng(1)
    runs = {("vit", "paper", s): per_image(rng, 0.7, 0.3, spread=0.5) for s in range(3)}  # drops ~40 pp
    runs |= {("resnet50", "paper", s): per_image(rng, 0.8, 0.7) for s in range(3)}  # drops ~10 pp
    runs |= {("cnn_vit", "paper", s): per_image(rng, 0.75, 0.35, spread=0.2) for s in range(3)}  # ~40 pp, like ViT
    pairs = R.robustness_pairs(runs).set_index("comparison")
    assert list(pairs.reset_index().columns) == R.PAIR_COLUMNS and pairs.exploratory.all()
    vr = pairs.loc["ViT vs ResNet50"]
    expected = np.mean([runs["vit", "paper", s].drop_pp.mean() - runs["resnet50", "paper", s].drop_pp.mean()
                        for s in range(3)])  # fmt: skip
    assert vr.diff_pp == pytest.approx(expected) and vr.ci_low_pp > 0 and vr.result == "exploratory: higher"
    assert vr.test == "paired seeds x paired images" and (vr.seeds, vr.images) == ("3", N)
    assert pairs.loc["the CNN+ViT hybrid vs ResNet50"].result == "exploratory: higher"
    assert pairs.loc["ViT vs the CNN+ViT hybrid"].result == "exploratory: no difference detected"
    assert not set(pairs.result) & {"reproduced", "contradicted", "inconclusive"}
    flipped = R.robustness_pairs({(("vit" if m == "resnet50" else "resnet50") if m != "cnn_vit" else m, r, s): p
                                  for (m, r, s), p in runs.items()}).set_index("comparison")  # fmt: skip
    assert flipped.loc["ViT vs ResNet50"].result == "exploratory: lower"
    rows = robustness_pair_rows(pairs.reset_index())
    assert rows[0]["result"].startswith("exploratory: ") and " / " in rows[0]["se"]


def test_pairs_on_other_images_or_one_seed():
    rng = np.random.default_rng(2)
    runs = {("vit", "paper", 0): per_image(rng, 0.7, 0.3), ("resnet50", "paper", 0): per_image(rng, 0.8, 0.7)}
    assert R.robustness_pairs(runs).result.tolist() == ["exploratory: no interval (fewer than 2 seeds a side)"]
    runs["resnet50", "paper", 1] = per_image(rng, 0.8, 0.7, indices=np.arange(N) + 1)
    runs["vit", "paper", 1] = per_image(rng, 0.7, 0.3)
    with pytest.raises(CnnvitError, match="resnet50-paper-s1 were evaluated on other robustness images"):
        R.robustness_pairs(runs)
    assert R.robustness_pairs({}).empty and list(R.robustness_pairs({}).columns) == R.PAIR_COLUMNS


def test_no_relative_mce_where_the_baselines_error_rise_is_within_noise():
    rng = np.random.default_rng(3)
    # ResNet50's error rises a lot under fog and not at all under contrast (corrupted as accurate as clean)
    runs = {("resnet50", "paper", s): per_image(rng, 0.6, [0.3, 0.6]) for s in range(3)}
    runs |= {("vit", "paper", s): per_image(rng, 0.5, [0.2, 0.4]) for s in range(3)}
    long = long_from(runs)
    per_run = R.robustness_runs(long)
    summary = R.robustness_summary(long, per_run, runs).set_index("model")
    rises = R.baseline_rises(runs, "paper")
    assert rises["fog"][0] > 0 and rises["contrast"][0] <= 0 <= rises["contrast"][1]
    assert summary.relative_mce_pct.isna().all() and summary.mce_pct.notna().all()
    assert "error rise under contrast is within noise of zero" in summary.loc["vit", "relative_mce_note"]
    row = robustness_rows(summary.reset_index().assign(label=lambda d: d.model))[0]
    assert row["rel_mce"] == "—" and row["rel_mce_note"].startswith("Recipe paper: no relative mCE")
    # a clear rise under both: the relative mCE is there, and ResNet50's own is 100
    clear = {k: per_image(rng, 0.6, 0.3) for k in runs if k[0] == "resnet50"} | {
        k: v for k, v in runs.items() if k[0] == "vit"
    }
    long = long_from(clear)
    summary = R.robustness_summary(long, R.robustness_runs(long), clear).set_index("model")
    assert summary.loc["resnet50", "relative_mce_pct"] == pytest.approx(100.0)
    assert summary.relative_mce_note.eq("").all() and summary.drop_pp_mean.notna().all()
    # one seed of the baseline: no interval, no relative mCE
    one = {k: v for k, v in clear.items() if k[2] == 0}
    long = long_from(one)
    note = R.robustness_summary(long, R.robustness_runs(long), one).relative_mce_note.iloc[0]
    assert "fewer than 2 seeds of resnet50" in note
