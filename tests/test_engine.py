"""The training engine: the LR schedule's exact values, what evaluation does, that a model learns,
the data path, the bf16, fp16 and torch.compile paths on a CPU, and what a GPU run pays for: graphs
compiled, host-device syncs in the step loop, peak memory per run, out-of-memory advice, the fused
optimizer and the memory layout."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY_MODELS, make_cifar_python, md5, prepare_dir, tiny_params
from torch.utils._python_dispatch import TorchDispatchMode

from cnnvit.config.load import params_from_dict
from cnnvit.config.runs import run_config
from cnnvit.config.types import RunSpec
from cnnvit.training import engine as train
from cnnvit.training.engine import NAN_CHECK_EVERY, Trainer
from cnnvit.training.inputs import Augment, Prepared, Split, load_prepared, stratified_indices
from cnnvit.training.numerics import (
    channels_last,
    compile_mode,
    eval_batch,
    lr_factor,
    oom_error,
    peak_mem_mb,
    reset_peak_memory,
)

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


def test_evaluation_batches_auto_are_small_on_a_cpu_and_large_on_a_gpu(learnable):
    assert (eval_batch("auto", CPU), eval_batch("auto", torch.device("cuda")), eval_batch(64, CPU)) == (128, 1000, 64)
    archive, prepared = learnable
    cfg = run_config(params_for(archive), RunSpec("vit", "paper", 0))
    cfg = dataclasses.replace(cfg, runtime=dataclasses.replace(cfg.runtime, eval_batch_size="auto"))
    trainer = Trainer(cfg, load_prepared(prepared, cfg, CPU), CPU)
    sizes: list[int] = []
    trainer.model.register_forward_pre_hook(lambda m, a: sizes.append(len(a[0])))
    test = trainer.data.test
    split = Split(test.images.repeat(3, 1, 1, 1), test.labels.repeat(3))  # 300 images: two batches and a part
    trainer.evaluate(split)
    assert sizes == [128, 128, len(split) - 256]


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
# the hybrid: convolutions and a transformer in one compiled graph (inductor takes ~30 s a model on
# 2 cores, so one model, not one of each kind; gpu_check.sh compiles every paper model on a GPU),
# bf16 on all.
COMPILED = {"cnn_vit"}


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


def tiny_trainer(precision: str, clip: float | None = None) -> Trainer:
    raw = tiny_params("/nowhere.tar.gz", "0" * 32, epochs=1)
    raw["recipes"]["paper"]["grad_clip"] = clip
    cfg = dataclasses.replace(run_config(params_from_dict(raw), RunSpec("vit", "paper", 0)), precision=precision)
    gen = torch.Generator().manual_seed(0)
    split = Split(torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, generator=gen), torch.arange(64) % 10)
    return Trainer(cfg, Prepared(split, split, split, {"mean": [0.5] * 3, "std": [0.25] * 3}, list("abcdefghij")), CPU)


@pytest.mark.parametrize("clip", [None, 1.0])
def test_fp16_trains_with_a_gradient_scaler_and_bf16_without(clip):
    """fp16 autocast with the paper's GradScaler (§2.2); run here on the CPU, which torch allows
    and the settings refuse, to test the code path a CUDA GPU takes."""
    fp16 = tiny_trainer("fp16", clip)
    assert fp16.scaler.is_enabled() and fp16.amp.fast_dtype == torch.float16
    row = fp16.train_epoch(1)
    assert torch.isfinite(torch.tensor(row["train_loss"])) and fp16.scaler.get_scale() > 0
    assert fp16.state()["scaler"]["scale"] == fp16.scaler.get_scale()  # checkpointed with the run
    bf16 = tiny_trainer("bf16")
    assert not bf16.scaler.is_enabled() and bf16.amp.fast_dtype == torch.bfloat16
    assert not tiny_trainer("fp32").amp._enabled


def test_compile_modes():
    assert [compile_mode(v) for v in (False, True, "default", "reduce-overhead", "max-autotune")] == [
        None, "default", "default", "reduce-overhead", "max-autotune"
    ]  # fmt: skip


# ----------------------------------------------------------------------------- what a GPU run pays for


def tiny_vit_trainer(n: int, batch: int, compile_on: bool = False, backend: str = "inductor") -> Trainer:
    """A ViT trainer of the tiny params on ``n`` random images, ``batch`` a step."""
    raw = tiny_params("/nowhere.tar.gz", "0" * 32, epochs=2)
    raw["recipes"]["paper"]["batch_size"] = batch
    raw["runtime"].update(compile=compile_on, eval_batch_size=64)
    cfg = run_config(params_from_dict(raw), RunSpec("vit", "paper", 0))
    gen = torch.Generator().manual_seed(0)
    split = Split(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=gen), torch.arange(n) % 10)
    return Trainer(cfg, Prepared(split, split, split, {"mean": [0.5] * 3, "std": [0.25] * 3}, list("abcdefghij")), CPU,
                   backend)  # fmt: skip


def test_a_compiled_trainer_compiles_one_graph_for_partial_batches_and_evaluation():
    """72 images at batch 32 (a last batch of 8) and evaluations at batch 64 (a last one of 8)
    used to compile 3 graphs (4 for a ResNet): the full batch, the short one, eval mode. Now the
    short batch and the evaluation run the same module eagerly: one graph, compiled once."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    trainer = tiny_vit_trainer(72, 32, compile_on=True, backend="eager")
    first, second = trainer.train_epoch(1), trainer.train_epoch(2)
    trainer.evaluate()
    trainer.evaluate(trainer.data.val, batch_size=50)
    assert counters["stats"]["unique_graphs"] == 1
    info = trainer.compile_info
    assert info["mode"] == "default" and info["backend"] == "eager" and info["graphs"] == 1 and info["seconds"] > 0
    assert info["cuda_graphs"] == "off"  # mode default captures none
    # the compiled step's seconds are out of the epoch's: epoch 1 timed 40 of its 72 images
    assert first["train_images_per_s"] > 0 and first["epoch_seconds"] < info["seconds"] + second["epoch_seconds"] * 2
    assert math.isfinite(first["train_loss"]) and math.isfinite(second["train_loss"])


def test_an_eager_trainer_compiles_nothing_and_records_so():
    from torch._dynamo.utils import counters

    counters.clear()
    trainer = tiny_vit_trainer(72, 32)
    trainer.train_epoch(1)
    assert trainer.net is trainer.model and counters["stats"]["unique_graphs"] == 0
    assert trainer.compile_info == {"mode": False, "seconds": 0.0, "graphs": 0, "cuda_graphs": "off"}


class SyncCounter(TorchDispatchMode):
    """Counts the ops that make the host wait for the device on CUDA: reading a value (``.item()``,
    ``float()``, ``bool()``) and ops whose output size depends on the data. Reads of ``host``
    tensors are not counted: Adam keeps its step counters on the host, even for CUDA parameters."""

    SYNCING = ("_local_scalar_dense", "nonzero", "is_nonzero", "masked_select", "unique", "equal")

    def __init__(self, host: list[torch.Tensor]):
        super().__init__()
        self.count, self.host = 0, {id(t) for t in host}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.__name__.split(".")[0] in self.SYNCING and id(args[0]) not in self.host:
            self.count += 1
        return func(*args, **(kwargs or {}))


def test_the_step_loop_syncs_once_every_nan_check_steps():
    """60 steps: at most one host-device sync every NAN_CHECK_EVERY (25) steps in the loop, and
    the epoch's two reads of its loss and accuracy at its end."""
    trainer = tiny_vit_trainer(120, 2)
    trainer.train_epoch(1, max_steps=2)  # warm-up, outside the count; Adam's state exists from here
    steps = [state["step"] for state in trainer.optimizer.state.values()]
    assert steps and all(t.device.type == "cpu" and t.dim() == 0 for t in steps)
    with SyncCounter(host=steps) as syncs:
        row = trainer.train_epoch(2)
    assert trainer.steps_per_epoch == 60 and math.isfinite(row["train_loss"])
    assert syncs.count <= math.ceil(60 / NAN_CHECK_EVERY) + 2, syncs.count
    assert syncs.count >= 3  # the counter sees the checks it should: it is not blind


def test_peak_memory_is_reset_at_each_runs_start(learnable, tmp_path, monkeypatch):
    archive, prepared = learnable
    params = params_for(archive, precision="fp32")
    calls = []
    real = train.reset_peak_memory
    monkeypatch.setattr(train, "reset_peak_memory", lambda device: calls.append(device) or real(device))
    runs = [RunSpec("vit", "paper", s) for s in (0, 1)]
    raw = json.loads(json.dumps(params.raw))
    raw["presets"]["tiny"]["epochs"] = 1
    one_epoch = params_from_dict(raw)
    for run in runs:
        train.train_run(run_config(one_epoch, run), prepared, tmp_path / run.name, tmp_path / "ckpt")
    assert calls == [CPU, CPU]  # once per run, at its start


def test_the_peak_is_this_runs_on_cuda_and_on_a_cpu(monkeypatch):
    """On CUDA the allocator's peak is reset (stubbed here); on a CPU the process's peak resident
    set: a large allocation before the reset is not this run's peak."""
    resets = []
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda *a: resets.append(a))
    reset_peak_memory(torch.device("cuda", 0))
    assert resets == [()]
    big = np.ones(300 * 2**20 // 8)  # 300 MB, touched
    before = peak_mem_mb(CPU)
    del big
    reset_peak_memory(CPU)
    assert peak_mem_mb(CPU) < before - 200


def test_out_of_memory_with_runs_sharing_a_gpu_names_runs_per_gpu():
    err = oom_error(torch.device("cuda", 0), "training", 128, "recipes.paper.batch_size", runs_per_gpu=4)
    assert str(err) == (
        "out of memory on cuda:0 during training at batch size 128 with 4 runs sharing this GPU: lower "
        "runtime.runs_per_gpu (try 2) or recipes.paper.batch_size (try 64)"
    )
    assert str(oom_error(CPU, "evaluation", 1000, "runtime.eval_batch_size")) == (
        "out of memory on cpu during evaluation at batch size 1000: lower runtime.eval_batch_size (try 500)"
    )


def test_fused_adam_on_cuda_only_and_the_hybrids_stem_channels_last_on_cuda_only(monkeypatch):
    """Which optimizer a run asks timm for, on a CPU and on CUDA: the CUDA trainer is built here
    with its model and input scaling left on the CPU (Module.to and Augment stubbed)."""
    import timm.optim

    from cnnvit.models import spec_from_dict

    fused, real = [], timm.optim.create_optimizer_v2
    monkeypatch.setattr(
        timm.optim, "create_optimizer_v2", lambda m, **kw: fused.append(kw.pop("fused", None)) or real(m, **kw)
    )
    cpu = tiny_vit_trainer(8, 4)
    assert cpu.optimizer.defaults.get("fused") is None  # a CPU run's optimizer as it was
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, *a, **k: self)
    monkeypatch.setattr(train, "Augment", lambda *a, **k: None)
    Trainer(dataclasses.replace(cpu.cfg, precision="fp32"), cpu.data, torch.device("cuda", 0))
    assert fused == [None, True]  # the paper recipe's Adam, fused on CUDA only
    hybrid = spec_from_dict(TINY_MODELS["cnn_vit"])
    assert channels_last(hybrid, torch.device("cuda", 0)) and not channels_last(hybrid, CPU)
    convnet, vit = spec_from_dict(TINY_MODELS["resnet50"]), spec_from_dict(TINY_MODELS["vit"])
    assert channels_last(convnet, CPU) and not channels_last(vit, torch.device("cuda", 0))
