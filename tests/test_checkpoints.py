"""A run's checkpoints: a resume is bit-identical (from the last checkpoint, an earlier one, or
after kill -9), a finished run is re-emitted and a changed one retrains while its checkpoint is kept
(params, data, code, more epochs), checkpoints on a cadence (runtime.checkpoint_every_s), damaged or
code-running checkpoints set aside, a full disk, and one process per run."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from conftest import (
    ROOT,
    RunsCode,
    assert_one_line_error,
    cfg_for,
    make_cifar_python,
    md5,
    metrics,
    paper_vit,
    prepare_dir,
    tiny_params,
    train_argv,
    write_yaml,
)

from cnnvit.cli import main
from cnnvit.config.load import params_from_dict
from cnnvit.config.runs import run_config
from cnnvit.config.types import RunSpec
from cnnvit.runfiles import TIMING_COLUMNS
from cnnvit.training import checkpoint
from cnnvit.training import engine as train


def saves(monkeypatch) -> list[tuple[int, bool]]:
    """(epoch, finished) of every checkpoint written from now on."""
    written: list[tuple[int, bool]] = []
    real = checkpoint.save
    monkeypatch.setattr(
        checkpoint, "save", lambda p, c: written.append((c["epoch"], c["summary"] is not None)) or real(p, c)
    )
    return written


def train_cmd(params_file, data_dir, out_dir, ckpt_dir, model: str = "vit") -> list[str]:
    """`cnnvit train` of model/paper/seed 0 as a separate process."""
    args = f"train --model {model} --recipe paper --seeds 0 --params {params_file} --data-dir {data_dir}"
    args += f" --runs-dir {out_dir}"
    return [sys.executable, "-m", "cnnvit.cli", *args.split(), "--ckpt-dir", str(ckpt_dir)]


# ----------------------------------------------------------------------------- resume


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


def cadence_cfg(prepared, epochs: int, every_s: float, model: str = "vit"):
    archive, _ = prepared
    raw = tiny_params(str(archive), md5(archive), epochs=epochs)
    raw["runtime"]["checkpoint_every_s"] = every_s
    return run_config(params_from_dict(raw), RunSpec(model, "paper", 0))


def test_a_resume_from_an_earlier_checkpoint_is_bit_identical(prepared, tmp_path, monkeypatch, capsys):
    """Killed in epoch 4 of 5 with the last checkpoint at epoch 1: the run redoes epochs 2-4 and
    ends with exactly the numbers of a run never interrupted."""
    cfg = cadence_cfg(prepared, 5, 3600, model="cnn_vit")
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


# ----------------------------------------------------------------------------- reuse


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


def test_more_epochs_of_a_constant_lr_continue_a_finished_run(prepared, tmp_path, capsys, monkeypatch):
    """Issue 19.10: epochs 1 -> 2 retrained from scratch over the finished checkpoint, and going
    back to 1 retrained again. A constant LR continues; the result is a 2-epoch run's, down to the
    bytes of its weights file (a continued run's safetensors metadata once came out in another order)."""
    archive, data = prepared
    one = train.train_run(paper_vit(archive, 1), data, tmp_path / "a", tmp_path / "ck")
    capsys.readouterr()
    two = train.train_run(paper_vit(archive, 2), data, tmp_path / "a", tmp_path / "ck")
    out = capsys.readouterr().out
    assert "epochs: 1 -> 2" in out and "continues after epoch 1" in out and two.epochs == 2
    fresh = train.train_run(paper_vit(archive, 2), data, tmp_path / "b", tmp_path / "fresh")
    assert (two.final_test_acc, two.selected_test_acc) == (fresh.final_test_acc, fresh.selected_test_acc)
    assert one.epochs == 1 and json.loads((tmp_path / "a/summary.json").read_text())["epochs"] == 2
    assert (tmp_path / "a/weights.safetensors").read_bytes() == (tmp_path / "b/weights.safetensors").read_bytes()


def test_a_changed_config_keeps_the_finished_checkpoint_and_finds_it_again(prepared, tmp_path, capsys, monkeypatch):
    archive, data = prepared
    linear = {"schedule": "linear"}  # the LR depends on the epochs: no continuing
    train.train_run(paper_vit(archive, 1, **linear), data, tmp_path / "a", tmp_path / "ck")
    capsys.readouterr()
    train.train_run(paper_vit(archive, 2, **linear), data, tmp_path / "a", tmp_path / "ck")
    out = capsys.readouterr().out
    assert "was made with other params (epochs: 1 -> 2); kept it as" in out and "starting fresh" in out
    assert len(list((tmp_path / "ck").glob("vit-paper-s0@*.pt"))) == 1
    monkeypatch.setattr(train.Trainer, "train_epoch", lambda *a, **k: pytest.fail("retrained"))
    train.train_run(paper_vit(archive, 1, **linear), data, tmp_path / "a", tmp_path / "ck")
    out = capsys.readouterr().out
    assert "was kept for exactly these params, data and code: using it" in out and "finished; not retraining" in out


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


# ----------------------------------------------------------------------------- cadence


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
    summary = train.train_run(cadence_cfg(prepared, 6, every_s), prepared[1], tmp_path / "out", tmp_path / "ckpt")
    assert written == expected
    recorded = summary.provenance["checkpoints"]  # while training: the finished run's own is not in it
    assert recorded["every_s"] == every_s and recorded["written"] == len(expected) - 1 and recorded["seconds"] > 0


# ----------------------------------------------------------------------------- damaged checkpoints, a full disk


@pytest.mark.parametrize("kind", ["code", "list", "torn", "empty_dict", "zero_bytes"])
def test_a_bad_checkpoint_is_set_aside_never_run(train_project, tmp_path, capsys, kind):
    """Issue 9.1: a checkpoint that would run code ran it (weights_only=False) and exited 0. A
    zero-byte one (a disk that filled as it was written) is unreadable, set aside the same way."""
    marker, ckpt = tmp_path / "pwned", tmp_path / "ckpt/vit-paper-s0.pt"
    ckpt.parent.mkdir()
    if kind == "code":
        ckpt.write_bytes(pickle.dumps({"identity": RunsCode(marker)}))
    elif kind == "list":
        torch.save([1, 2, 3], ckpt)
    elif kind == "torn":
        torch.save({"a": torch.zeros(1000)}, ckpt)
        ckpt.write_bytes(ckpt.read_bytes()[:300])
    elif kind == "empty_dict":
        torch.save({}, ckpt)
    else:
        ckpt.write_bytes(b"")
    assert main(train_argv(train_project, tmp_path)) == 0
    out = capsys.readouterr().out
    assert not marker.exists()
    assert kind != "zero_bytes" or "is unreadable (EOFError" in out
    rejected = list(ckpt.parent.glob("vit-paper-s0.pt.rejected-*"))
    assert len(rejected) == 1 and f"moved it to {rejected[0]}" in out and "starting fresh" in out
    assert (tmp_path / "out/vit-paper-s0/summary.json").exists()
    assert main(train_argv(train_project, tmp_path)) == 0  # and the next run reuses the good checkpoint
    assert "finished; not retraining" in capsys.readouterr().out


@pytest.mark.slow
def test_a_full_disk_while_checkpointing_is_one_line(train_project, tmp_path):
    """Issue 9.7: a full disk gave a cryptic torch traceback. RLIMIT_FSIZE makes writes past 64 kB fail."""
    code = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))\n"
        "from cnnvit.cli import main\n"
        f"sys.exit(main({train_argv(train_project, tmp_path)!r}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert_one_line_error(proc.returncode, proc.stderr, "cannot write", "vit-paper-s0.pt", "space")
    assert not (tmp_path / "out/vit-paper-s0").exists()
    assert not [p for p in (tmp_path / "ckpt").iterdir() if p.suffix == ".tmp"]


# ----------------------------------------------------------------------------- one process per run


def test_a_second_process_for_the_same_run_is_refused(train_project, tmp_path, capsys):
    """Issue 9.9: two identical `cnnvit train` both trained the whole run."""
    with checkpoint.run_lock(tmp_path / "ckpt", "vit-paper-s0"):
        code = main(train_argv(train_project, tmp_path))
    assert_one_line_error(code, capsys.readouterr().err, "run vit-paper-s0 is already training", f"pid {os.getpid()}")
    assert not (tmp_path / "out/vit-paper-s0").exists()


@pytest.mark.slow
def test_a_lock_left_by_a_killed_process_does_not_block(train_project, tmp_path, capsys):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from cnnvit.training.checkpoint import run_lock\n"
            f"with run_lock(Path({str(tmp_path / 'ckpt')!r}), 'vit-paper-s0'):\n"
            "    print('held', flush=True); time.sleep(600)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    assert main(train_argv(train_project, tmp_path)) == 1  # held: refused
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (tmp_path / "ckpt/vit-paper-s0.lock").exists()  # the file stays; the lock is gone with the process
    capsys.readouterr()
    assert main(train_argv(train_project, tmp_path)) == 0
