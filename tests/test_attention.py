"""Where attention looks: the mean attention distance on maps with a known answer and on the
model's own attention, then its statistics per seed (a layer's heads as a set within each run, then
over seeds) and the sentences the report writes.

Heads are numbered in the order a run's training happened to give them: head 2 of seed 0 and head 2
of seed 1 are unrelated, so no reported number may depend on the numbering."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY_BY_ARCH, TINY_MODELS

from cnnvit.measure.attention import attention_maps, mean_distance, token_centres
from cnnvit.models import build_model, spec_from_dict
from cnnvit.report.sections import attention_sentences
from cnnvit.stages.figures import attention_plot
from cnnvit.stats.robustness import attention_summary


def test_attention_distance_on_maps_with_a_known_answer():
    grid, cell = 8, 4
    n = grid * grid + 1  # class token first
    own = np.zeros((1, 1, n, n))
    own[0, 0, np.arange(n), np.arange(n)] = 1  # every patch attends to itself: distance 0
    assert mean_distance(own, grid, cell) == pytest.approx([0.0])
    right = np.zeros((1, 1, n, n))
    for q in range(grid * grid):  # each patch attends to the one to its right (the last column to its left)
        r, c = divmod(q, grid)
        right[0, 0, 1 + q, 1 + r * grid + (c + 1 if c < grid - 1 else c - 1)] = 1
    assert mean_distance(right, grid, cell) == pytest.approx([4.0])  # one cell = 4 pixels
    uniform = np.full((1, 1, n, n), 1 / n)  # the class token's 1/65 adds nothing: not renormalised (ViT's way)
    centres = token_centres(grid, cell)
    all_pairs = np.sqrt(((centres[:, None] - centres[None]) ** 2).sum(-1)).mean()
    assert all_pairs == pytest.approx(16.546, abs=1e-3)
    assert mean_distance(uniform, grid, cell) == pytest.approx([all_pairs * 64 / 65])
    assert all_pairs * 64 / 65 == pytest.approx(16.291, abs=1e-3)
    two_heads = np.concatenate([own, uniform], axis=1)
    assert mean_distance(two_heads, grid, cell) == pytest.approx([0.0, all_pairs * 64 / 65])


def test_attention_maps_are_the_models_own_attention():
    model = build_model(spec_from_dict(TINY_MODELS["vit"])).eval()
    x = torch.randn(3, 3, 32, 32)
    maps = attention_maps(model, x)
    assert len(maps) == len(model.blocks) and maps[0].shape == (3, 2, 17, 17)  # 4x4 patches + class token
    assert np.allclose(maps[0].sum(-1), 1, atol=1e-5)
    blk = model.blocks[0]  # the block's own output, recomputed unfused from the maps, matches the fused one
    with torch.no_grad():
        tokens = model.norm_pre(model._pos_embed(model.patch_embed(x)))
        h = blk.norm1(tokens)
        b, n, c = h.shape
        v = blk.attn.qkv(h).reshape(b, n, 3, 2, c // 2).permute(2, 0, 3, 1, 4)[2]
        out = (torch.from_numpy(maps[0]) @ v).transpose(1, 2).reshape(b, n, c)
        assert torch.allclose(blk.attn.proj(out), blk.attn(h), atol=1e-5)


# ----------------------------------------------------------------------------- statistics over heads and seeds


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
