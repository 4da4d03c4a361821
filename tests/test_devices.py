"""Which device and precision a job gets, tested on a CPU with the GPU pretended where it must
be: the CPU, MPS and CUDA choices of runtime.device auto, precision resolved per device and refused
where the device cannot do it, the loud stop where NVIDIA GPUs are present but torch cannot use
them, a GPU-sized preset on a machine without one, and what a run's provenance records of the
CUDA stack. Claiming a GPU (slot) per job is in test_gpu_slots.py."""

from __future__ import annotations

import json
import os

import pytest
import torch
from conftest import ROOT, assert_one_line_error, paper_vit, run_cli, tiny_params

from cnnvit.cli import main
from cnnvit.config.types import resolves_to
from cnnvit.errors import CnnvitError
from cnnvit.training import device as devices
from cnnvit.training import engine as train

CPU, MPS, CUDA = torch.device("cpu"), torch.device("mps"), torch.device("cuda", 0)


def test_device_selection_on_a_cpu_only_machine(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(devices, "gpu_count", lambda: 0)
    monkeypatch.setattr(devices, "nvidia_present", lambda: False)
    device, name = devices.select_device("auto")
    assert device.type == "cpu" and name.startswith("cpu: ")
    # the CPU's model and the instruction set torch's kernels use on it: a run's floats depend on them
    assert f", {torch.backends.cpu.get_cpu_capability()} x" in name and name.endswith(f" x{os.cpu_count()}")
    assert devices.select_device("cpu")[0].type == "cpu"
    with pytest.raises(CnnvitError, match=r"runtime\.device .*is cuda but this machine has no visible NVIDIA GPU"):
        devices.select_device("cuda")


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


def test_a_pretend_gpu_without_a_driver_falls_back_and_cuda_says_why(monkeypatch, tmp_path):
    """CUDA_VISIBLE_DEVICES naming a GPU on a machine without an NVIDIA driver (a CPU node with a
    count-only SLURM gres): auto trains on the CPU; cuda refuses in one line."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.setenv(devices.LOCK_DIR_ENV, str(tmp_path))
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.setattr(devices, "_held", None)
    monkeypatch.setattr(devices, "nvidia_present", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert devices.select_device("auto")[0].type == "cpu"
    claim = devices.try_claim(["0"], tmp_path)
    assert claim is not None  # auto released its claim when it fell back
    claim.release()
    with pytest.raises(CnnvitError, match="torch sees no CUDA device") as err:
        devices.select_device("cuda")
    assert "\n" not in str(err.value) and str(err.value).endswith("or install a CUDA build of torch")


@pytest.fixture
def unusable_gpus(monkeypatch, tmp_path):
    """Two NVIDIA GPUs the driver lists (driver 550) and a torch that cannot use them, as the
    locked cu132 torch on a driver older than 580."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.setenv(devices.LOCK_DIR_ENV, str(tmp_path / "locks"))
    monkeypatch.setattr(devices, "_held", None)
    monkeypatch.setattr(devices, "gpu_count", lambda: 2)
    monkeypatch.setattr(devices, "nvidia_present", lambda: True)
    monkeypatch.setattr(devices, "driver_version", lambda: "550.54.15")
    monkeypatch.setattr(devices, "gpu_names", lambda: ["NVIDIA H100 80GB HBM3"] * 2)
    monkeypatch.setattr(torch.version, "cuda", "13.2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    return tmp_path / "locks"


def test_gpus_present_but_unusable_stop_auto_in_one_line(unusable_gpus):
    for setting in ("auto", "cuda"):
        with pytest.raises(CnnvitError) as err:
            devices.select_device(setting)
        line = str(err.value)
        assert "\n" not in line and line.startswith(f"runtime.device is {setting} but this machine has 2 NVIDIA GPU(s)")
        needles = ["NVIDIA H100 80GB HBM3", "built for CUDA 13.2", "branch 580 or newer", "driver here is 550.54.15",
                   "install a torch built for the CUDA this driver runs", "update the driver to 580+",
                   "set runtime.device=cpu to train on the CPU anyway"]  # fmt: skip
        for needle in needles:
            assert needle in line, (needle, line)
    assert devices._held is None and devices.try_claim(["0", "1"], unusable_gpus) is not None  # claim released
    assert devices.select_device("cpu")[0].type == "cpu"  # how to insist on the CPU


def test_the_loud_stop_is_one_line_from_the_command(unusable_gpus, tmp_path, capsys):
    code, err = run_cli(tmp_path, capsys, ["plan"], tiny_params("/nowhere.tar.gz", "0" * 32))
    assert_one_line_error(code, err, "runtime.device is auto but", "CUDA 13.2", "550.54.15", "runtime.device=cpu")


def test_hidden_gpus_mean_the_cpu(unusable_gpus, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # what gpu_check --smoke does on a GPU machine
    assert devices.select_device("auto")[0].type == "cpu"
    with pytest.raises(CnnvitError, match="CUDA_VISIBLE_DEVICES hides every GPU"):
        devices.select_device("cuda")


def test_a_slurm_job_whose_gpus_this_process_cannot_see_is_one_line(monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_JOB_GPUS", "0,1")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(CnnvitError) as err:
        devices.select_device("auto")
    assert str(err.value) == (
        "runtime.device is auto but SLURM job 77 was given GPU(s) 0,1 and this process sees none "
        "(CUDA_VISIBLE_DEVICES=''): run the command inside the job (srun, or the batch script itself) without "
        "overriding CUDA_VISIBLE_DEVICES, or set runtime.device=cpu"
    )
    assert devices.select_device("cpu")[0].type == "cpu"


def test_a_gpu_sized_preset_stops_at_once_on_a_machine_without_a_gpu(monkeypatch, capsys, tmp_path):
    """Issue 26.3: `snakemake --cores all` on a laptop started the paper preset's weeks of work."""
    from cnnvit.config.load import load_params
    from cnnvit.training import hardware

    monkeypatch.setattr(hardware, "gpu_count", lambda: 0)
    monkeypatch.setattr(hardware.sys, "platform", "linux")
    paper = load_params(ROOT / "params.yaml")
    with pytest.raises(CnnvitError, match=r"preset 'paper' is sized for a GPU .* run the laptop preset"):
        hardware.check_fits(paper)
    hardware.check_fits(load_params(ROOT / "params.yaml", ["preset=laptop"]))  # sized for a CPU
    hardware.check_fits(load_params(ROOT / "params.yaml", ["runtime.device=cpu"]))  # insisted on
    monkeypatch.setattr(hardware, "gpu_count", lambda: 1)
    hardware.check_fits(paper)
    monkeypatch.setattr(hardware, "gpu_count", lambda: 0)
    code = main(["train", "--model", "vit", "--recipe", "paper", "--data-dir", str(tmp_path), "--runs-dir",
                 str(tmp_path / "r"), "--ckpt-dir", str(tmp_path / "c")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "snakemake --cores all --config preset=laptop" in err


# ----------------------------------------------------------------------------- precision


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


# ----------------------------------------------------------------------------- what a run records of its device


def test_provenance_records_the_cuda_stack_and_what_compiling_cost(prepared, tmp_path, monkeypatch):
    monkeypatch.setattr(devices, "driver_version", lambda: "580.65.06")
    monkeypatch.setattr(devices, "gpu_names", lambda: ["NVIDIA H200"])
    summary = train.train_run(paper_vit(prepared[0], 1), prepared[1], tmp_path / "out", tmp_path / "ckpt")
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
