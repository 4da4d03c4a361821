"""The training engine: the LR schedule's exact values, what evaluation does, that a model learns,
the data path, and the bf16 and torch.compile paths on a CPU."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from conftest import TINY_MODELS, make_cifar_python, md5, prepare_dir, tiny_params

from cnnvit.config.load import params_from_dict
from cnnvit.config.runs import run_config
from cnnvit.config.types import RunSpec
from cnnvit.stages import train
from cnnvit.training.data import Augment, load_prepared, stratified_indices
from cnnvit.training.engine import Trainer, lr_factor

CPU = torch.device("cpu")


def test_lr_schedule_values_are_exact():
    total, warmup = 100, 10
    for schedule in ("linear", "cosine"):
        assert lr_factor(schedule, 0, total, warmup) == 0.1  # first warm-up step
        assert lr_factor(schedule, 4, total, warmup) == 0.5
        assert lr_factor(schedule, 9, total, warmup) == 1.0  # the peak, at the end of warm-up
        assert lr_factor(schedule, 10, total, warmup) == 1.0  # decay starts from the peak
    assert lr_factor("linear", 55, total, warmup) == 0.5  # halfway through the decay
    assert lr_factor("cosine", 55, total, warmup) == pytest.approx(0.5)
    assert lr_factor("linear", 100, total, warmup) == 0.0 and lr_factor("cosine", 100, total, warmup) == 0.0
    assert lr_factor("linear", 99, total, warmup) == pytest.approx(1 / 90)
    assert lr_factor("cosine", 99, total, warmup) == pytest.approx(0.5 * (1 + math.cos(math.pi * 89 / 90)))
    assert all(lr_factor("constant", s, total, 0) == 1.0 for s in range(total))
    assert lr_factor("constant", 1, total, 4) == 0.5  # a constant schedule still warms up when asked


@pytest.fixture(scope="module")
def learnable(tmp_path_factory):
    """500 training and 100 test images of the fixture's learnable classes."""
    d = tmp_path_factory.mktemp("learn")
    archive = make_cifar_python(d / "c.tar.gz", per_batch=100)
    prepare_dir(archive, d / "prepared")
    return archive, d / "prepared"


def params_for(archive, **runtime):
    cfg = tiny_params(str(archive), md5(archive), per_batch=100, epochs=8)
    cfg["runtime"].update(runtime)
    return params_from_dict(cfg)


@pytest.mark.slow
def test_a_model_learns_far_above_chance(learnable, tmp_path):
    archive, prepared = learnable
    cfg = run_config(params_for(archive), RunSpec("resnet50_cifar", "modern", 0))
    summary = train.train_run(cfg, prepared, tmp_path / "out", tmp_path / "ckpt")
    assert summary.best_test_acc >= 60, summary.best_test_acc  # chance is 10%
    assert summary.final_test_acc >= 50


def test_evaluate_is_eval_mode_without_augmentation_or_smoothing(learnable, monkeypatch):
    archive, prepared = learnable
    cfg = run_config(params_for(archive), RunSpec("resnet50_cifar", "modern", 0))  # smoothing 0.1, crop and flip
    trainer = Trainer(cfg, load_prepared(prepared, cfg, CPU), CPU)
    trainer.train_epoch(1)
    modes, draws_seen = [], []
    trainer.model.register_forward_pre_hook(lambda m, a: modes.append(m.training))
    real_call = Augment.__call__
    monkeypatch.setattr(
        Augment, "__call__", lambda self, x, draws=None: draws_seen.append(draws) or real_call(self, x, draws)
    )
    for split in (trainer.data.val, trainer.data.test):
        ev = trainer.evaluate(split, batch_size=32)
        assert modes and not any(modes) and all(d is None for d in draws_seen)
        with torch.no_grad():
            logits = trainer.model(real_call(trainer.augment, split.images))
        assert torch.allclose(ev.logits, logits, atol=1e-5)
        assert ev.loss == pytest.approx(torch.nn.functional.cross_entropy(logits, split.labels).item(), rel=1e-5)
        assert ev.acc == pytest.approx(100 * (logits.argmax(1) == split.labels).float().mean().item())
        assert trainer.model.training is False


def test_unit_and_meanstd_scaling():
    x = torch.tensor([[[[0, 255]], [[51, 102]], [[255, 0]]]], dtype=torch.uint8)
    unit = Augment([0.5] * 3, [0.25] * 3, "unit", 0, False, "cpu", channels_last=False)(x)
    assert torch.allclose(unit, x.float() / 255, atol=1e-7) and unit.max() <= 1
    ms = Augment([0.5] * 3, [0.25] * 3, "meanstd", 0, False, "cpu", channels_last=False)(x)
    assert torch.allclose(ms, (x.float() / 255 - 0.5) / 0.25, atol=1e-6)


def test_augment_crop_and_flip_match_reference():
    x = torch.randint(0, 255, (4, 3, 32, 32), dtype=torch.uint8)
    aug = Augment([0, 0, 0], [1 / 255] * 3, "meanstd", 4, True, "cpu", channels_last=False)
    draws = {"shift": torch.tensor([[0, 0], [4, 4], [8, 3], [2, 8]]), "flip": torch.tensor([False, True, False, True])}
    out = aug(x, draws)
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i, ((dy, dx), flip) in enumerate(zip(draws["shift"].tolist(), draws["flip"].tolist(), strict=True)):
        ref = padded[i, :, dy : dy + 32, dx : dx + 32]
        assert torch.equal(out[i], (ref.flip(2) if flip else ref).float())


def test_stratified_subsets_are_balanced_seeded_and_nested():
    labels = torch.arange(1000).remainder(10).numpy()
    idx = stratified_indices(labels, 100, seed=3)
    assert len(idx) == 100 and (pd.Series(labels[idx]).value_counts() == 10).all()
    assert (idx == stratified_indices(labels, 100, seed=3)).all()
    assert not (idx == stratified_indices(labels, 100, seed=4)).all()
    assert set(stratified_indices(labels, 50, seed=3)) <= set(idx) <= set(stratified_indices(labels, 250, seed=3))


ONE_PER_ARCH = sorted({spec["arch"]: name for name, spec in TINY_MODELS.items()}.values())


# Inductor compiles with g++ on a CPU, 10-35 s a model with a cold cache: compile is exercised on
# one transformer and one convnet (gpu_check.sh compiles every paper model on a GPU), bf16 on all.
COMPILED = {"vit", "convnext"}


@pytest.mark.slow
@pytest.mark.parametrize("name", ONE_PER_ARCH)
def test_bf16_and_compile_train_every_arch_on_cpu(learnable, tmp_path, name):
    """The GPU paths (bf16 autocast, torch.compile with inductor) exercised on a CPU: one tiny
    epoch, then the eager model takes the run's checkpoint (the state dicts match, no
    ``_orig_mod.`` prefixes from compilation). Evaluation is left out: inductor compiles each
    mode's graph with g++."""
    archive, prepared = learnable
    p = params_for(archive, precision="bf16", compile=name in COMPILED)
    cfg = run_config(p, RunSpec(name, "modern", 0))
    cfg = type(cfg)(**{**cfg.__dict__, "epochs": 1, "train_size": 64, "test_size": 32})
    trainer = Trainer(cfg, load_prepared(prepared, cfg, CPU), CPU)
    assert (trainer.net is not trainer.model) == (name in COMPILED)
    assert trainer.precision == "bf16"
    row = trainer.train_epoch(1)
    assert math.isfinite(row["train_loss"]) and row["train_images_per_s"] > 0
    state = trainer.state()
    assert not any(k.startswith("_orig_mod.") for k in state["model"])
    eager_cfg = type(cfg)(
        **{**cfg.__dict__, "runtime": type(cfg.runtime)(**{**cfg.runtime.__dict__, "compile": False})}
    )
    eager = Trainer(eager_cfg, load_prepared(prepared, eager_cfg, CPU), CPU)
    eager.load_state(state)  # strict: every key of the compiled run's weights fits the eager model
    assert all(
        torch.equal(a, b)
        for a, b in zip(eager.model.state_dict().values(), trainer.model.state_dict().values(), strict=True)
    )
