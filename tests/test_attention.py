"""Attention statistics per seed: a layer's heads as a set within each run, then over seeds.

Heads are numbered in the order a run's training happened to give them: head 2 of seed 0 and head 2
of seed 1 are unrelated, so no reported number may depend on the numbering."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import TINY_BY_ARCH

from cnnvit.report.sections import attention_sentences
from cnnvit.stages.figures import attention_plot
from cnnvit.stats.robustness import attention_summary


def long_table(rng: np.random.Generator, seeds=(0, 1, 2), layers=(1, 2, 3), heads=4) -> pd.DataFrame:
    rows = [
        {"model": m, "recipe": r, "seed": s, "layer": la, "head": h, "distance_px": rng.uniform(1, 16)}
        for m in ("vit", "cnn_vit") for r in ("paper", "modern") for s in seeds for la in layers
        for h in range(1, heads + 1)
    ]  # fmt: skip
    return pd.DataFrame(rows)


def permute_heads(long: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """Renumber the heads of every run and layer at random, and shuffle the rows."""
    out = long.copy()
    for _, idx in out.groupby(["model", "recipe", "seed", "layer"]).groups.items():
        out.loc[idx, "head"] = rng.permutation(out.loc[idx, "head"].to_numpy())
    return out.sample(frac=1, random_state=1).reset_index(drop=True)


def summary(long: pd.DataFrame) -> pd.DataFrame:
    s = attention_summary(long)
    s.insert(1, "label", s.model.map({"vit": "ViT", "cnn_vit": "CNN+ViT"}))  # as collect does
    return s


MODELS = {"vit": {"arch": "vit", **TINY_BY_ARCH["vit"], "patch_size": 4},
          "cnn_vit": {"arch": "cnn_vit", **TINY_BY_ARCH["cnn_vit"], "stem_strides": [1, 2, 2]}}  # fmt: skip


def test_renumbering_a_runs_heads_changes_no_reported_number():
    rng = np.random.default_rng(0)
    long = long_table(rng)
    shuffled = permute_heads(long, rng)
    by_head = ["model", "recipe", "seed", "layer", "head"]
    before, after = (t.sort_values(by_head).distance_px.to_numpy() for t in (long, shuffled))
    assert not np.array_equal(before, after)  # the numbering did change
    key = ["model", "recipe", "layer"]  # the rows in one order (collect's follows params.yaml's)
    a, b = (summary(t).sort_values(key).reset_index(drop=True) for t in (long, shuffled))
    pd.testing.assert_frame_equal(a, b)
    assert attention_sentences(a, MODELS) == attention_sentences(b, MODELS)
    for model in ("vit", "cnn_vit"):  # the figure draws the same numbers
        fa, fb = (attention_plot(t[t.model == model], model) for t in (a, b))
        for ax_a, ax_b in zip(fa.axes, fb.axes, strict=True):
            assert np.array_equal(ax_a.lines[0].get_ydata(), ax_b.lines[0].get_ydata())


def test_heads_are_not_averaged_by_index_across_seeds():
    # two seeds whose heads look near (2 px) and far (10 px), numbered the other way round
    near_far = {0: (2.0, 10.0), 1: (10.0, 2.0)}
    rows = [{"model": "vit", "recipe": "paper", "seed": s, "layer": 1, "head": h, "distance_px": d}
            for s, order in near_far.items() for h, d in zip((1, 2), order, strict=True)]  # fmt: skip
    r = attention_summary(pd.DataFrame(rows)).iloc[0]
    assert (r.min_px, r.max_px, r.range_px, r.mean_px) == (2.0, 10.0, 8.0, 6.0)  # by index: range 0
    assert (r.range_px_sd, r.mean_px_sd, r.seeds, r.heads) == (0.0, 0.0, 2, 2)


def test_per_seed_statistics_then_their_mean_and_spread():
    long = long_table(np.random.default_rng(3))
    s = attention_summary(long).set_index(["model", "recipe", "layer"]).loc[("vit", "modern", 2)]
    one = long[(long.model == "vit") & (long.recipe == "modern") & (long.layer == 2)].groupby("seed").distance_px
    ranges = one.max() - one.min()
    assert s.mean_px == pytest.approx(one.mean().mean()) and s.mean_px_sd == pytest.approx(one.mean().std())
    assert s.min_px == pytest.approx(one.min().mean()) and s.max_px_sd == pytest.approx(one.max().std())
    assert s.range_px == pytest.approx(ranges.mean()) and s.range_px_sd == pytest.approx(ranges.std())
    assert attention_summary(pd.DataFrame()).empty and "range_px_sd" in attention_summary(pd.DataFrame()).columns


def test_the_sentences_say_what_a_token_sees_and_one_seed_has_no_spread():
    s = summary(long_table(np.random.default_rng(4), seeds=(0,)))
    text = attention_sentences(s, MODELS)
    assert len(text) == 4  # 2 models x 2 recipes
    hybrid = next(t for t in text if t.startswith("CNN+ViT (paper"))
    assert "9x9-pixel window through the conv stem" in hybrid and "one per 4x4-pixel cell" in hybrid
    vit = next(t for t in text if t.startswith("ViT (paper"))
    assert "its own 4x4-pixel patch" in vit and "1 seed(s), 4 heads a layer" in vit
    assert "s.d. over seeds —" in vit  # one seed: no spread, a dash
    assert "layer 1:" in vit and "layer 3:" in vit
    deform = attention_sentences(s, MODELS | {"cnn_vit": MODELS["cnn_vit"] | {"stem_conv": "deformable"}})
    assert "9x9-pixel window through the conv stem, which its deformable conv's offsets can move" in deform[2]
