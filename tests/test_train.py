"""The train stage: outputs, determinism, resume, and when a checkpoint may be reused."""

from __future__ import annotations

import dataclasses
import json
import shutil
import signal
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import ROOT, make_cifar_python, md5, prepare_dir, run_cli, tiny_params, write_yaml

from cnnvit.cli import main
from cnnvit.config.load import params_from_dict
from cnnvit.config.runs import run_config
from cnnvit.config.types import RunSpec
from cnnvit.errors import CnnvitError
from cnnvit.runfiles import METRIC_COLUMNS, TIMING_COLUMNS
from cnnvit.training import checkpoint
from cnnvit.training import engine as train


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    d = tmp_path_factory.mktemp("prep")
    archive = make_cifar_python(d / "c.tar.gz")
    prepare_dir(archive, d / "prepared")
    return archive, d / "prepared"


@pytest.fixture
def params(prepared):
    archive, _ = prepared
    return params_from_dict(tiny_params(str(archive), md5(archive)))


def cfg_for(params, model="vit", recipe="modern", seed=0, **profile):
    p = params
    if profile:
        raw = json.loads(json.dumps(p.raw))
        raw["presets"]["tiny"].update(profile)
        p = params_from_dict(raw)
    return run_config(p, RunSpec(model, recipe, seed))


def train_cmd(params_file, data_dir, out_dir, ckpt_dir, model: str = "vit") -> list[str]:
    """`cnnvit train` of model/paper/seed 0 as a separate process."""
    args = f"train --model {model} --recipe paper --seeds 0 --params {params_file} --data-dir {data_dir}"
    args += f" --runs-dir {out_dir}"
    return [sys.executable, "-m", "cnnvit.cli", *args.split(), "--ckpt-dir", str(ckpt_dir)]


def metrics(out) -> pd.DataFrame:
    return pd.read_csv(out / "metrics.csv").drop(columns=TIMING_COLUMNS)


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


def test_resume_after_an_interruption_is_bit_identical(params, prepared, tmp_path, monkeypatch, capsys):
    cfg = cfg_for(params, "cnn_vit", epochs=3)
    train.train_run(cfg, prepared[1], tmp_path / "full", tmp_path / "ckpt-full")
    real_save = checkpoint.save

    def save_then_die(path, ckpt):
        real_save(path, ckpt)
        if ckpt["epoch"] == 1:
            raise KeyboardInterrupt  # as if killed right after epoch 1's checkpoint

    monkeypatch.setattr(checkpoint, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train.train_run(cfg, prepared[1], tmp_path / "resumed", tmp_path / "ckpt")
    assert not (tmp_path / "resumed/metrics.csv").exists()
    monkeypatch.setattr(checkpoint, "save", real_save)
    capsys.readouterr()
    train.train_run(cfg, prepared[1], tmp_path / "resumed", tmp_path / "ckpt")
    assert "resuming after epoch 1" in capsys.readouterr().out
    pd.testing.assert_frame_equal(metrics(tmp_path / "full"), metrics(tmp_path / "resumed"), check_exact=True)


@pytest.mark.slow
def test_kill_9_then_the_same_command_resumes_bit_identically(params, prepared, tmp_path):
    """No timing: the test kills the process as soon as it reports its first checkpointed epoch."""
    raw = json.loads(json.dumps(params.raw))
    raw["presets"]["tiny"]["epochs"] = 30
    params_file = write_yaml(tmp_path / "params.yaml", raw)
    cmd = train_cmd(params_file, prepared[1], tmp_path / "out", tmp_path / "ckpt")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in proc.stdout:
        if " epoch 1/30 " in line:  # printed after epoch 1's checkpoint is in place
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and not (tmp_path / "out/vit-paper-s0/metrics.csv").exists()
    again = subprocess.run(cmd, capture_output=True, text=True, check=True)
    assert "resuming after epoch" in again.stdout
    train.train_run(
        run_config(params_from_dict(raw), RunSpec("vit", "paper", 0)),
        prepared[1],
        tmp_path / "full",
        tmp_path / "ckpt-full",
    )
    resumed = metrics(tmp_path / "out/vit-paper-s0")
    pd.testing.assert_frame_equal(metrics(tmp_path / "full"), resumed, check_exact=True)


def test_a_finished_run_is_re_emitted_not_retrained(params, prepared, tmp_path, capsys, monkeypatch):
    cfg = cfg_for(params, "convnext", "paper")
    first = train.train_run(cfg, prepared[1], tmp_path / "out", tmp_path / "ckpt")
    shutil.rmtree(tmp_path / "out")  # what Snakemake and DVC do to outputs before a re-run
    monkeypatch.setattr(train.Trainer, "train_epoch", lambda *a, **k: pytest.fail("retrained"))
    again = train.train_run(cfg, prepared[1], tmp_path / "out", tmp_path / "ckpt")
    assert "finished; not retraining" in capsys.readouterr().out
    assert again.best_test_acc == first.best_test_acc and (tmp_path / "out/metrics.csv").exists()


def test_runtime_only_settings_keep_the_checkpoint(params, prepared, tmp_path, capsys, monkeypatch):
    """Device, threads and eval batch size do not change a run: no hours of training are lost."""
    cfg = cfg_for(params, "convnext", "paper")
    train.train_run(cfg, prepared[1], tmp_path / "out", tmp_path / "ckpt", threads=1)
    raw = json.loads(json.dumps(params.raw))
    raw["runtime"].update(threads=2, eval_batch_size=7, device="cpu")
    other = run_config(params_from_dict(raw), RunSpec("convnext", "paper", 0))
    monkeypatch.setattr(train.Trainer, "train_epoch", lambda *a, **k: pytest.fail("retrained"))
    train.train_run(other, prepared[1], tmp_path / "out", tmp_path / "ckpt", threads=2)
    assert "finished; not retraining" in capsys.readouterr().out


def test_a_resume_under_another_thread_count_warns(params, prepared, tmp_path, capsys, monkeypatch):
    cfg = cfg_for(params, "vit", "paper", epochs=3)
    real_save = checkpoint.save
    monkeypatch.setattr(
        checkpoint,
        "save",
        lambda p, c: real_save(p, c) or (c["epoch"] == 1 and (_ for _ in ()).throw(KeyboardInterrupt)),
    )
    with pytest.raises(KeyboardInterrupt):
        train.train_run(cfg, prepared[1], tmp_path / "out", tmp_path / "ckpt", threads=1)
    monkeypatch.setattr(checkpoint, "save", real_save)
    summary = train.train_run(cfg, prepared[1], tmp_path / "out", tmp_path / "ckpt", threads=2)
    out = capsys.readouterr().out
    assert "warning: resuming" in out and "threads 1 -> 2" in out and summary.threads == 2


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ("params", "was made with other params (recipe.lr: 0.001 -> 0.0005)"),
        ("data", "was made from other prepared data"),
        ("code", "was trained by other code (cnnvit.models.convnext changed)"),
    ],
)
def test_a_checkpoint_from_other_params_data_or_code_is_not_reused(
    params, prepared, tmp_path, capsys, monkeypatch, change, why
):
    cfg = cfg_for(params, "convnext", "paper")
    train.train_run(cfg, prepared[1], tmp_path / "out", tmp_path / "ckpt")
    data_dir = prepared[1]
    if change == "params":
        raw = json.loads(json.dumps(params.raw))
        raw["recipes"]["paper"]["lr"] = 5e-4
        cfg = run_config(params_from_dict(raw), RunSpec("convnext", "paper", 0))
    elif change == "data":
        other = make_cifar_python(tmp_path / "other.tar.gz", per_batch=30)
        prepare_dir(other, tmp_path / "other")
        data_dir = tmp_path / "other"
    else:
        real = checkpoint.digests
        monkeypatch.setattr(checkpoint, "digests", lambda m: {**real(m), "cnnvit.models.convnext": "0" * 16})
    summary = train.train_run(cfg, data_dir, tmp_path / "out", tmp_path / "ckpt")
    out = capsys.readouterr().out
    assert f"{why}; kept it as " in out and "and starting fresh" in out
    assert len(list((tmp_path / "ckpt").glob("convnext-paper-s0@*.pt"))) == 1  # kept, not overwritten
    assert summary.n_train == (130 if change == "data" else 80)  # the validation carve takes 20


@pytest.mark.slow
def test_an_edit_retrains_exactly_the_runs_whose_numbers_it_can_change(prepared, tmp_path):
    """Issue 29.1, on a copy of the package: a comment, a docstring or a message changes no run's
    identity; a code change in models/vit.py retrains the ViT run and not the ResNet one."""
    archive, data_dir = prepared
    shutil.copytree(ROOT / "src", tmp_path / "src", ignore=shutil.ignore_patterns("__pycache__"))
    params_file = write_yaml(tmp_path / "params.yaml", tiny_params(str(archive), md5(archive), epochs=1))
    env = {"PYTHONPATH": str(tmp_path / "src"), "PATH": "/usr/bin:/bin"}
    probe = [sys.executable, "-c", "import cnnvit; print(cnnvit.__file__)"]
    assert str(tmp_path / "src") in subprocess.run(probe, capture_output=True, text=True, env=env).stdout

    def train_both() -> str:
        out = ""
        for model in ("vit", "resnet50"):
            cmd = train_cmd(params_file, data_dir, tmp_path / "out", tmp_path / "ck", model=model)
            got = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path)
            assert got.returncode == 0, got.stderr
            out += got.stdout
        return out

    train_both()
    src = tmp_path / "src/cnnvit"
    (src / "models/vit.py").write_text((src / "models/vit.py").read_text() + "\n# a comment\n")
    engine = (src / "training/engine.py").read_text()
    (src / "training/engine.py").write_text(engine.replace("training diverged;", "training blew up;", 1))
    errors = (src / "errors.py").read_text()
    (src / "errors.py").write_text(errors.replace('"""', '"""An edited docstring. ', 1))
    quiet = train_both()
    assert quiet.count("checkpoint found, finished; not retraining") == 2, quiet
    (src / "models/vit.py").write_text((src / "models/vit.py").read_text() + "\nEDITED = 1\n")
    loud = train_both()
    assert "was trained by other code (cnnvit.models.vit changed); kept it as" in loud
    assert loud.count("checkpoint found, finished; not retraining") == 1  # the ResNet run


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


@pytest.mark.slow
def test_a_pretrained_vit_fine_tunes_and_records_its_weights(prepared, tmp_path):
    """A quick-profile ViT entry pointing at a locally saved vit_small_patch16_224 state dict
    fine-tunes for one epoch at 32x32 with patch 4; the summary names the file and its sha256."""
    import hashlib

    import timm

    weights = tmp_path / "vit_small_patch16_224.pth"
    torch.save(timm.create_model("vit_small_patch16_224", pretrained=False).state_dict(), weights)
    archive, data_dir = prepared
    raw = tiny_params(str(archive), md5(archive), epochs=1)
    raw["preset"] = "quick"
    raw["presets"]["quick"].update(train_size=64, val_size=0, test_size=20, epochs=1)
    raw["presets"]["quick"]["models"]["vit"] = {
        "arch": "vit",
        "patch_size": 4,
        "embed_dim": 384,
        "depth": 12,
        "num_heads": 6,
        "mlp_ratio": 4.0,
        "pretrained": str(weights),
    }
    cfg = run_config(params_from_dict(raw), RunSpec("vit", "transfer", 0))
    s = train.train_run(cfg, data_dir, tmp_path / "out", tmp_path / "ckpt")
    on_disk = json.loads((tmp_path / "out/summary.json").read_text())
    assert on_disk["pretrained"] == {
        "source": str(weights.resolve()),
        "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
    }
    assert s.epochs == 1 and s.params > 21e6 and on_disk["config"]["model"]["pretrained"] == str(weights)


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
