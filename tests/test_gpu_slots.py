"""Claiming one GPU (slot) per job on a machine or a SLURM allocation with several, and the lock
folder every user shares: concurrent and killed claimers, CUDA_VISIBLE_DEVICES, several runs a GPU,
each SLURM job its own locks. Tested on a CPU, with pretend device ids and a stub torch.cuda."""

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


# ----------------------------------------------------------------------------- under SLURM


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


# ----------------------------------------------------------------------------- the lock folder


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
