"""How a job runs (issue 20): precision resolved per device, compile modes, device auto with MPS,
several runs per GPU, and several runs in one command (in turn, or in forked workers), on a CPU
with the GPU pretended where it must be."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from types import SimpleNamespace

import pytest
import torch
from conftest import assert_one_line_error, make_cifar_python, md5, prepare_dir, run_cli, tiny_params, write_yaml

from cnnvit import batch
from cnnvit.cli import main
from cnnvit.config.load import params_from_dict
from cnnvit.config.runs import run_config
from cnnvit.config.types import RunSpec, resolves_to
from cnnvit.errors import CnnvitError, Interrupted
from cnnvit.training import device as devices
from cnnvit.training import engine as train
from cnnvit.training.engine import Trainer
from cnnvit.training.inputs import Prepared, Split
from cnnvit.training.numerics import compile_mode

CPU, MPS, CUDA = torch.device("cpu"), torch.device("mps"), torch.device("cuda", 0)


@pytest.fixture
def gpu(monkeypatch):
    """A pretend CUDA GPU of compute capability (major, 0), with or without bf16."""

    def make(major: int, bf16: bool):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: bf16)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (major, 0))
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: f"Pretend sm_{major}0")

    return make


def test_auto_precision_is_bf16_on_a_gpu_that_has_it_and_fp32_elsewhere(gpu):
    gpu(9, True)  # an H100
    assert [devices.resolve_precision(p, CUDA) for p in ("auto", "fp32", "bf16", "fp16")] == [
        "bf16", "tf32", "bf16", "fp16"
    ]  # fmt: skip
    gpu(7, False)  # a V100: no bf16, no TF32
    assert devices.resolve_precision("auto", CUDA) == "fp32" and devices.resolve_precision("fp16", CUDA) == "fp16"
    assert [devices.resolve_precision(p, CPU) for p in ("auto", "fp32", "bf16")] == ["fp32", "fp32", "bf16"]
    assert devices.resolve_precision("auto", MPS) == "fp32"
    # a recorded precision matches the setting that resolved to it, and only that
    assert resolves_to("auto", "bf16") and resolves_to("fp32", "tf32") and not resolves_to("bf16", "fp32")


@pytest.mark.parametrize(
    ("setting", "where", "cause"),
    [
        ("bf16", "v100", "this GPU (Pretend sm_70) has no bf16 support"),
        ("fp16", "cpu", "fp16 needs a CUDA GPU, and this job runs on the CPU (bf16 works on a CPU)"),
        ("bf16", "mps", "MPS runs fp32 only here"),
    ],
)
def test_a_precision_the_device_cannot_do_is_one_line_naming_the_key(gpu, setting, where, cause):
    gpu(7, False)
    device = {"v100": CUDA, "cpu": CPU, "mps": MPS}[where]
    with pytest.raises(CnnvitError) as err:
        devices.resolve_precision(setting, device)
    assert str(err.value) == f"runtime.precision is {setting} but {cause}: set runtime.precision=auto or fp32"


def test_device_auto_picks_mps_after_cuda_and_mps_without_one_is_refused(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(devices, "gpu_count", lambda: 0)
    monkeypatch.setattr(devices, "_mps_available", lambda: True)
    device, name = devices.select_device("auto")
    assert device.type == "mps" and name.startswith("mps: ")
    assert devices.select_device("cpu")[0].type == "cpu"  # asked for: the CPU, even with MPS there
    monkeypatch.setattr(devices, "_mps_available", lambda: False)
    assert devices.select_device("auto")[0].type == "cpu"
    with pytest.raises(CnnvitError) as err:
        devices.select_device("mps")
    assert str(err.value).startswith("runtime.device is mps but torch sees no Apple MPS device")
    assert str(err.value).endswith(": set runtime.device=auto or cpu")


def test_gpu_slots_fill_every_gpu_before_sharing_one(tmp_path):
    claims = [devices.try_claim(["0", "1"], tmp_path, slots=2) for _ in range(4)]
    assert [(c.device, c.slot) for c in claims] == [("0", 0), ("1", 0), ("0", 1), ("1", 1)]
    assert devices.try_claim(["0", "1"], tmp_path, slots=2) is None  # 2 GPUs x 2 runs each, all held
    claims[2].release()
    again = devices.try_claim(["0", "1"], tmp_path, slots=2)
    assert (again.device, again.slot) == ("0", 1)


def test_slots_count_gpus_times_runs_per_gpu_or_cores_over_threads(monkeypatch):
    monkeypatch.setattr(devices, "_mps_available", lambda: False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    runtime = SimpleNamespace(device="auto", threads=1, runs_per_gpu=4)
    assert devices.slots(runtime) == 8
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert devices.slots(runtime) == devices.cpu_slots(1) == len(os.sched_getaffinity(0))
    assert devices.slots(SimpleNamespace(device="cpu", threads=64, runs_per_gpu=4)) == 1


def test_compile_modes():
    assert [compile_mode(v) for v in (False, True, "default", "reduce-overhead", "max-autotune")] == [
        None, "default", "default", "reduce-overhead", "max-autotune"
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("compile", "fastest", "runtime.compile: 'fastest' is not one of [False, True, 'default'"),
        ("runs_per_gpu", 0, "runtime.runs_per_gpu: 0 is less than the minimum of 1"),
        ("precision", "fp8", "runtime.precision: 'fp8' is not one of ['auto', 'fp32', 'bf16', 'fp16']"),
        ("device", "tpu", "runtime.device: 'tpu' is not one of ['auto', 'cpu', 'cuda', 'mps']"),
    ],
)
def test_a_wrong_runtime_setting_fails_before_anything_runs_naming_the_key(tmp_path, capsys, key, value, message):
    raw = tiny_params("/nowhere.tar.gz", "0" * 32)
    raw["runtime"][key] = value
    code, err = run_cli(tmp_path, capsys, ["plan"], raw)
    assert_one_line_error(code, err, message)


def test_what_this_machine_cannot_run_is_refused_before_the_work_starts(tmp_path, capsys):
    """Snakemake's onstart and DVC's train stage run the plan first: it resolves the device and the
    precision as every run will."""
    raw = tiny_params("/nowhere.tar.gz", "0" * 32)
    raw["runtime"]["precision"] = "fp16"
    code, err = run_cli(tmp_path, capsys, ["plan"], raw)
    assert_one_line_error(code, err, "runtime.precision is fp16 but fp16 needs a CUDA GPU")
    raw["runtime"].update(precision="auto", device="cuda")
    code, err = run_cli(tmp_path, capsys, ["plan"], raw)
    assert_one_line_error(code, err, "runtime.device is cuda but", "set runtime.device=auto or cpu")


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


# ----------------------------------------------------------------------------- several runs a command


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
