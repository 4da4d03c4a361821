"""The evaluate stage: a trained run scored from its weights (clean, corrupted, attention, per
image), in the run's precision and memory layout; a run without weights, foreign weights, weights
of another width and a damaged corrupted set are each one line."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import assert_one_line_error, forward_calls, make_cifar_python, md5, prepare_dir, run_cli, tiny_params

from cnnvit.config.load import params_from_dict
from cnnvit.config.runs import run_config
from cnnvit.config.types import RunSpec
from cnnvit.measure.attention import attention_maps, mean_distance
from cnnvit.models import build_model
from cnnvit.models.weights import load_weights
from cnnvit.stages import evaluate
from cnnvit.stages.corrupt import robustness_subset
from cnnvit.stats.robustness import read_per_image
from cnnvit.training import engine as train
from cnnvit.training.inputs import Augment


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
    # the clean images are scored as the trained weights scored them (the run's own predictions of them), and
    # the attention is theirs: recomputed here from the weights file on the first 4 of them
    row = {int(position): k for k, position in enumerate(preds["indices"])}
    rows = [row[int(position)] for position in right.indices]
    assert np.array_equal(right.clean, preds["selected_logits"][rows].argmax(1) == preds["labels"][rows])
    cfg = run_config(params_from_dict(raw), RunSpec("vit", "paper", 0))
    model = build_model(cfg.model)
    load_weights(model, d / "runs/vit-paper-s0/weights.safetensors")
    stats = json.loads((data / "stats.json").read_text())
    scale = Augment(stats["mean"], stats["std"], cfg.recipe.normalize, 0, False, "cpu", channels_last=False)
    x = scale(torch.from_numpy(robustness_subset(data, cfg.test_size, 10)[0][:4].transpose(0, 3, 1, 2).copy()))
    cell = cfg.model.token_pixels
    theirs = [px for maps in attention_maps(model.eval(), x) for px in mean_distance(maps, 32 // cell, cell)]
    assert list(attn.distance_px) == pytest.approx(theirs, rel=1e-5)


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


# ----------------------------------------------------------------------------- in the run's precision


@pytest.fixture(scope="module")
def trained_bf16(tmp_path_factory):
    d = tmp_path_factory.mktemp("bf16")
    archive = make_cifar_python(d / "c.tar.gz")
    data = prepare_dir(archive, d / "prepared")
    raw = tiny_params(str(archive), md5(archive), epochs=1)
    raw["runtime"]["precision"] = "bf16"
    params = params_from_dict(raw)
    for model in ("resnet50", "vit"):
        train.train_run(run_config(params, RunSpec(model, "paper", 0)), data, d / f"runs/{model}-paper-s0", d / "ck")
    return d, raw, data


def test_evaluate_runs_in_the_runs_precision_and_memory_layout(trained_bf16, tmp_path, capsys):
    d, raw, data = trained_bf16
    code, err = run_cli(tmp_path, capsys, ["corrupt", "--data-dir", str(data), "--out", str(d / "c.npz")], raw)
    assert code == 0, err
    params = params_from_dict(raw)
    for model, channels_last in (("resnet50", True), ("vit", False)):
        with forward_calls() as seen:
            evaluate.evaluate_one(RunSpec(model, "paper", 0), params, data, d / "c.npz", d / "runs", d / "eval")
        assert len(seen) >= 5 and set(seen) == {(True, torch.bfloat16, channels_last, channels_last)}, (model, seen)
    assert "(bf16) ->" in capsys.readouterr().out
