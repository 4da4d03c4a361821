"""Claiming one GPU per job on a machine with several, tested on a CPU with pretend device ids."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

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


def test_no_claim_inside_a_slurm_job(monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    assert devices.scheduler_assigned()
    monkeypatch.delenv("SLURM_JOB_ID")
    assert not devices.scheduler_assigned()


def test_device_selection_on_a_cpu_only_machine(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(devices, "gpu_count", lambda: 0)
    device, name = devices.select_device("auto")
    assert device.type == "cpu" and name.startswith("cpu: ")
    assert devices.select_device("cpu")[0].type == "cpu"
    with pytest.raises(CnnvitError, match=r"runtime\.device .*is cuda but this machine has no visible NVIDIA GPU"):
        devices.select_device("cuda")


def test_a_gpu_that_torch_cannot_see_is_one_line(monkeypatch, tmp_path):
    """A pretend GPU (as SLURM's count-only gres gives a job): auto falls back, cuda says why."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.setenv(devices.LOCK_DIR_ENV, str(tmp_path))
    monkeypatch.setattr(devices, "_held", None)
    assert devices.select_device("auto")[0].type == "cpu"
    claim = devices.try_claim(["0"], tmp_path)
    assert claim is not None  # auto released its claim when it fell back
    claim.release()
    with pytest.raises(CnnvitError, match="torch sees no CUDA device"):
        devices.select_device("cuda")
