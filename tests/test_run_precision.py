"""Evaluate and cost compute as the run trained: in its precision (autocast) and its memory layout
(channels_last for convnets), checked on a CPU, where bf16 autocast runs."""

from __future__ import annotations

import contextlib

import pytest
import torch
from conftest import TINY_MODELS, make_cifar_python, md5, prepare_dir, run_cli, tiny_params

from cnnvit.config.load import params_from_dict
from cnnvit.config.runs import run_config
from cnnvit.config.types import RunSpec
from cnnvit.measure import cost as cost_measure
from cnnvit.measure.cost import measure
from cnnvit.models import spec_from_dict
from cnnvit.stages import cost, evaluate
from cnnvit.training import engine as train

TOP = ("ResNet", "VisionTransformer")  # the timm classes of the models under test


@contextlib.contextmanager
def forward_calls():
    """(autocast on, its dtype, input channels_last, weights channels_last) of every forward of a
    whole model while the block runs."""
    seen: list[tuple] = []

    def hook(module, args):
        if type(module).__name__ in TOP:
            conv = next(p for p in module.parameters() if p.dim() == 4)
            x = args[0]
            seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"),
                         x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous(),
                         conv.is_contiguous(memory_format=torch.channels_last)))  # fmt: skip

    handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


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


def test_cost_measures_in_the_runs_precision_and_memory_layout(monkeypatch):
    monkeypatch.setattr(cost_measure, "flops_per_image", lambda *a: 1)  # its own forward, counted, not timed
    spec = spec_from_dict(TINY_MODELS["resnet50"])
    with forward_calls() as seen:
        rows = measure(spec, torch.device("cpu"), sizes=(32,), batch=4, warmup=1, iters=2, precision="bf16")
    assert rows[0]["throughput_images_per_s"] > 0
    assert len(seen) >= 5 and set(seen) == {(True, torch.bfloat16, True, True)}
    with forward_calls() as seen:
        measure(spec_from_dict(TINY_MODELS["vit"]), torch.device("cpu"), sizes=(32,), batch=4, warmup=1, iters=2)
    assert {s[:2] for s in seen} == {(False, torch.bfloat16)}  # fp32: autocast off (its dtype is the default)


def test_the_cost_table_records_the_precision(tmp_path):
    raw = tiny_params("/nowhere.tar.gz", "0" * 32)
    raw["runtime"]["precision"] = "bf16"
    raw["cost"]["sizes"] = [32]
    rows = cost.cost_table(params_from_dict(raw))
    assert len(rows) == len(TINY_MODELS) and {r["precision"] for r in rows} == {"bf16"} and "precision" in cost.COLUMNS
