"""Which device a job gets: the loud stop where NVIDIA GPUs are present but torch cannot use them,
and claiming one GPU (slot) per job on a machine or SLURM allocation with several. Tested on a CPU,
with pretend device ids and a stub torch.cuda."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import ROOT, assert_one_line_error, run_cli, tiny_params

from cnnvit.cli import main
from cnnvit.errors import CnnvitError
from cnnvit.training import device as devices

CLAIMER = """
import sys, time
from cnnvit.training.device import claim_gpu
claim = claim_gpu(sys.argv[2].split(","), sys.argv[1], poll_s=0.05)
print(claim.device, flush=True)
time.sleep(float(sys.argv[3]))
"""


def claimer(lock_dir, ids: list[str], hold_s: float = 600) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", CLAIMER, str(lock_dir), ",".join(ids), str(hold_s)], stdout=subprocess.PIPE, text=True
    )


def test_concurrent_claimers_get_different_gpus(tmp_path):
    ids = ["0", "1", "2"]
    procs = [claimer(tmp_path, ids) for _ in ids]
    try:
        got = [p.stdout.readline().strip() for p in procs]
        assert sorted(got) == ids
        assert devices.try_claim(ids, tmp_path) is None  # all three are held
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_a_killed_claimer_frees_its_gpu_and_a_waiter_gets_it(tmp_path, capsys):
    first = claimer(tmp_path, ["7"])
    assert first.stdout.readline().strip() == "7"
    waiter = claimer(tmp_path, ["7"], hold_s=0)  # blocks: the only GPU is taken
    first.send_signal(signal.SIGKILL)  # kill -9: no cleanup runs, the kernel drops the lock
    first.wait()
    assert waiter.stdout.readline().strip() == "7"
    waiter.wait()
    claim = devices.try_claim(["7"], tmp_path)
    assert claim is not None and claim.device == "7"
    claim.release()


def test_claims_respect_cuda_visible_devices(monkeypatch, tmp_path):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    assert devices.visible_gpus() == ["2", "5"]
    a, b = devices.try_claim(devices.visible_gpus(), tmp_path), devices.try_claim(devices.visible_gpus(), tmp_path)
    assert {a.device, b.device} == {"2", "5"}
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert devices.visible_gpus() == []
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-1a2b,MIG-3c/4")
    assert devices.try_claim(devices.visible_gpus(), tmp_path).device == "GPU-1a2b"


def test_device_selection_on_a_cpu_only_machine(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(devices, "gpu_count", lambda: 0)
    monkeypatch.setattr(devices, "nvidia_present", lambda: False)
    device, name = devices.select_device("auto")
    assert device.type == "cpu" and name.startswith("cpu: ")
    assert devices.select_device("cpu")[0].type == "cpu"
    with pytest.raises(CnnvitError, match=r"runtime\.device .*is cuda but this machine has no visible NVIDIA GPU"):
        devices.select_device("cuda")


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


SLURM_CLAIMER = """
import os, sys, time, torch
torch.cuda.is_available = lambda: True  # a stub: the claim and the name are under test, not CUDA
torch.cuda.get_device_name = lambda *a: "Stub GPU"
from cnnvit.training.device import held_slot, select_device
device, name = select_device("auto", runs_per_gpu=int(sys.argv[1]))
print(os.environ["CUDA_VISIBLE_DEVICES"], name, "|", held_slot(int(sys.argv[1])), flush=True)
time.sleep(600)
"""


def slurm_claimer(lock_dir, job: str, visible: str, runs_per_gpu: int = 1) -> subprocess.Popen:
    env = {**os.environ, "SLURM_JOB_ID": job, "SLURM_JOB_GPUS": visible, "CUDA_VISIBLE_DEVICES": visible,
           devices.LOCK_DIR_ENV: str(lock_dir)}  # fmt: skip
    return subprocess.Popen(
        [sys.executable, "-c", SLURM_CLAIMER, str(runs_per_gpu)], stdout=subprocess.PIPE, text=True, env=env
    )


def test_runs_in_one_slurm_job_spread_over_its_gpus_and_record_no_slot(tmp_path):
    """sbatch --gpus=2 with DVC's workers or Snakemake inside: each run its own GPU, each job its
    own lock folder (another job's GPU 0 is another GPU)."""
    procs = [slurm_claimer(tmp_path, "4242", "0,1", runs_per_gpu=2) for _ in range(2)]
    procs.append(slurm_claimer(tmp_path, "4243", "0,1", runs_per_gpu=2))  # another job on the node
    try:
        got = [p.stdout.readline().split() for p in procs]
        assert sorted(g[0] for g in got[:2]) == ["0", "1"]  # narrowed to one GPU each, slot 1 of each first
        assert got[2][0] == "0"  # the other job's locks are its own
        assert all(" ".join(g[1:5]) == "cuda: Stub GPU |" for g in got)  # the device's name has no slot
        assert {" ".join(g[5:]) for g in got[:2]} == {"GPU 0, slot 1 of 2", "GPU 1, slot 1 of 2"}  # it is printed
        assert sorted(p.name for p in (tmp_path / "slurm-4242").iterdir()) == ["gpu-0.lock", "gpu-1.lock"]
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_slots_under_slurm_count_the_jobs_visible_gpus(monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    assert devices.slots(SimpleNamespace(device="auto", threads=1, runs_per_gpu=2)) == 8
    assert devices.lock_dir().name == "slurm-42"
    monkeypatch.delenv("SLURM_JOB_ID")
    assert devices.lock_dir() == Path(os.environ.get(devices.LOCK_DIR_ENV) or devices.DEFAULT_LOCK_DIR)


def test_a_lock_folder_made_here_takes_every_users_locks(tmp_path):
    claim = devices.try_claim(["0"], tmp_path / "a" / "locks")
    assert claim is not None
    for d in (tmp_path / "a", tmp_path / "a" / "locks"):
        assert stat.S_IMODE(d.stat().st_mode) == 0o1777  # sticky, world-writable: as /tmp
    assert stat.S_IMODE(claim.path.stat().st_mode) == 0o666
    claim.release()


def claim_as_another_user(lock_dir: Path) -> tuple[int, str]:
    """(exit status, output) of ``try_claim`` in ``lock_dir`` by another user, in a forked child:
    nobody when the tests run as root (who may write anywhere), else this user with ``lock_dir``
    made unwritable. Forked, not exec'd: nobody may not be able to read this Python."""
    read, write = os.pipe()
    if os.geteuid():
        lock_dir.chmod(0o555)
    pid = os.fork()
    if pid == 0:
        code, out = 1, ""
        try:
            os.close(read)
            if not os.geteuid():
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
            out, code = devices.try_claim(["0", "1"], lock_dir).device, 0
        except CnnvitError as exc:
            out = f"error: {exc}"
        finally:
            os.write(write, out.encode())
            os._exit(code)
    os.close(write)
    with os.fdopen(read) as f:
        out = f.read()
    status = os.waitpid(pid, 0)[1]
    lock_dir.chmod(0o755)
    return os.waitstatus_to_exitcode(status), out


def test_a_lock_folder_another_user_keeps_private_is_one_line(tmp_path):
    shared = Path(tempfile.mkdtemp(prefix="cnnvit-locks-"))  # outside pytest's private tmp, readable by all
    try:
        shared.chmod(0o755)  # as a cnnvit before this change left it: the first user's umask
        code, out = claim_as_another_user(shared)
        assert code == 1 and "\n" not in out, out
        assert out.startswith(
            f"error: cannot take a GPU lock in {shared} (cannot create gpu-0.lock: Permission denied"
        ), out
        assert f"chmod 1777 {shared}" in out and f"set {devices.LOCK_DIR_ENV} to a folder" in out
        devices.try_claim(["0", "1"], shared).release()  # its owner makes the lock files, 0666
        assert claim_as_another_user(shared) == (0, "0")  # which every user can take, read-only if need be
    finally:
        shutil.rmtree(shared)


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
