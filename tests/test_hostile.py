"""Hostile and careless input to the train stage: a checkpoint that would run code, foreign or
torn checkpoints, a full disk, truncated data, two processes training one run, a stale lock."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch
from conftest import assert_one_line_error, make_cifar_python, md5, prepare_dir, tiny_params, write_yaml

from cnnvit.cli import main
from cnnvit.training import checkpoint

QUICK = ["--set", "presets.tiny.epochs=1"]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile")
    archive = make_cifar_python(d / "c.tar.gz")
    prepare_dir(archive, d / "prepared")
    write_yaml(d / "params.yaml", tiny_params(str(archive), md5(archive)))
    return d


def train_argv(d, tmp_path, model="vit") -> list[str]:
    return [
        "train",
        "--params",
        str(d / "params.yaml"),
        "--model",
        model,
        "--recipe",
        "paper",
        "--data-dir",
        str(d / "prepared"),
        "--runs-dir",
        str(tmp_path / "out"),
        "--ckpt-dir",
        str(tmp_path / "ckpt"),
        *QUICK,
    ]


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("kind", ["code", "list", "torn", "empty_dict"])
def test_a_bad_checkpoint_is_set_aside_never_run(project, tmp_path, capsys, kind):
    """Issue 9.1: a checkpoint that would run code ran it (weights_only=False) and exited 0."""
    marker, ckpt = tmp_path / "pwned", tmp_path / "ckpt/vit-paper-s0.pt"
    ckpt.parent.mkdir()
    if kind == "code":
        ckpt.write_bytes(pickle.dumps({"identity": _RunsCode(marker)}))
    elif kind == "list":
        torch.save([1, 2, 3], ckpt)
    elif kind == "torn":
        torch.save({"a": torch.zeros(1000)}, ckpt)
        ckpt.write_bytes(ckpt.read_bytes()[:300])
    else:
        torch.save({}, ckpt)
    assert main(train_argv(project, tmp_path)) == 0
    out = capsys.readouterr().out
    assert not marker.exists()
    rejected = list(ckpt.parent.glob("vit-paper-s0.pt.rejected-*"))
    assert len(rejected) == 1 and f"moved it to {rejected[0]}" in out and "starting fresh" in out
    assert (tmp_path / "out/vit-paper-s0/summary.json").exists()
    assert main(train_argv(project, tmp_path)) == 0  # and the next run reuses the good checkpoint
    assert "finished; not retraining" in capsys.readouterr().out


@pytest.mark.slow
def test_a_full_disk_while_checkpointing_is_one_line(project, tmp_path):
    """Issue 9.7: a full disk gave a cryptic torch traceback. RLIMIT_FSIZE makes writes past 64 kB fail."""
    code = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))\n"
        "from cnnvit.cli import main\n"
        f"sys.exit(main({train_argv(project, tmp_path)!r}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert_one_line_error(proc.returncode, proc.stderr, "cannot write", "vit-paper-s0.pt", "space")
    assert not (tmp_path / "out/vit-paper-s0").exists()
    assert not [p for p in (tmp_path / "ckpt").iterdir() if p.suffix == ".tmp"]


def test_truncated_or_corrupt_prepared_data_is_one_line(project, tmp_path, capsys):
    import shutil

    bad = tmp_path / "prepared"
    shutil.copytree(project / "prepared", bad)
    (bad / "test.npz").write_bytes((bad / "test.npz").read_bytes()[:500])
    argv = train_argv(project, tmp_path)
    argv[argv.index("--data-dir") + 1] = str(bad)
    assert_one_line_error(main(argv), capsys.readouterr().err, "test.npz is corrupt or truncated", "cnnvit prepare")
    shutil.copy(project / "prepared/test.npz", bad / "test.npz")
    (bad / "stats.json").write_text("{not json")
    assert_one_line_error(main(argv), capsys.readouterr().err, "stats.json is corrupt")


def test_a_second_process_for_the_same_run_is_refused(project, tmp_path, capsys):
    """Issue 9.9: two identical `cnnvit train` both trained the whole run."""
    with checkpoint.run_lock(tmp_path / "ckpt", "vit-paper-s0"):
        code = main(train_argv(project, tmp_path))
    assert_one_line_error(code, capsys.readouterr().err, "run vit-paper-s0 is already training", f"pid {os.getpid()}")
    assert not (tmp_path / "out/vit-paper-s0").exists()


@pytest.mark.slow
def test_a_lock_left_by_a_killed_process_does_not_block(project, tmp_path, capsys):
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
    assert main(train_argv(project, tmp_path)) == 1  # held: refused
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (tmp_path / "ckpt/vit-paper-s0.lock").exists()  # the file stays; the lock is gone with the process
    capsys.readouterr()
    assert main(train_argv(project, tmp_path)) == 0


@pytest.mark.slow
@pytest.mark.parametrize("target", ["group", "parent"])
def test_a_signal_stops_every_worker_well_within_slurms_grace(project, tmp_path, target):
    """Issue 28: SIGTERM to the process group of `dvc repro` left both train workers running 8 s
    later (SLURM kills 30 s after SIGTERM). The pool could deadlock: a worker that exited on the
    signal while waiting for its next run held the pool's queue lock. To the whole group (as SLURM
    and a terminal do) or to the command alone, which passes it on."""
    argv = [sys.executable, "-m", "cnnvit.cli", *train_argv(project, tmp_path)[:-2], "--set", "presets.tiny.epochs=500"]
    argv[argv.index("--model") : argv.index("--model") + 4] = ["--all-runs", "--workers", "2"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    started = 0
    for line in proc.stdout:
        started += " epoch 3/500 " in line
        if started == 2:  # both workers are in a run
            break
    pgid = os.getpgid(proc.pid)
    threading.Thread(target=proc.stdout.read, daemon=True).start()  # a full pipe must not hold anyone up

    def group() -> list[str]:
        ps = subprocess.run(["ps", "-eo", "pid=,pgid=,stat="], capture_output=True, text=True).stdout.split("\n")
        return [ln for ln in ps if ln.split()[1:2] == [str(pgid)] and not ln.split()[2].startswith("Z")]

    assert len(group()) == 3  # the command and its two workers
    start = time.monotonic()
    os.killpg(pgid, signal.SIGTERM) if target == "group" else proc.send_signal(signal.SIGTERM)
    while group() and time.monotonic() - start < 20:
        time.sleep(0.05)
    took = time.monotonic() - start
    if group():
        os.killpg(pgid, signal.SIGKILL)
    err = proc.stderr.read()
    proc.wait(timeout=30)
    assert took < 10, f"{took:.1f} s"
    assert proc.returncode == 130 and err.strip().splitlines()[-1].startswith("error: interrupted"), err[-2000:]
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]
