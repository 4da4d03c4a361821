"""The train stage: what a run writes (metrics, summary, predictions, weights), fraction runs,
determinism, the validation split and the epoch selected on it, a loss that turns NaN or explodes,
bad prepared data, a signal, and the trainer's benchmark. Resuming and reusing checkpoints are in
test_checkpoints.py."""

from __future__ import annotations

import dataclasses
import json
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import (
    TINY_MODELS,
    assert_one_line_error,
    cfg_for,
    md5,
    metrics,
    paper_vit,
    run_cli,
    tiny_params,
    train_argv,
    write_yaml,
)

from cnnvit.cli import main
from cnnvit.config.load import params_from_dict
from cnnvit.config.runs import run_config
from cnnvit.config.types import RunSpec
from cnnvit.errors import CnnvitError
from cnnvit.models import build_model, spec_from_dict
from cnnvit.models.weights import load_weights, save_weights, weights_metadata
from cnnvit.runfiles import METRIC_COLUMNS
from cnnvit.training import engine as train


def test_a_run_writes_its_metrics_and_summary(params, prepared, tmp_path):
    cfg = cfg_for(params)
    s = train.train_run(cfg, prepared[1], tmp_path / "out", tmp_path / "ckpt")
    m = pd.read_csv(tmp_path / "out/metrics.csv")
    assert list(m.columns) == METRIC_COLUMNS and list(m.epoch) == [1, 2]
    on_disk = json.loads((tmp_path / "out/summary.json").read_text())
    assert on_disk["best_test_acc"] == s.best_test_acc == m.test_acc.max()
    assert cfg.runtime.precision == "auto" and cfg.identity()["precision"] == "auto"
    resolved = dataclasses.replace(cfg, precision="fp32")  # auto on a CPU: fp32, and that is the identity
    assert on_disk["config"] == json.loads(json.dumps(resolved.identity()))
    assert on_disk["threads"] == 1 and on_disk["device"].startswith("cpu") and on_disk["precision"] == "fp32"
    assert on_disk["train_seconds"] <= on_disk["wall_seconds"]
    prov = on_disk["provenance"]
    assert prov["params"]["name"] == "vit-modern-s0" and prov["versions"]["torch"] and prov["git_commit"]


def test_the_same_weights_are_the_same_bytes(tmp_path):
    """A resumed run's weights.safetensors differed from the uninterrupted one's: safetensors writes
    its metadata in a hash map's order, new each call."""
    model = build_model(spec_from_dict(TINY_MODELS["vit"]))
    meta = {"run": "vit-paper-s0", "epoch": "3", "arch": "vit", "selected_on": "val_acc"}
    blobs = set()
    for i in range(12):
        save_weights(tmp_path / f"{i}.safetensors", model.state_dict(), dict(reversed(meta.items())) if i % 2 else meta)
        blobs.add((tmp_path / f"{i}.safetensors").read_bytes())
    assert len(blobs) == 1
    assert weights_metadata(tmp_path / "0.safetensors") == meta
    assert load_weights(build_model(spec_from_dict(TINY_MODELS["vit"])), tmp_path / "0.safetensors") == meta


def test_a_fraction_run_needs_only_its_own_params(prepared, tmp_path, capsys):
    # Snakemake passes a train job only the params it reads: runs.train_fractions is not one of
    # them (adding a fraction must not re-run the others), so the command works without it.
    archive, data = prepared
    raw = tiny_params(str(archive), md5(archive), epochs=1)
    assert raw["runs"]["train_fractions"] == [1.0]
    argv = ["train", "--model", "vit", "--recipe", "paper", "--data-dir", str(data), "--ckpt-dir", str(tmp_path / "c")]
    code, err = run_cli(tmp_path, capsys, [*argv, "--fraction", "0.5", "--runs-dir", str(tmp_path / "r")], raw)
    assert code == 0, err
    assert json.loads((tmp_path / "r/vit-paper-f0.5-s0/summary.json").read_text())["fraction"] == 0.5
    code, err = run_cli(tmp_path, capsys, [*argv, "--fraction", "1.5", "--runs-dir", str(tmp_path / "x")], raw)
    assert code == 1 and "--fraction 1.5 is not in (0, 1]" in err and not (tmp_path / "x").exists()


def test_a_fraction_run_counts_the_seconds_of_epochs_it_does_not_record(params, prepared, tmp_path, monkeypatch):
    real = train.Trainer.train_epoch

    def one_second_epochs(self, epoch, progress=False):
        return {**real(self, epoch, progress=progress), "epoch_seconds": 1.0}

    monkeypatch.setattr(train.Trainer, "train_epoch", one_second_epochs)
    cfg = run_config(params, RunSpec("vit", "paper", 0, 0.5))  # 2 epochs at 1/2 of the data: 4, rows every 2
    assert (cfg.epochs, cfg.eval_every) == (4, 2)
    s = train.train_run(cfg, prepared[1], tmp_path / "out", tmp_path / "ckpt")
    m = pd.read_csv(tmp_path / "out/metrics.csv")
    assert list(m.epoch) == [2, 4] and list(m.epoch_seconds) == [2.0, 2.0] and s.train_seconds == 4.0


def test_same_seed_gives_identical_metrics(params, prepared, tmp_path):
    cfg = cfg_for(params, "resnet50", seed=1)
    for name in ("a", "b"):
        train.train_run(cfg, prepared[1], tmp_path / name, tmp_path / f"ckpt-{name}")
    pd.testing.assert_frame_equal(metrics(tmp_path / "a"), metrics(tmp_path / "b"), check_exact=True)


def test_nan_loss_stops_with_epoch_and_step(params, prepared, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = torch.nn.CrossEntropyLoss.forward

    def poisoned(self, logits, y):
        calls["n"] += 1
        loss = real(self, logits, y)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(torch.nn.CrossEntropyLoss, "forward", poisoned)
    with pytest.raises(CnnvitError, match=r"loss is nan at epoch 1 step 3 .*lower recipes\.paper\.lr"):
        train.train_run(cfg_for(params, "vit", "paper"), prepared[1], tmp_path / "out", tmp_path / "ckpt")
    assert not (tmp_path / "out").exists()


def test_a_run_that_explodes_is_flagged_as_diverged(prepared, tmp_path, monkeypatch):
    """A ResNet50 at lr=1000 ended at chance with a loss of 1.2e19 and was recorded as normal. The
    flag reads the validation split, never the test set (issue 25.10), and a run still at chance
    after one epoch is under-trained, not diverged (issue 28)."""
    from cnnvit.runfiles import diverged

    row = {"epoch": 5, "train_loss": 2.0, "train_acc": 40.0, "val_loss": 1.2e19, "test_loss": 1.9, "test_acc": 10.0}
    assert "validation loss 1.2e+19" in diverged([row], 10)
    chance = row | {"val_loss": 2.3, "train_acc": 10.0, "train_loss": 2.31}
    assert "still at chance" in diverged([chance], 10)
    assert diverged([chance | {"epoch": 1}], 10) is None  # one epoch at chance: slow, not diverged
    assert diverged([row | {"val_loss": 1.9, "test_loss": 1.2e19}], 10) is None  # the test set decides nothing
    archive, data = prepared
    real = train.Trainer.evaluate

    def exploded(self, split=None, bs=None):
        got = real(self, split, bs)
        return type(got)(1.2e19, 10.0, got.logits) if split is self.data.val else got

    monkeypatch.setattr(train.Trainer, "evaluate", exploded)
    s = train.train_run(paper_vit(archive, 1), data, tmp_path / "out", tmp_path / "ck")
    assert "validation loss 1.2e+19" in s.diverged
    assert json.loads((tmp_path / "out/summary.json").read_text())["diverged"] == s.diverged


def test_bench_reports_trainer_and_bare_loop(params, prepared, tmp_path):
    raw = json.loads(json.dumps(params.raw))
    raw["runs"]["models"] = ["vit", "convnext"]
    raw["analysis"]["claims"] = []  # no claim can be tested without the paper's other models
    out = tmp_path / "bench.json"
    argv = [
        "bench",
        "--params",
        str(write_yaml(tmp_path / "p.yaml", raw)),
        "--data-dir",
        str(prepared[1]),
        "--out",
        str(out),
        "--steps",
        "2",
        "--threads",
        "1",
    ]
    assert main(argv) == 0
    result = json.loads(out.read_text())
    assert result["device"].startswith("cpu") and set(result["models"]) == {"vit", "convnext"}
    for m in result["models"].values():
        assert m["trainer_vs_bare"] == m["train_images_per_s"] / m["bare_images_per_s"] > 0


# ----------------------------------------------------------------------------- validation split and selection


def image_rows(images: torch.Tensor) -> set[bytes]:
    return {img.numpy().tobytes() for img in images.cpu()}


def test_no_run_trains_on_a_validation_image_and_all_runs_share_it(params, prepared):
    """By content, not index: every model, recipe, seed, fraction and train_size sees the same
    validation (and test) images, and none of them is in any run's training set."""
    from cnnvit.training.inputs import load_prepared

    vals, tests, trained = [], [], set()
    for model, recipe, seed, fraction, size in [
        ("vit", "paper", 0, 1.0, 0),
        ("resnet50", "modern", 1, 1.0, 0),
        ("cnn_vit", "paper", 2, 0.5, 0),
        ("convnext", "modern", 3, 0.25, 40),
    ]:
        raw = json.loads(json.dumps(params.raw))
        raw["presets"]["tiny"]["train_size"] = size
        cfg = run_config(params_from_dict(raw), RunSpec(model, recipe, seed, fraction))
        data = load_prepared(prepared[1], cfg, torch.device("cpu"))
        vals.append(image_rows(data.val.images))
        tests.append(image_rows(data.test.images))
        trained |= image_rows(data.train.images)
    assert all(v == vals[0] for v in vals) and all(t == tests[0] for t in tests) and len(vals[0]) == 20
    assert not vals[0] & trained and not tests[0] & trained


def test_the_selected_epoch_follows_validation_not_test(params, prepared, tmp_path, monkeypatch):
    """Test accuracy peaks at epoch 2, validation at epoch 3 (tied at 4): the run reports epoch 3;
    its predictions and weights are epoch 3's, and the best-on-test 2 is kept only as such."""
    from cnnvit.models.weights import weights_metadata
    from cnnvit.runfiles import read_predictions
    from cnnvit.training.engine import Evaluation

    val_acc, test_acc = {1: 20.0, 2: 30.0, 3: 50.0, 4: 50.0}, {1: 20.0, 2: 60.0, 3: 40.0, 4: 30.0}
    real = train.Trainer.evaluate
    epoch = {"n": 0}

    def scripted(self, split=None, batch_size=None):
        ev = real(self, split, batch_size)
        if split is self.data.val:
            epoch["n"] += 1
            return Evaluation(ev.loss, val_acc[epoch["n"]], ev.logits)
        return Evaluation(ev.loss, test_acc[epoch["n"]], ev.logits + epoch["n"])  # logits that say which epoch

    monkeypatch.setattr(train.Trainer, "evaluate", scripted)
    s = train.train_run(cfg_for(params, "vit", "paper", epochs=4), prepared[1], tmp_path / "out", tmp_path / "ckpt")
    assert (s.selected_epoch, s.selected_test_acc, s.selected_val_acc) == (3, 40.0, 50.0)
    assert (s.best_test_epoch, s.best_test_acc, s.final_test_acc) == (2, 60.0, 30.0)
    preds = read_predictions(tmp_path / "out/predictions.npz")
    assert int(preds["selected_epoch"]) == 3 and int(preds["final_epoch"]) == 4
    assert not np.array_equal(preds["selected_logits"], preds["final_logits"])
    assert weights_metadata(tmp_path / "out/weights.safetensors")["epoch"] == "3"
    assert list(pd.read_csv(tmp_path / "out/metrics.csv").val_acc) == [20.0, 30.0, 50.0, 50.0]


def test_the_saved_weights_reproduce_the_selected_predictions(params, prepared, tmp_path):
    from cnnvit.models import build_model
    from cnnvit.models.weights import load_weights
    from cnnvit.runfiles import read_predictions
    from cnnvit.training.engine import Trainer
    from cnnvit.training.inputs import load_prepared

    cfg = cfg_for(params, "cnn_vit", "modern", epochs=3)
    train.train_run(cfg, prepared[1], tmp_path / "out", tmp_path / "ckpt")
    model = build_model(cfg.model)
    load_weights(model, tmp_path / "out/weights.safetensors")
    trainer = Trainer(cfg, load_prepared(prepared[1], cfg, torch.device("cpu")), torch.device("cpu"))
    trainer.model.load_state_dict(model.state_dict())
    logits = trainer.evaluate().logits.numpy()  # stored as evaluated: float32
    assert np.array_equal(logits, read_predictions(tmp_path / "out/predictions.npz")["selected_logits"])


# ----------------------------------------------------------------------------- bad prepared data, a signal


def test_a_prepared_folder_from_before_the_validation_split_is_one_line(prepared, tmp_path, capsys):
    archive, data = prepared
    old = tmp_path / "old"
    shutil.copytree(data, old)
    (old / "val.npz").unlink()
    argv = ["train", "--model", "vit", "--recipe", "paper", "--data-dir", str(old), "--ckpt-dir", str(tmp_path / "c")]
    code, err = run_cli(
        tmp_path, capsys, [*argv, "--runs-dir", str(tmp_path / "r")], tiny_params(str(archive), md5(archive))
    )
    assert code == 1 and err.count("\n") == 0 and "has no validation split" in err and "cnnvit prepare" in err
    raw = tiny_params(str(archive), md5(archive))
    raw["presets"]["tiny"]["val_size"] = 500
    argv[argv.index("--data-dir") + 1] = str(data)
    code, err = run_cli(tmp_path, capsys, [*argv, "--runs-dir", str(tmp_path / "r")], raw)
    assert code == 1 and "presets.tiny.val_size: 500 is more than the 20 images" in err
    assert not (tmp_path / "r").exists()


def test_truncated_or_corrupt_prepared_data_is_one_line(train_project, tmp_path, capsys):
    import shutil

    bad = tmp_path / "prepared"
    shutil.copytree(train_project / "prepared", bad)
    (bad / "test.npz").write_bytes((bad / "test.npz").read_bytes()[:500])
    argv = train_argv(train_project, tmp_path)
    argv[argv.index("--data-dir") + 1] = str(bad)
    assert_one_line_error(main(argv), capsys.readouterr().err, "test.npz is corrupt or truncated", "cnnvit prepare")
    shutil.copy(train_project / "prepared/test.npz", bad / "test.npz")
    (bad / "stats.json").write_text("{not json")
    assert_one_line_error(main(argv), capsys.readouterr().err, "stats.json is corrupt")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_leaves_no_temporary_files_and_no_traceback(prepared, tmp_path, sig):
    """Issue 19.7: SIGTERM left .tmp files and a mixed set of tables; SIGINT early gave a traceback."""
    archive, data = prepared
    params = write_yaml(tmp_path / "params.yaml", tiny_params(str(archive), md5(archive), epochs=200))
    argv = [sys.executable, "-m", "cnnvit.cli", "train", "--model", "vit", "--recipe", "paper"]
    argv += ["--params", str(params), "--data-dir", str(data), "--runs-dir", str(tmp_path / "out")]
    argv += ["--ckpt-dir", str(tmp_path / "ck")]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if " epoch 3/200 " in line:
            break
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err and err.strip().startswith("error: interrupted"), err
    leftovers = [p for p in tmp_path.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]
    assert not leftovers and not (tmp_path / "out/vit-paper-s0").exists()
    early = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.3)  # during the imports
    early.send_signal(signal.SIGINT)
    _, err = early.communicate(timeout=60)
    assert "Traceback" not in err and early.returncode in (130, -signal.SIGINT), err
