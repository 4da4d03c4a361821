"""Which device a job uses, in which precision, and a share of one GPU on a machine with several.

    device, name = select_device("auto", runs_per_gpu=2)   # before anything touches torch.cuda
    precision = resolve_precision("auto", device)           # fp32 | tf32 | bf16 | fp16

``auto`` trains on CUDA when a GPU is visible, then on Apple's MPS, else on the CPU; ``cuda`` and
``mps`` insist on one. Jobs started side by side (Snakemake's ``--resources gpu=N``, or the
workers of one DVC stage) each claim a free slot before CUDA initialises: an exclusive ``flock``
on one lock file per GPU and slot (``runtime.runs_per_gpu`` slots per GPU, in
``$CNNVIT_GPU_LOCK_DIR``, default ``/tmp/cnnvit-gpu-locks``), then ``CUDA_VISIBLE_DEVICES`` is
narrowed to that GPU. Slots fill across GPUs first, so two jobs on two GPUs never share one. The
kernel drops the lock when the process ends, crash and ``kill -9`` included. A
``CUDA_VISIBLE_DEVICES`` that is already set limits the choice; under SLURM, which gives each
job its own GPUs, nothing is claimed.

Precision: ``auto`` is bf16 autocast on a CUDA GPU that supports it, else fp32. On CUDA, fp32
matmuls and convolutions use TF32 tensor cores where the GPU has them (recorded as ``tf32``).
MPS is supported in fp32 only, and is not measured by this project.

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
    slot: int = 0

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing drops the flock
            self.fd = -1


def _lock_name(device: str, slot: int) -> str:
    return "gpu-" + re.sub(r"[^A-Za-z0-9_.-]", "_", device) + (f".slot{slot}" if slot else "") + ".lock"


def try_claim(devices: list[str], lock_dir: str | Path, slots: int = 1) -> GpuClaim | None:
    """A free slot of ``devices`` (each has ``slots``), now held by this process; None if all
    are taken. Every GPU's first slot comes before any GPU's second."""
    lock_dir = Path(lock_dir)
    lock_dir.mkdir(parents=True, exist_ok=True)
    for slot, device in ((slot, device) for slot in range(slots) for device in devices):
        path = lock_dir / _lock_name(device, slot)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return GpuClaim(device, path, fd, slot)
    return None


def claim_gpu(devices: list[str], lock_dir: str | Path | None = None, poll_s: float = 2.0, slots: int = 1) -> GpuClaim:
    """Claim a free slot of ``devices``, waiting (and saying so) while every one is in use."""
    lock_dir = lock_dir or os.environ.get(LOCK_DIR_ENV, DEFAULT_LOCK_DIR)
    said = False
    while (claim := try_claim(devices, lock_dir, slots)) is None:
        if not said:
            print(
                f"all {len(devices)} GPU(s) ({', '.join(devices)}) x {slots} slot(s) are in use by other cnnvit "
                f"jobs; waiting for one to free up (locks in {lock_dir})",
                flush=True,
            )
            said = True
        time.sleep(poll_s)
    return claim


def cpu_slots(threads: int) -> int:
    """Jobs of ``threads`` threads this machine's CPUs hold side by side."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, threads))


def slots(runtime) -> int:
    """Trainings this machine runs side by side: its GPUs x ``runs_per_gpu`` where jobs use
    CUDA, one on Apple's MPS, else its cores over ``threads``."""
    gpus = [] if runtime.device in ("cpu", "mps") else visible_gpus()
    if gpus:
        return len(gpus) * runtime.runs_per_gpu
    if runtime.device == "mps" or (runtime.device == "auto" and _mps_available()):
        return 1
    return cpu_slots(runtime.threads)


_held: GpuClaim | None = None  # kept for the life of the process


def _no_device(setting: str, why: str) -> CnnvitError:
    return CnnvitError(f"runtime.device is {setting} but {why}: set runtime.device=auto or cpu")


def _mps_available() -> bool:
    import torch

    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def select_device(setting: str, runs_per_gpu: int = 1):
    """(torch.device, the name of the device) for ``runtime.device``; claims a GPU slot when it
    uses a GPU (``runs_per_gpu`` slots per GPU)."""
    global _held
    gpus = [] if setting in ("cpu", "mps") else visible_gpus()
    if setting == "cuda" and not gpus:
        raise _no_device(setting, "this machine has no visible NVIDIA GPU")
    if gpus and not scheduler_assigned() and _held is None:
        _held = claim_gpu(gpus, slots=runs_per_gpu)
        os.environ["CUDA_VISIBLE_DEVICES"] = _held.device
    import torch

    if gpus and torch.cuda.is_available():
        slot = f", slot {_held.slot + 1} of {runs_per_gpu}" if _held is not None and runs_per_gpu > 1 else ""
        return torch.device("cuda", 0), f"cuda: {torch.cuda.get_device_name(0)}{slot}"
    if setting == "cuda":
        raise _no_device(
            setting,
            f"torch sees no CUDA device (torch {torch.__version__}, "
            f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')}); or install a CUDA build of torch",
        )
    if _held is not None:
        _held.release()
        _held = None
    if setting in ("auto", "mps") and _mps_available():
        return torch.device("mps"), f"mps: {platform.machine()} (Apple GPU)"
    if setting == "mps":
        raise _no_device(setting, "torch sees no Apple MPS device (torch.backends.mps.is_available() is false)")
    return torch.device("cpu"), f"cpu: {platform.processor() or platform.machine()} x{os.cpu_count()}"


def resolve_precision(setting: str, device) -> str:
    """What ``runtime.precision`` means on ``device``: fp32, tf32 (fp32 with TF32 tensor-core
    matmuls, CUDA), bf16 or fp16 (autocast). Refuses what the device cannot do."""
    import torch

    def refuse(why: str) -> CnnvitError:
        return CnnvitError(f"runtime.precision is {setting} but {why}: set runtime.precision=auto or fp32")

    if device.type == "cuda":
        bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
        fp32 = "tf32" if torch.cuda.get_device_capability()[0] >= 8 else "fp32"  # TF32 came with Ampere
        if setting == "bf16" and not bf16:
            raise refuse(f"this GPU ({torch.cuda.get_device_name()}) has no bf16 support")
        return {"auto": "bf16" if bf16 else fp32, "fp32": fp32}.get(setting, setting)
    if device.type == "mps":
        if setting in ("bf16", "fp16"):
            raise refuse("MPS runs fp32 only here")
        return "fp32"
    if setting == "fp16":
        raise refuse("fp16 needs a CUDA GPU, and this job runs on the CPU (bf16 works on a CPU)")
    return "fp32" if setting == "auto" else setting


def use_precision(precision: str, device) -> None:
    """Switch TF32 tensor cores on for fp32 matmuls and convolutions on CUDA (autocast leaves
    some layers in fp32, so bf16 and fp16 runs use them too)."""
    import torch

    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
