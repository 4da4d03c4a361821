"""Which device a job uses, in which precision, and a share of one GPU on a machine with several.

    device, name = select_device("auto", runs_per_gpu=2)   # before anything touches torch.cuda
    precision = resolve_precision("auto", device)           # fp32 | tf32 | bf16 | fp16

``auto`` trains on CUDA when a GPU is visible, then on Apple's MPS, else on the CPU; ``cuda`` and
``mps`` insist on one, ``cpu`` on the CPU. A machine with NVIDIA GPUs (the driver lists them, or
``/dev/nvidia0`` exists) whose GPUs torch cannot use (most often: the torch build's CUDA needs a
newer driver) stops ``auto`` with one line naming the torch build's CUDA, the driver and the fix:
never weeks of a silent CPU run. ``CUDA_VISIBLE_DEVICES=""`` (or ``device: cpu``) asks for the CPU.

Jobs started side by side (Snakemake's ``--resources gpu=N``, the workers of one DVC stage, the
jobs of one SLURM allocation) each claim a free slot before CUDA initialises: an exclusive
``flock`` on one lock file per visible GPU and slot (``runtime.runs_per_gpu`` slots per GPU),
then ``CUDA_VISIBLE_DEVICES`` is narrowed to that GPU. Slots fill across GPUs first. The kernel
drops a lock when its process ends, ``kill -9`` included. The locks live in
``$CNNVIT_GPU_LOCK_DIR`` (default ``/tmp/cnnvit-gpu-locks``), created sticky and world-writable
(as ``/tmp``) so that every user's jobs see each other's claims; inside a SLURM job they live in
a ``slurm-<job id>`` folder of it, since a job's GPU ids are its own (SLURM renumbers them).
A lock that cannot be taken (a folder another user made private) is one line.

The device's name (``cuda: NVIDIA H100 80GB HBM3``) is what a run records: the slot it held is
printed, never recorded, so that a resume in another slot is the same device.

Precision: ``auto`` is bf16 autocast on a CUDA GPU that supports it, else fp32. On CUDA, fp32
matmuls and convolutions use TF32 tensor cores where the GPU has them (recorded as ``tf32``), and
cuDNN picks its fastest algorithms (``cudnn.benchmark``). MPS runs fp32 only, unmeasured here.

:func:`gpu_count`, :func:`driver_version` and :func:`gpu_names` read the driver without
importing torch or initialising CUDA (the Snakefile, provenance, forked workers use them).
"""

from __future__ import annotations

import fcntl
import os
import platform
import pwd
import re
import shutil
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from cnnvit.errors import CnnvitError

LOCK_DIR_ENV = "CNNVIT_GPU_LOCK_DIR"
DEFAULT_LOCK_DIR = "/tmp/cnnvit-gpu-locks"
NVIDIA_PROC = Path("/proc/driver/nvidia")
# The oldest driver branch each CUDA major version runs on (CUDA's minor-version compatibility).
MIN_DRIVER = {13: 580, 12: 525, 11: 450}
SLURM_GPU_VARS = ("SLURM_STEP_GPUS", "SLURM_JOB_GPUS")


def _smi(*query: str) -> list[str]:
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", *query], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def gpu_count() -> int:
    """NVIDIA GPUs the driver lists on this machine (0 without a driver), without CUDA."""
    proc = NVIDIA_PROC / "gpus"
    if proc.is_dir():
        return len(list(proc.iterdir()))
    return sum(line.startswith("GPU ") for line in _smi("-L"))


def nvidia_present() -> bool:
    """Whether this machine has an NVIDIA GPU: the driver lists one, or its device file exists."""
    return gpu_count() > 0 or any(re.fullmatch(r"nvidia\d+", p.name) for p in Path("/dev").glob("nvidia*"))


def driver_version() -> str | None:
    """The NVIDIA kernel driver's version (e.g. ``570.86.15``), None without one."""
    try:
        text = (NVIDIA_PROC / "version").read_text()
    except OSError:
        text = ""
    if match := re.search(r"Kernel Module(?: for \S+)?\s+(\d+\.\d+(?:\.\d+)?)", text):
        return match.group(1)
    found = _smi("--query-gpu=driver_version", "--format=csv,noheader")
    return found[0] if found else None


def gpu_names() -> list[str]:
    """The model of every NVIDIA GPU the driver lists (e.g. ``NVIDIA H100 80GB HBM3``)."""
    names = []
    for info in sorted((NVIDIA_PROC / "gpus").glob("*/information")):
        with open(info) as f:
            names += [line.split(":", 1)[1].strip() for line in f if line.startswith("Model:")]
    return names or _smi("--query-gpu=name", "--format=csv,noheader")


def torch_cuda() -> str | None:
    """The CUDA version the installed torch was built for (``13.2``), None for a CPU build;
    read without importing torch where it is not imported yet."""
    if "torch" in sys.modules:
        return sys.modules["torch"].version.cuda
    try:
        local = metadata.version("torch").partition("+")[2]
    except metadata.PackageNotFoundError:
        return None
    match = re.fullmatch(r"cu(\d+)(\d)", local)
    return f"{match.group(1)}.{match.group(2)}" if match else None


def cuda_facts() -> dict:
    """What provenance records of the CUDA stack: torch's CUDA, the driver, the GPUs."""
    return {"torch_cuda": torch_cuda(), "driver": driver_version(), "gpus": gpu_names()}


def _driver_need(cuda: str | None) -> str:
    need = MIN_DRIVER.get(int(cuda.split(".")[0])) if cuda else None
    return f", which needs an NVIDIA driver of branch {need} or newer" if need else ""


def diagnosis() -> str:
    """Why torch cannot use this machine's NVIDIA GPUs, as far as can be told: the torch build's
    CUDA, the driver it needs and the driver found."""
    try:
        version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        version = "(not installed)"
    cuda = torch_cuda()
    built = f"built for CUDA {cuda}{_driver_need(cuda)}" if cuda else "a CPU-only build"
    driver = driver_version()
    return f"torch {version} is {built}; the driver here is {driver or 'not loaded (no /proc/driver/nvidia)'}"


def visible_gpus() -> list[str]:
    """The GPU ids a job here may use: ``CUDA_VISIBLE_DEVICES`` if set, else every GPU."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        ids = [d.strip() for d in env.split(",") if d.strip()]
        return [] if not ids or ids[0] in ("-1", "NoDevFiles") else ids
    return [str(i) for i in range(gpu_count())]


def scheduler_assigned() -> bool:
    """True inside a SLURM job: its GPU ids are its own (claims go to a folder of the job's)."""
    return "SLURM_JOB_ID" in os.environ


def slurm_gpus() -> str | None:
    """The GPUs SLURM gave this job (``0,1``), None where it gave none or this is no SLURM job."""
    if not scheduler_assigned():
        return None
    for var in SLURM_GPU_VARS:
        if os.environ.get(var, "").strip():
            return os.environ[var].strip()
    return None


# ----------------------------------------------------------------------------- claiming a GPU slot


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


def lock_dir() -> Path:
    """Where the claims of jobs that may share these GPUs meet (see the module's docstring)."""
    base = Path(os.environ.get(LOCK_DIR_ENV) or DEFAULT_LOCK_DIR)
    job = os.environ.get("SLURM_JOB_ID")
    return base / f"slurm-{job}" if job else base


def _lock_failure(directory: Path, why: str) -> CnnvitError:
    try:
        st = directory.stat()
        owner = pwd.getpwuid(st.st_uid).pw_name
    except (OSError, KeyError):
        return CnnvitError(
            f"cannot take a GPU lock in {directory} ({why}): set {LOCK_DIR_ENV} to a folder every user of these "
            "GPUs can write, and run again"
        )
    return CnnvitError(
        f"cannot take a GPU lock in {directory} ({why}; the folder belongs to {owner}, mode "
        f"{stat.filemode(st.st_mode)}): ask {owner} to `chmod 1777 {directory}`, or set {LOCK_DIR_ENV} to a "
        "folder every user of these GPUs can write, and run again"
    )


def _make_lock_dir(directory: Path) -> None:
    """Create ``directory`` (and missing parents) sticky and world-writable, as /tmp is: a
    folder made by one user must take every other user's locks. An existing one is left as is."""
    missing = []
    for d in (directory, *directory.parents):
        if d.is_dir():
            break
        missing.append(d)
    for d in reversed(missing):
        try:
            d.mkdir()
            os.chmod(d, 0o1777)  # mkdir's mode passes through the umask; chmod does not
        except FileExistsError:
            pass
        except OSError as exc:
            raise _lock_failure(d.parent, f"cannot create {d.name}: {exc.strerror}") from None
    if not directory.is_dir():
        raise _lock_failure(directory.parent, f"{directory} is not a folder")


def _open_lock(path: Path) -> int:
    """A descriptor of ``path`` to flock. An existing lock file is opened, read-only if that is
    all its owner allows (a flock needs no write access); a missing one is created for all."""
    for _ in range(3):
        try:
            return os.open(path, os.O_RDWR)
        except PermissionError:
            try:
                return os.open(path, os.O_RDONLY)
            except PermissionError as exc:
                raise _lock_failure(path.parent, f"cannot open {path.name}: {exc.strerror}") from None
        except FileNotFoundError:
            pass
        try:  # O_EXCL: never O_CREAT an existing file, which protected_regular refuses in a sticky folder
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue  # another job created it a moment ago
        except OSError as exc:
            raise _lock_failure(path.parent, f"cannot create {path.name}: {exc.strerror}") from None
        os.fchmod(fd, 0o666)
        return fd
    raise _lock_failure(path.parent, f"{path.name} keeps appearing and vanishing")


def _lock_name(device: str, slot: int) -> str:
    return "gpu-" + re.sub(r"[^A-Za-z0-9_.-]", "_", device) + (f".slot{slot}" if slot else "") + ".lock"


def try_claim(devices: list[str], directory: str | Path, slots: int = 1) -> GpuClaim | None:
    """A free slot of ``devices`` (each has ``slots``), now held by this process; None if all
    are taken. Every GPU's first slot comes before any GPU's second."""
    directory = Path(directory)
    _make_lock_dir(directory)
    for slot, device in ((slot, device) for slot in range(slots) for device in devices):
        path = directory / _lock_name(device, slot)
        fd = _open_lock(path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        try:  # the holder's pid, for a person looking at the folder; a read-only lock file has none
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError:
            pass
        return GpuClaim(device, path, fd, slot)
    return None


def claim_gpu(devices: list[str], directory: str | Path | None = None, poll_s: float = 2.0, slots: int = 1) -> GpuClaim:
    """Claim a free slot of ``devices``, waiting (and saying so) while every one is in use."""
    directory = directory or lock_dir()
    said = False
    while (claim := try_claim(devices, directory, slots)) is None:
        if not said:
            print(
                f"all {len(devices)} GPU(s) ({', '.join(devices)}) x {slots} slot(s) are in use by other cnnvit "
                f"jobs; waiting for one to free up (locks in {directory})",
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
    """Trainings this machine (or this SLURM allocation) runs side by side: its visible GPUs x
    ``runs_per_gpu`` where jobs use CUDA, one on Apple's MPS, else its cores over ``threads``."""
    gpus = [] if runtime.device in ("cpu", "mps") else visible_gpus()
    if gpus:
        return len(gpus) * runtime.runs_per_gpu
    if runtime.device == "mps" or (runtime.device == "auto" and _mps_available()):
        return 1
    return cpu_slots(runtime.threads)


_held: GpuClaim | None = None  # kept for the life of the process


def held_slot(runs_per_gpu: int) -> str:
    """What this process holds, for its log line (``GPU 1, slot 2 of 4``); '' without a claim."""
    if _held is None:
        return ""
    return f"GPU {_held.device}" + (f", slot {_held.slot + 1} of {runs_per_gpu}" if runs_per_gpu > 1 else "")


def _no_device(setting: str, why: str, fix: str = "set runtime.device=auto or cpu") -> CnnvitError:
    return CnnvitError(f"runtime.device is {setting} but {why}: {fix}")


def _mps_available() -> bool:
    import torch

    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def _unusable(setting: str, gpus: list[str]) -> CnnvitError:
    """The one line for NVIDIA GPUs that torch cannot use."""
    seen = f"{len(gpus)} NVIDIA GPU(s) ({', '.join(gpu_names()[: len(gpus)]) or 'ids ' + ','.join(gpus)})"
    cuda = torch_cuda()
    fix = "install a torch built for the CUDA this driver runs (README, 'On a GPU': uv and the cu12x wheels)"
    if cuda and (need := MIN_DRIVER.get(int(cuda.split(".")[0]))):
        fix += f" or update the driver to {need}+"
    if scheduler_assigned() and slurm_gpus() is None:
        fix = "ask SLURM for a GPU (sbatch --gpus=1), " + fix
    return _no_device(
        setting, f"this machine has {seen} and torch cannot use them ({diagnosis()})",
        f"{fix}; or set runtime.device=cpu to train on the CPU anyway",
    )  # fmt: skip


def select_device(setting: str, runs_per_gpu: int = 1):
    """(torch.device, the name of the device) for ``runtime.device``; claims a GPU slot when it
    uses a GPU (``runs_per_gpu`` slots per GPU)."""
    global _held
    gpus = [] if setting in ("cpu", "mps") else visible_gpus()
    given = slurm_gpus() if setting in ("auto", "cuda") else None
    if given and not gpus:
        raise _no_device(
            setting,
            f"SLURM job {os.environ['SLURM_JOB_ID']} was given GPU(s) {given} and this process sees none "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r})",
            "run the command inside the job (srun, or the batch script itself) without overriding "
            "CUDA_VISIBLE_DEVICES, or set runtime.device=cpu",
        )
    if setting == "cuda" and not gpus:
        hidden = "CUDA_VISIBLE_DEVICES" in os.environ and nvidia_present()
        raise _no_device(
            setting, "CUDA_VISIBLE_DEVICES hides every GPU" if hidden else "this machine has no visible NVIDIA GPU"
        )
    before = os.environ.get("CUDA_VISIBLE_DEVICES")
    if gpus and _held is None:
        _held = claim_gpu(gpus, slots=runs_per_gpu)
        os.environ["CUDA_VISIBLE_DEVICES"] = _held.device
    import torch

    if gpus and torch.cuda.is_available():
        return torch.device("cuda", 0), f"cuda: {torch.cuda.get_device_name(0)}"
    if _held is not None:  # no GPU after all: give the slot back, and the GPUs this process was given
        _held.release()
        _held = None
        if before is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = before
    # NVIDIA hardware torch cannot use: stop. A scheduler's GPU count alone is not hardware (a
    # count-only gres, a CPU node of a mixed partition): there the CPU is all there is.
    if gpus and nvidia_present():
        raise _unusable(setting, gpus)
    if setting == "cuda":
        raise _no_device(
            setting,
            f"torch sees no CUDA device ({diagnosis()}; CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')})",
            "set runtime.device=auto or cpu, or install a CUDA build of torch",
        )
    if setting in ("auto", "mps") and _mps_available():
        return torch.device("mps"), f"mps: {platform.machine()} (Apple GPU)"
    if setting == "mps":
        raise _no_device(setting, "torch sees no Apple MPS device (torch.backends.mps.is_available() is false)")
    from cnnvit.files import cpu_name

    return torch.device("cpu"), cpu_name()


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
    """On CUDA: TF32 tensor cores for fp32 matmuls and convolutions (autocast leaves some layers
    in fp32, so bf16 and fp16 runs use them too), and cuDNN's autotuner (every batch but an
    epoch's last has one shape, so its one-off search pays back within the first epoch)."""
    import torch

    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
