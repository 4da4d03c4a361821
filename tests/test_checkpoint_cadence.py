"""Checkpoints on a cadence (runtime.checkpoint_every_s): when a run writes them, that a resume from
an earlier one is still bit-identical, and what a run's provenance records of its device and costs."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from conftest import make_cifar_python, md5, prepare_dir, tiny_params

from cnnvit.config.load import params_from_dict
from cnnvit.config.runs import run_config
from cnnvit.config.types import RunSpec
from cnnvit.runfiles import TIMING_COLUMNS
from cnnvit.training import checkpoint
from cnnvit.training import device as devices
from cnnvit.training import engine as train


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    d = tmp_path_factory.mktemp("prep")
    archive = make_cifar_python(d / "c.tar.gz")
    return archive, prepare_dir(archive, d / "prepared")


def cfg_for(prepared, epochs: int, every_s: float, model: str = "vit"):
    archive, _ = prepared
    raw = tiny_params(str(archive), md5(archive), epochs=epochs)
    raw["runtime"]["checkpoint_every_s"] = every_s
    return run_config(params_from_dict(raw), RunSpec(model, "paper", 0))


def saves(monkeypatch) -> list[tuple[int, bool]]:
    """(epoch, finished) of every checkpoint written from now on."""
    written: list[tuple[int, bool]] = []
    real = checkpoint.save
    monkeypatch.setattr(
        checkpoint, "save", lambda p, c: written.append((c["epoch"], c["summary"] is not None)) or real(p, c)
    )
    return written


@pytest.mark.parametrize(
    ("every_s", "expected"),
    [
        (0, [(1, False), (2, False), (3, False), (4, False), (5, False), (6, True)]),  # every evaluated epoch
        (250, [(1, False), (4, False), (6, True)]),  # epochs of 100 s: the first, then 300 s after it, the end
        (3600, [(1, False), (6, True)]),  # the first (a full disk shows at once) and the finished run
    ],
)
def test_a_run_checkpoints_after_its_first_epoch_then_on_the_cadence(
    prepared, tmp_path, monkeypatch, every_s, expected
):
    clock = iter(range(100, 10**6, 100))  # each look at the clock: 100 s of training later
    monkeypatch.setattr(train, "time", SimpleNamespace(perf_counter=time.perf_counter, monotonic=lambda: next(clock)))
    written = saves(monkeypatch)
    summary = train.train_run(cfg_for(prepared, 6, every_s), prepared[1], tmp_path / "out", tmp_path / "ckpt")
    assert written == expected
    recorded = summary.provenance["checkpoints"]  # while training: the finished run's own is not in it
    assert recorded["every_s"] == every_s and recorded["written"] == len(expected) - 1 and recorded["seconds"] > 0


def test_a_resume_from_an_earlier_checkpoint_is_bit_identical(prepared, tmp_path, monkeypatch, capsys):
    """Killed in epoch 4 of 5 with the last checkpoint at epoch 1: the run redoes epochs 2-4 and
    ends with exactly the numbers of a run never interrupted."""
    cfg = cfg_for(prepared, 5, 3600, model="cnn_vit")
    full = train.train_run(cfg, prepared[1], tmp_path / "full", tmp_path / "ckpt-full")
    real = train.Trainer.train_epoch

    def killed_in_epoch_4(self, epoch, **kw):
        if epoch == 4:
            raise KeyboardInterrupt  # as a kill would, after epochs 2 and 3 wrote no checkpoint
        return real(self, epoch, **kw)

    monkeypatch.setattr(train.Trainer, "train_epoch", killed_in_epoch_4)
    with pytest.raises(KeyboardInterrupt):
        train.train_run(cfg, prepared[1], tmp_path / "resumed", tmp_path / "ckpt")
    monkeypatch.setattr(train.Trainer, "train_epoch", real)
    capsys.readouterr()
    resumed = train.train_run(cfg, prepared[1], tmp_path / "resumed", tmp_path / "ckpt")
    assert "resuming after epoch 1" in capsys.readouterr().out
    a, b = (pd.read_csv(tmp_path / d / "metrics.csv").drop(columns=TIMING_COLUMNS) for d in ("full", "resumed"))
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    assert (tmp_path / "full/predictions.npz").read_bytes() == (tmp_path / "resumed/predictions.npz").read_bytes()
    assert resumed.selected_test_acc == full.selected_test_acc


def test_provenance_records_the_cuda_stack_and_what_compiling_cost(prepared, tmp_path, monkeypatch):
    monkeypatch.setattr(devices, "driver_version", lambda: "580.65.06")
    monkeypatch.setattr(devices, "gpu_names", lambda: ["NVIDIA H200"])
    summary = train.train_run(cfg_for(prepared, 1, 300), prepared[1], tmp_path / "out", tmp_path / "ckpt")
    prov = json.loads((tmp_path / "out/summary.json").read_text())["provenance"]
    assert prov == summary.provenance
    assert prov["cuda"] == {"torch_cuda": torch.version.cuda, "driver": "580.65.06", "gpu": None,
                            "gpus_on_machine": ["NVIDIA H200"]}  # fmt: skip  # this run trained on the CPU
    assert prov["compile"] == {"mode": False, "seconds": 0.0, "graphs": 0, "cuda_graphs": "off"}
    assert prov["device"] == summary.device and "slot" not in summary.device


def test_the_driver_and_gpus_are_read_from_the_driver_without_cuda(tmp_path, monkeypatch):
    proc = tmp_path / "nvidia"
    (proc / "gpus/0000:01:00.0").mkdir(parents=True)
    (proc / "version").write_text(
        "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  570.86.15  Release Build  (dvs-builder@U16)\n"
        "GCC version:  gcc version 12.3.0\n"
    )
    (proc / "gpus/0000:01:00.0/information").write_text("Model: \t\t NVIDIA H100 80GB HBM3\nIRQ:   \t\t 42\n")
    monkeypatch.setattr(devices, "NVIDIA_PROC", proc)
    assert devices.driver_version() == "570.86.15"
    assert devices.gpu_names() == ["NVIDIA H100 80GB HBM3"] and devices.gpu_count() == 1
    monkeypatch.setattr(torch.version, "cuda", "12.6")
    assert devices.torch_cuda() == "12.6"
    assert "built for CUDA 12.6, which needs an NVIDIA driver of branch 525 or newer" in devices.diagnosis()
