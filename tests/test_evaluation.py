"""Beyond accuracy: each corruption on a known image, the attention distance on maps with a known
answer, the evaluation of a trained run from its weights, and the cost measurements."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import ROOT, TINY_MODELS, assert_one_line_error, make_cifar_python, md5, prepare_dir, run_cli, tiny_params

from cnnvit.config.load import load_params, params_from_dict
from cnnvit.config.runs import run_config
from cnnvit.config.types import Corruption, RunSpec
from cnnvit.errors import CnnvitError
from cnnvit.measure import corruptions as C
from cnnvit.measure.attention import attention_maps, mean_distance, token_centres
from cnnvit.measure.cost import measure
from cnnvit.models import build_model, spec_from_dict
from cnnvit.stats.robustness import mce, read_per_image
from cnnvit.training import engine as train

PARAMS = ROOT / "params.yaml"


def test_the_corruption_names_are_one_list():
    import typing

    schema_names = load_params(PARAMS).raw["robustness"]["corruptions"]
    assert list(C.CORRUPTIONS) == list(typing.get_args(Corruption)) == schema_names
    assert "frost" not in C.CORRUPTIONS and len(C.CORRUPTIONS) == 14


# ----------------------------------------------------------------------------- one test per corruption

GREY = np.full((2, 32, 32, 3), 128, dtype=np.uint8)  # a flat mid-grey image, twice
EDGE = np.zeros((1, 32, 32, 3), dtype=np.uint8)
EDGE[:, :, 16:] = 255  # black left half, white right half


def mean_abs(a, b) -> float:
    return float(np.abs(a.astype(int) - b.astype(int)).mean())


@pytest.mark.parametrize("name", list(C.CORRUPTIONS))
def test_every_corruption_is_deterministic_and_grows_with_severity(name):
    img = (np.random.default_rng(3).random((4, 32, 32, 3)) * 255).astype(np.uint8)
    out = [C.corrupt(img, name, s, seed=1) for s in C.SEVERITIES]
    assert all(o.shape == img.shape and o.dtype == np.uint8 for o in out)
    assert np.array_equal(out[0], C.corrupt(img, name, 1, seed=1))  # the same seed, the same images
    changed = [mean_abs(o, img) for o in out]
    assert changed[0] > 0 and changed[4] >= 0.5 * max(changed)  # severity 5 is among the strongest


def test_gaussian_shot_and_impulse_noise_have_their_published_strength():
    big = np.full((20, 32, 32, 3), 128, dtype=np.uint8)
    noise = C.corrupt(big, "gaussian_noise", 5).astype(float) / 255 - 128 / 255
    assert noise.std() == pytest.approx(0.10, rel=0.05)  # c = 0.10 at severity 5
    shot = C.corrupt(big, "shot_noise", 5).astype(float) / 255
    p = 128 / 255
    assert shot.var() == pytest.approx(p / 50, rel=0.1)  # Poisson(50 p) / 50
    hit = C.corrupt(big, "impulse_noise", 5)
    assert np.isin(hit, [0, 255]).mean() == pytest.approx(0.07, abs=0.01)  # 7% of values, salt or pepper


@pytest.mark.parametrize("name", ["defocus_blur", "motion_blur", "zoom_blur", "glass_blur"])
def test_a_blur_leaves_a_flat_image_flat(name):
    out = C.corrupt(GREY, name, 5)
    assert np.abs(out.astype(int) - 128).max() <= 1
    assert mean_abs(C.corrupt(EDGE, name, 5), EDGE) > 1  # and does blur an edge


def test_contrast_and_brightness_by_hand():
    img = np.zeros((1, 32, 32, 3), dtype=np.uint8)
    img[:, :16] = 200
    out = C.corrupt(img, "contrast", 5)  # c = 0.15 around the mean (100/255)
    hi, lo = 100 + (200 - 100) * 0.15, 100 - 100 * 0.15
    assert abs(int(out[0, 0, 0, 0]) - hi) <= 1 and abs(int(out[0, 31, 0, 0]) - lo) <= 1
    rgb = np.zeros((1, 32, 32, 3), dtype=np.uint8)
    rgb[..., 0], rgb[..., 1] = 100, 50  # HSV value 100/255; +0.3 scales every channel by (100/255+0.3)/(100/255)
    out = C.corrupt(rgb, "brightness", 5)
    scale = (100 / 255 + 0.3) / (100 / 255)
    assert abs(int(out[0, 0, 0, 0]) - 100 * scale) <= 1 and abs(int(out[0, 0, 0, 1]) - 50 * scale) <= 1
    assert int(out[0, 0, 0, 2]) == 0 and (C.corrupt(np.zeros_like(rgb), "brightness", 5) == 76).all()


def test_pixelate_and_jpeg_are_what_pil_does():
    from PIL import Image

    img = (np.random.default_rng(0).random((1, 32, 32, 3)) * 255).astype(np.uint8)
    box = Image.Resampling.BOX
    ref = np.asarray(Image.fromarray(img[0]).resize((20, 20), box).resize((32, 32), box))  # 32 * 0.65 = 20
    assert np.array_equal(C.corrupt(img, "pixelate", 5)[0], ref)
    assert mean_abs(C.corrupt(img, "jpeg_compression", 5), img) > mean_abs(C.corrupt(img, "jpeg_compression", 1), img)


def test_fog_snow_and_elastic_change_an_image_as_they_should():
    fog = C.corrupt(GREY, "fog", 5)
    assert fog.std() > 1  # a height map over the image
    snow = C.corrupt(np.zeros((2, 32, 32, 3), dtype=np.uint8), "snow", 5)
    assert (snow > 200).mean() > 0.01  # white flakes on black
    elastic = C.corrupt(EDGE, "elastic_transform", 5)
    assert elastic[0, :, 0].max() < 60 and elastic[0, :, 31].min() > 190  # the halves stay, the edge moves


# ----------------------------------------------------------------------------- attention distance


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


# ----------------------------------------------------------------------------- evaluate a trained run


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("evaluate")
    archive = make_cifar_python(d / "c.tar.gz")
    data = prepare_dir(archive, d / "prepared")
    raw = tiny_params(str(archive), md5(archive), epochs=1)
    params = params_from_dict(raw)
    for model in ("vit", "resnet50"):
        train.train_run(run_config(params, RunSpec(model, "paper", 0)), data, d / f"runs/{model}-paper-s0", d / "ck")
    return d, raw, data


def evaluate_argv(d, model="vit"):
    return ["evaluate", "--model", model, "--recipe", "paper", "--data-dir", str(d / "prepared"), "--corrupted",
            str(d / "test_c.npz"), "--runs-dir", str(d / "runs"), "--out-dir", str(d / "eval")]  # fmt: skip


def test_a_trained_run_is_evaluated_from_its_weights(trained, tmp_path, capsys):
    d, raw, data = trained
    code, err = run_cli(tmp_path, capsys, ["corrupt", "--data-dir", str(data), "--out", str(d / "test_c.npz")], raw)
    assert code == 0, err
    for model in ("vit", "resnet50"):
        code, err = run_cli(tmp_path, capsys, evaluate_argv(d, model), raw)
        assert code == 0, err
    rob = pd.read_csv(d / "eval/vit-paper-s0/robustness.csv")
    assert len(rob) == 1 + 2 * 2 and rob.iloc[0].corruption == "clean" and rob.images.eq(10).all()
    preds = np.load(d / "runs/vit-paper-s0/predictions.npz")
    assert rob.iloc[0].acc >= 0 and set(rob.corruption) == {"clean", "gaussian_noise", "contrast"}
    attn = pd.read_csv(d / "eval/vit-paper-s0/attention.csv")
    assert len(attn) == 1 * 2 and (attn.distance_px > 0).all()  # depth 1, 2 heads
    assert pd.read_csv(d / "eval/resnet50-paper-s0/attention.csv").empty  # a convnet: the header only
    right = read_per_image(d / "eval/vit-paper-s0/robustness_correct.npz", "vit-paper-s0")  # per image, paired
    assert right.corrupted.shape == (2, 2, 10) and right.corruptions == ("gaussian_noise", "contrast")
    assert 100 * right.clean.mean() == pytest.approx(rob.iloc[0].acc)
    assert [100 * right.corrupted[i, j].mean() for i in range(2) for j in range(2)] == pytest.approx(list(rob.acc[1:]))
    assert len(preds["labels"]) == 20


def test_a_run_that_never_trained_or_foreign_weights_are_one_line(trained, tmp_path, capsys):
    d, raw, data = trained
    if not (d / "test_c.npz").exists():
        run_cli(tmp_path, capsys, ["corrupt", "--data-dir", str(data), "--out", str(d / "test_c.npz")], raw)
    code, err = run_cli(tmp_path, capsys, evaluate_argv(d, "cnn_vit"), raw)
    assert_one_line_error(
        code, err, "run cnn_vit-paper-s0 has no weights", "train it first (cnnvit train --model cnn_vit"
    )
    foreign = d / "runs/cnn_vit-paper-s0"
    foreign.mkdir(parents=True, exist_ok=True)
    (foreign / "weights.safetensors").write_bytes(b"\x80\x04this is a pickle, not safetensors")
    code, err = run_cli(tmp_path, capsys, evaluate_argv(d, "cnn_vit"), raw)
    assert_one_line_error(code, err, "is not a safetensors file", "train the run again")
    other = json.loads(json.dumps(raw))
    other["presets"]["tiny"]["models"]["vit"]["embed_dim"] = 32  # the params say another width
    code, err = run_cli(tmp_path, capsys, evaluate_argv(d, "vit"), other)
    assert_one_line_error(code, err, "weights.safetensors does not fit this model (shape of")


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("robustness.corruptions=[frost]", "robustness.corruptions.0: 'frost' is not one of"),
        ("robustness.severities=[0, 6]", "robustness.severities.0: 0 is not one of [1, 2, 3, 4, 5]"),
        ("cost.sizes=[]", "cost.sizes: [] should be non-empty"),
    ],
)
def test_bad_robustness_and_cost_settings_name_the_key(override, needle):
    with pytest.raises(CnnvitError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        load_params(PARAMS, [override])


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


# ----------------------------------------------------------------------------- cost to run


def test_cost_is_measured_per_input_size_and_grows_with_it():
    spec = spec_from_dict(TINY_MODELS["vit"])
    rows = measure(spec, torch.device("cpu"), sizes=(32, 64), batch=8, warmup=1, iters=3)
    small, large = rows
    assert (small["size"], large["size"]) == (32, 64)
    assert large["flops_per_image"] > 3.9 * small["flops_per_image"]  # 4x the tokens, more for attention
    assert small["latency_ms_p95"] >= small["latency_ms_median"] > 0 and small["throughput_images_per_s"] > 0
    assert small["training_step_mb"] >= 0 and "throughput_images_per_s" not in large
    assert math.isfinite(small["training_peak_mb"])


def _damage(kind: str, path):
    z = dict(np.load(path))
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    elif kind == "other size":
        z["images"] = np.zeros((*z["images"].shape[:3], 16, 16, 3), dtype=np.uint8)
        np.savez(path, **z)
    elif kind == "fewer images":
        z["images"] = z["images"][:, :, :5]
        np.savez(path, **z)


@pytest.mark.parametrize(
    ("kind", "needle"),
    [("empty", "EOFError"), ("truncated", "is corrupt or not a cnnvit corrupted set"),
     ("other size", "holds images of shape"), ("fewer images", "for 10 labels")],
)  # fmt: skip
def test_a_damaged_corrupted_set_is_one_line(trained, tmp_path, capsys, kind, needle):
    """Issue 28.11: an empty file was an EOFError, a truncated one BadZipFile, other image sizes an
    AssertionError, fewer images a numpy broadcast error."""
    d, raw, data = trained
    bad = tmp_path / "bad_c.npz"
    assert run_cli(tmp_path, capsys, ["corrupt", "--data-dir", str(data), "--out", str(bad)], raw)[0] == 0
    _damage(kind, bad)
    argv = [a if a != str(d / "test_c.npz") else str(bad) for a in evaluate_argv(d)]
    argv[argv.index("--out-dir") + 1] = str(tmp_path / "eval")
    code, err = run_cli(tmp_path, capsys, argv, raw)
    assert_one_line_error(code, err, str(bad), needle, "run `cnnvit corrupt` again")
    assert not (tmp_path / "eval").exists()
