"""Several runs in one command (issue 20): in turn or in forked workers, a failed run stops no
other, a signal stops the command (and, well within SLURM's grace, every worker), which runs a
command does, and a run in a worker gives the same bits as alone."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import pytest
from conftest import ROOT, make_cifar_python, md5, prepare_dir, tiny_params, train_argv, write_yaml

from cnnvit import batch, progress
from cnnvit.cli import main
from cnnvit.config.load import load_params, params_from_dict
from cnnvit.config.runs import run_config
from cnnvit.config.types import RunSpec
from cnnvit.errors import CnnvitError, Interrupted
from cnnvit.training import engine as train


def _square(run: RunSpec, fail: int | None = None) -> int:
    if run.seed == fail:
        raise CnnvitError(f"seed {fail} is bad: pick another")
    return run.seed**2


def _stopped(run: RunSpec) -> int:
    if run.seed == 2:
        raise Interrupted("SIGTERM")  # what the signal handler raises inside a busy run
    return run.seed


RUNS = [RunSpec("vit", "paper", s) for s in range(5)]


@pytest.mark.parametrize("workers", [1, 2])
def test_runs_are_done_in_turn_or_in_workers_and_a_failure_stops_no_other(workers):
    assert batch.run_each(_square, RUNS, workers) == [0, 1, 4, 9, 16]
    with pytest.raises(CnnvitError) as err:
        batch.run_each(functools.partial(_square, fail=3), RUNS, workers)
    assert str(err.value) == "1 of 5 runs failed; vit-paper-s3: seed 3 is bad: pick another"
    with pytest.raises(CnnvitError) as err:
        batch.run_each(functools.partial(_square, fail=0), RUNS[:1], workers)
    assert str(err.value) == "seed 0 is bad: pick another"  # one run: its own line


@pytest.mark.parametrize("workers", [1, 2])
def test_an_interrupted_run_stops_the_command_not_counted_as_a_failed_run(workers):
    """A signal is not a run's failure: the command ends as interrupted (exit 130), whichever
    process the run was in, and no later run starts."""
    with pytest.raises(KeyboardInterrupt) as err:
        batch.run_each(_stopped, RUNS, workers)
    assert str(err.value) == "SIGTERM"


def test_which_runs_a_command_does(tmp_path):
    raw = tiny_params("/nowhere.tar.gz", "0" * 32, models=["vit", "resnet50"], seeds=[0, 1])
    params = params_from_dict(raw)
    args = lambda **kw: SimpleNamespace(**{"model": None, "recipe": None, "seeds": None, "fraction": 1.0,  # noqa: E731
                                           "all_runs": False, **kw})  # fmt: skip
    assert batch.selected_runs(args(all_runs=True), params) == params.all_runs()
    assert [r.name for r in batch.selected_runs(args(model="vit", recipe="paper"), params)] == [
        "vit-paper-s0", "vit-paper-s1"
    ]  # fmt: skip
    got = batch.selected_runs(args(model="vit", recipe="paper", seeds=[7], fraction=0.5), params)
    assert [r.name for r in got] == ["vit-paper-f0.5-s7"]
    for bad, why in [
        (args(model="vit"), "give --model and --recipe"),
        (args(all_runs=True, model="vit"), "--all-runs takes no --model"),
        (args(model="vit", recipe="paper", fraction=2.0), "--fraction 2 is not in (0, 1]"),
    ]:
        with pytest.raises(CnnvitError, match=why.replace("(", r"\(").replace(")", r"\)")):
            batch.selected_runs(bad, params)
    assert batch.worker_count("3", params, runs=2) == 2
    with pytest.raises(CnnvitError, match="--workers '0' is not a whole number of at least 1 or auto"):
        batch.worker_count("0", params, runs=2)


def test_seeds_are_grouped_into_one_job_only_where_the_groups_fill_the_lanes():
    """group_seeds: auto groups when there are at least twice as many groups as lanes: the quick
    preset's 10 groups on 2 cores are 10 jobs, the laptop preset's 3 groups of 5 seeds 15 jobs."""
    quick = load_params(ROOT / "params.yaml", ["preset=quick"])
    laptop = load_params(ROOT / "params.yaml", ["preset=laptop"])
    assert quick.runtime.group_seeds == "auto" == laptop.runtime.group_seeds  # the default
    assert [len(b.runs) for b in batch.batches(quick, lanes=2)] == [3] * 10
    assert [b.name for b in batch.batches(laptop, lanes=2)] == [r.name for r in laptop.all_runs()]
    assert len(batch.batches(laptop, lanes=1)) == 3  # one lane: 3 groups fill it
    assert len(batch.batches(quick, lanes=5)) == 10 and len(batch.batches(quick, lanes=6)) == 30
    for setting, jobs in [("true", 3), ("false", 15)]:
        pinned = load_params(ROOT / "params.yaml", ["preset=laptop", f"runtime.group_seeds={setting}"])
        assert len(batch.batches(pinned, lanes=2)) == len(batch.batches(pinned, lanes=8)) == jobs


def test_runs_trained_together_in_workers_are_the_runs_trained_alone(tmp_path, capsys):
    """A batch, in turn or in forked workers, gives each run exactly the numbers it gets alone."""
    archive = make_cifar_python(tmp_path / "c.tar.gz")
    data = prepare_dir(archive, tmp_path / "prepared")
    raw = tiny_params(str(archive), md5(archive), epochs=2, models=["vit", "resnet50"], seeds=[0, 1])
    params = params_from_dict(raw)
    alone = {}
    for run in params.all_runs():
        s = train.train_run(run_config(params, run), data, tmp_path / f"alone/{run.name}", tmp_path / "ck-alone")
        alone[run.name] = (s.selected_test_acc, s.final_test_acc, s.selected_val_acc)
    argv = ["train", "--all-runs", "--workers", "2", "--data-dir", str(data), "--runs-dir", str(tmp_path / "pool")]
    argv += ["--ckpt-dir", str(tmp_path / "ck-pool"), "--params", str(write_yaml(tmp_path / "params.yaml", raw))]
    assert main(argv) == 0
    for name, numbers in alone.items():
        s = json.loads((tmp_path / f"pool/{name}/summary.json").read_text())
        assert (s["selected_test_acc"], s["final_test_acc"], s["selected_val_acc"]) == numbers, name
        a, b = (tmp_path / f"{d}/{name}/predictions.npz" for d in ("alone", "pool"))
        assert a.read_bytes() == b.read_bytes(), name
    out = capsys.readouterr().out
    assert "plan: preset tiny, 8 trainings" in out  # --all-runs prints the forecast first


@pytest.mark.slow
@pytest.mark.parametrize("target", ["group", "parent"])
def test_a_signal_stops_every_worker_well_within_slurms_grace(train_project, tmp_path, target):
    """Issue 28: SIGTERM to the process group of `dvc repro` left both train workers running 8 s
    later (SLURM kills 30 s after SIGTERM). The pool could deadlock: a worker that exited on the
    signal while waiting for its next run held the pool's queue lock. To the whole group (as SLURM
    and a terminal do) or to the command alone, which passes it on."""
    argv = [
        sys.executable,
        "-m",
        "cnnvit.cli",
        *train_argv(train_project, tmp_path)[:-2],
        "--set",
        "presets.tiny.epochs=500",
    ]
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
    # no partial file; the forecast the command keeps for the epochs' progress lines is whole
    partial = [p for p in tmp_path.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]
    left = [p for p in partial if p.name != progress.FILE]
    assert not left, left
