"""Which device a training job uses, and one GPU per job on a machine with several.

    device, claim = select_device("auto")     # before anything touches torch.cuda

``auto`` trains on CUDA when a GPU is visible, else on the CPU; ``cuda`` insists on one. With N
GPUs and N jobs started at once (``snakemake --resources gpu=N``, ``dvc queue start -j N``), each
job claims a free GPU before CUDA initialises: an exclusive ``flock`` on one lock file per GPU
(in ``$CNNVIT_GPU_LOCK_DIR``, default ``/tmp/cnnvit-gpu-locks``), then ``CUDA_VISIBLE_DEVICES``
is narrowed to that GPU. The kernel drops the lock when the process ends, crash and ``kill -9``
included. A ``CUDA_VISIBLE_DEVICES`` that is already set limits the choice; under SLURM, which
gives each job its own GPUs, nothing is claimed.

:func:`gpu_count` reads the driver's GPU list without importing torch, so the Snakefile can ask
for a GPU only where one can be used.
"""

from __future__ import annotations

import fcntl
import os
import platform
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from cnnvit.errors import CnnvitError

LOCK_DIR_ENV = "CNNVIT_GPU_LOCK_DIR"
DEFAULT_LOCK_DIR = "/tmp/cnnvit-gpu-locks"


def gpu_count() -> int:
    """NVIDIA GPUs the driver lists on this machine (0 without a driver), without CUDA."""
    proc = Path("/proc/driver/nvidia/gpus")
    if proc.is_dir():
        return len(list(proc.iterdir()))
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
        except (OSError, subprocess.SubprocessError):
            return 0
        return sum(line.startswith("GPU ") for line in out.splitlines())
    return 0


def visible_gpus() -> list[str]:
    """The GPU ids a job here may use: ``CUDA_VISIBLE_DEVICES`` if set, else every GPU."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        ids = [d.strip() for d in env.split(",") if d.strip()]
        return [] if not ids or ids[0] in ("-1", "NoDevFiles") else ids
    return [str(i) for i in range(gpu_count())]


def scheduler_assigned() -> bool:
    """True inside a SLURM job: its GPUs are its own, so there is nothing to claim."""
    return "SLURM_JOB_ID" in os.environ


@dataclass
class GpuClaim:
    device: str  # the id as CUDA_VISIBLE_DEVICES names it
    path: Path
    fd: int

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing drops the flock
            self.fd = -1


def _lock_name(device: str) -> str:
    return "gpu-" + re.sub(r"[^A-Za-z0-9_.-]", "_", device) + ".lock"


def try_claim(devices: list[str], lock_dir: str | Path) -> GpuClaim | None:
    """The first of ``devices`` whose lock is free, now held by this process; None if all are taken."""
    lock_dir = Path(lock_dir)
    lock_dir.mkdir(parents=True, exist_ok=True)
    for device in devices:
        path = lock_dir / _lock_name(device)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return GpuClaim(device, path, fd)
    return None


def claim_gpu(devices: list[str], lock_dir: str | Path | None = None, poll_s: float = 2.0) -> GpuClaim:
    """Claim a free GPU of ``devices``, waiting (and saying so) while every one is in use."""
    lock_dir = lock_dir or os.environ.get(LOCK_DIR_ENV, DEFAULT_LOCK_DIR)
    said = False
    while (claim := try_claim(devices, lock_dir)) is None:
        if not said:
            print(
                f"all {len(devices)} GPU(s) ({', '.join(devices)}) are in use by other cnnvit jobs; "
                f"waiting for one to free up (locks in {lock_dir})",
                flush=True,
            )
            said = True
        time.sleep(poll_s)
    return claim


_held: GpuClaim | None = None  # kept for the life of the process


def select_device(setting: str):
    """(torch.device, the name of the device) for ``runtime.device``; claims a GPU when it uses one."""
    global _held
    gpus = [] if setting == "cpu" else visible_gpus()
    if setting == "cuda" and not gpus:
        raise CnnvitError(
            "runtime.device (formerly train.device) is cuda but this machine has no visible NVIDIA GPU: "
            "set runtime.device=auto or cpu"
        )
    if gpus and not scheduler_assigned() and _held is None:
        _held = claim_gpu(gpus)
        os.environ["CUDA_VISIBLE_DEVICES"] = _held.device
    import torch

    if gpus and torch.cuda.is_available():
        return torch.device("cuda", 0), f"cuda: {torch.cuda.get_device_name(0)}"
    if setting == "cuda":
        raise CnnvitError(
            "runtime.device (formerly train.device) is cuda but torch sees no CUDA device "
            f"(torch {torch.__version__}, CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')}): "
            "set runtime.device=auto or cpu, or install a CUDA build of torch"
        )
    if _held is not None:
        _held.release()
        _held = None
    return torch.device("cpu"), f"cpu: {platform.processor() or platform.machine()} x{os.cpu_count()}"
