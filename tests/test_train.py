"""Models and the training engine, on fixture data and tiny models (CPU only)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from conftest import TINY_MODELS, make_cifar_python, md5, tiny_params, write_yaml

from cnnvit import data, train
from cnnvit.cli import main
from cnnvit.config import run_config, validate
from cnnvit.device_data import Augment, stratified_indices
from cnnvit.errors import CnnvitError
from cnnvit.models import build_model, count_params, flops_per_image, list_archs

TIMING = ["epoch_seconds", "train_images_per_s", "peak_mem_mb"]


@pytest.fixture
def prepared(tmp_path, cifar_archive):
    result = data.prepare(cifar_archive, "cifar10-python")
    data.write_prepared(result, tmp_path / "prepared", {})
    return tmp_path / "prepared"


@pytest.fixture
def cfg(cifar_archive):
    c = tiny_params(str(cifar_archive), md5(cifar_archive))
    validate(c)
    return c


@pytest.mark.parametrize("arch", list_archs())
def test_every_registered_model_runs_forward_and_backward(arch):
    spec = next(s for s in TINY_MODELS.values() if s["arch"] == arch)
    model = build_model(spec)
    x = torch.randn(2, 3, 32, 32)
    out = model(x)
    assert out.shape == (2, 10)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert flops_per_image(model) > 0


def test_resnet50_has_cifar_stem_and_paper_size():
    model = build_model({"arch": "resnet50"})
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, torch.nn.Identity)
    assert 23.4e6 < count_params(model) < 23.6e6


def test_cnn_vit_shares_the_vit_encoder():
    vit = build_model(TINY_MODELS["vit"])
    hybrid = build_model(TINY_MODELS["cnn_vit"])
    assert type(vit.blocks) is type(hybrid.blocks) and len(vit.blocks) == len(hybrid.blocks)
    enc = lambda m: sum(p.numel() for p in m.blocks.parameters())  # noqa: E731
    assert enc(vit) == enc(hybrid)
    assert hybrid.patch_embed.num_patches == vit.patch_embed.num_patches == 16  # 4x4 tokens


def test_unknown_model_lists_known_ones(cfg, tmp_path, capsys):
    with pytest.raises(CnnvitError, match="unknown model 'foo'; known models: cnn_vit, convnext"):
        run_config(cfg, "foo", "paper", 0)
    with pytest.raises(CnnvitError, match="unknown model arch 'bar'; known: cnn_vit"):
        build_model({"arch": "bar"})
    params = write_yaml(tmp_path / "params.yaml", cfg)
    assert main(["train", "--model", "foo", "--recipe", "paper", "--params", str(params)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "known models: cnn_vit, convnext, resnet50, vit" in err


def test_stratified_subset_keeps_class_balance():
    labels = torch.arange(1000).remainder(10).numpy()
    idx = stratified_indices(labels, 100, seed=3)
    assert len(idx) == 100 and (pd.Series(labels[idx]).value_counts() == 10).all()
    assert (idx == stratified_indices(labels, 100, seed=3)).all()
    assert not (idx == stratified_indices(labels, 100, seed=4)).all()


def test_augment_crop_and_flip_match_reference():
    x = torch.randint(0, 255, (4, 3, 32, 32), dtype=torch.uint8)
    aug = Augment([0, 0, 0], [1 / 255] * 3, 4, True, "cpu", channels_last=False)
    draws = {"shift": torch.tensor([[0, 0], [4, 4], [8, 3], [2, 8]]),
             "flip": torch.tensor([False, True, False, True])}  # fmt: skip
    out = aug(x, draws)
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i, ((dy, dx), flip) in enumerate(zip(draws["shift"].tolist(), draws["flip"].tolist(), strict=True)):
        ref = padded[i, :, dy : dy + 32, dx : dx + 32]
        ref = ref.flip(2) if flip else ref
        assert torch.equal(out[i], ref.float())


def read_metrics(out_dir) -> pd.DataFrame:
    return pd.read_csv(out_dir / "metrics.csv")


def test_two_epoch_run_writes_schema(cfg, prepared, tmp_path):
    rc = run_config(cfg, "vit", "modern", 0)
    summary = train.train_run(rc, prepared, tmp_path / "out", tmp_path / "ckpt", threads=1)
    m = read_metrics(tmp_path / "out")
    assert list(m.columns) == train.METRIC_COLUMNS and list(m.epoch) == [1, 2]
    assert m.test_acc.between(0, 100).all() and (m.lr > 0).all()
    on_disk = json.loads((tmp_path / "out/summary.json").read_text())
    assert on_disk["best_test_acc"] == summary["best_test_acc"] == m.test_acc.max()
    for key in ["best_epoch", "final_test_acc", "train_seconds", "params", "flops_per_image",
                "infer_images_per_s", "device", "torch_version", "timm_version"]:  # fmt: skip
        assert key in on_disk, key
    prov = on_disk["provenance"]
    assert prov["params"] == rc and prov["versions"]["torch"] and prov["git_commit"] and prov["device"]


def test_same_seed_gives_identical_metrics(cfg, prepared, tmp_path):
    rc = run_config(cfg, "resnet50", "modern", 1)
    for name in ("a", "b"):
        train.train_run(rc, prepared, tmp_path / name, tmp_path / f"ckpt-{name}", threads=1)
    a, b = (read_metrics(tmp_path / n).drop(columns=TIMING) for n in ("a", "b"))
    pd.testing.assert_frame_equal(a, b, check_exact=True)


def test_resume_after_kill_is_bit_identical(cfg, prepared, tmp_path, monkeypatch):
    cfg["profiles"]["tiny"]["epochs"] = 3
    rc = run_config(cfg, "cnn_vit", "modern", 0)
    train.train_run(rc, prepared, tmp_path / "full", tmp_path / "ckpt-full", threads=1)

    real_save = train.save_checkpoint

    def save_then_die(path, state):
        real_save(path, state)
        if state["epoch"] == 1:
            raise KeyboardInterrupt  # as if killed right after epoch 1's checkpoint

    monkeypatch.setattr(train, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train.train_run(rc, prepared, tmp_path / "resumed", tmp_path / "ckpt", threads=1)
    assert not (tmp_path / "resumed/metrics.csv").exists()
    monkeypatch.setattr(train, "save_checkpoint", real_save)
    train.train_run(rc, prepared, tmp_path / "resumed", tmp_path / "ckpt", threads=1)
    full, resumed = (read_metrics(tmp_path / n).drop(columns=TIMING) for n in ("full", "resumed"))
    pd.testing.assert_frame_equal(full, resumed, check_exact=True)


def test_finished_run_is_not_retrained(cfg, prepared, tmp_path, capsys, monkeypatch):
    rc = run_config(cfg, "convnext", "paper", 0)
    first = train.train_run(rc, prepared, tmp_path / "out", tmp_path / "ckpt", threads=1)
    (tmp_path / "out/metrics.csv").unlink()  # what Snakemake/DVC do to outputs before a re-run
    monkeypatch.setattr(train.Trainer, "train_epoch", lambda *a, **k: pytest.fail("retrained"))
    again = train.train_run(rc, prepared, tmp_path / "out", tmp_path / "ckpt", threads=1)
    assert "finished; not retraining" in capsys.readouterr().out
    assert again["best_test_acc"] == first["best_test_acc"]
    assert (tmp_path / "out/metrics.csv").exists()


def test_changed_params_do_not_reuse_checkpoint(cfg, prepared, tmp_path, capsys):
    rc = run_config(cfg, "convnext", "paper", 0)
    train.train_run(rc, prepared, tmp_path / "out", tmp_path / "ckpt", threads=1)
    rc["recipe"]["lr"] = 5e-4
    train.train_run(rc, prepared, tmp_path / "out", tmp_path / "ckpt", threads=1)
    assert "made with other params; starting fresh" in capsys.readouterr().out


def test_other_prepared_data_does_not_reuse_checkpoint(cfg, prepared, tmp_path, capsys):
    rc = run_config(cfg, "convnext", "paper", 0)
    train.train_run(rc, prepared, tmp_path / "out", tmp_path / "ckpt", threads=1)
    other = make_cifar_python(tmp_path / "other.tar.gz", per_batch=30)  # another archive, same params
    data.write_prepared(data.prepare(other, "cifar10-python"), tmp_path / "other", {})
    summary = train.train_run(rc, tmp_path / "other", tmp_path / "out", tmp_path / "ckpt", threads=1)
    assert "made from other prepared data; starting fresh" in capsys.readouterr().out
    assert summary["n_train"] == 150


def test_nan_loss_stops_with_epoch_and_step(cfg, prepared, tmp_path, monkeypatch):
    rc = run_config(cfg, "vit", "paper", 0)
    calls = {"n": 0}
    real = torch.nn.CrossEntropyLoss.forward

    def poisoned(self, logits, y):
        calls["n"] += 1
        loss = real(self, logits, y)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(torch.nn.CrossEntropyLoss, "forward", poisoned)
    with pytest.raises(CnnvitError, match=r"loss is nan at epoch 1 step 3 .*lower recipes\.paper\.lr"):
        train.train_run(rc, prepared, tmp_path / "out", tmp_path / "ckpt", threads=1)
    assert not (tmp_path / "out").exists()


def test_bench_reports_trainer_and_bare_loop(cfg, prepared, tmp_path):
    cfg["runs"]["models"] = ["vit", "convnext"]
    params = write_yaml(tmp_path / "params.yaml", cfg)
    out = tmp_path / "bench.json"
    argv = ["bench", "--params", str(params), "--data-dir", str(prepared), "--out", str(out),
            "--steps", "2", "--threads", "1"]  # fmt: skip
    assert main(argv) == 0
    result = json.loads(out.read_text())
    assert result["device"].startswith("cpu") and set(result["models"]) == {"vit", "convnext"}
    keys = {"params", "flops_per_image", "train_images_per_s", "bare_images_per_s",
            "trainer_vs_bare", "infer_images_per_s", "peak_mem_mb"}  # fmt: skip
    for m in result["models"].values():
        assert keys <= set(m) and m["trainer_vs_bare"] > 0
        assert m["trainer_vs_bare"] == m["train_images_per_s"] / m["bare_images_per_s"]


def test_kill_9_then_same_command_resumes(cfg, prepared, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    cfg["profiles"]["tiny"]["epochs"] = 40
    params = write_yaml(tmp_path / "params.yaml", cfg)
    ckpt = tmp_path / "ckpt" / "vit-paper-s0.pt"
    cmd = [sys.executable, "-m", "cnnvit.cli", "train", "--params", str(params), "--model", "vit",
           "--recipe", "paper", "--seed", "0", "--data-dir", str(prepared), "--out-dir",
           str(tmp_path / "out"), "--ckpt-dir", str(ckpt.parent), "--threads", "1"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "out/metrics.csv").exists(), "killed too late to test resume"
    again = subprocess.run(cmd, capture_output=True, text=True, check=True)
    assert "resuming after epoch" in again.stdout
    rc = run_config(cfg, "vit", "paper", 0)
    train.train_run(rc, prepared, tmp_path / "full", tmp_path / "ckpt-full", threads=1)
    full, resumed = (read_metrics(tmp_path / n).drop(columns=TIMING) for n in ("full", "out"))
    pd.testing.assert_frame_equal(full, resumed, check_exact=True)
