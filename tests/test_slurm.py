"""A real single-node SLURM (Debian's slurm-wlm and munge, brought up by tests/slurm/bringup.sh):
the fixture project through the SLURM workflow profile, every job through sbatch, two training
jobs at once; and a job that SLURM kills at its time limit resumes when the workflow runs again.

Without root or SLURM the tests skip, saying why; under CI=true they fail instead."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
import yaml
from conftest import ENV, ROOT, make_cifar_python, make_project, md5, sh, tiny_params

BRINGUP = ROOT / "tests/slurm/bringup.sh"
JOBCOMP = Path(os.environ.get("SLURM_JOBCOMP", "/var/log/slurm/jobcomp.log"))
COMMAND = "snakemake --workflow-profile workflow/profiles/slurm --slurm-keep-successful-logs"

pytestmark = pytest.mark.slow  # the workflow tests: minutes; CI runs them, `-m 'not slow'` skips them


def unavailable(reason: str):
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"SLURM is required in CI but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def slurm():
    if os.geteuid() != 0:
        unavailable("bringing up SLURM needs root")
    if not shutil.which("slurmctld") and not shutil.which("apt-get"):
        unavailable("slurm-wlm is not installed and apt-get is not available to install it")
    proc = subprocess.run(["bash", str(BRINGUP)], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        said = (proc.stderr.strip() or proc.stdout.strip())[-500:] or "no output"
        unavailable(f"tests/slurm/bringup.sh exited {proc.returncode}: {said}")
    return JOBCOMP


def submitted(output: str) -> dict[int, str]:
    """SLURM job id -> rule, from Snakemake's "submitted with SLURM jobid N (log: .../rule_R/...)"."""
    return {int(j): rule for j, rule in re.findall(r"submitted with SLURM jobid (\d+) \(log: \S*/rule_(\w+)/", output)}


def records(jobcomp: Path) -> dict[int, dict]:
    """SLURM's own record of each finished job (jobcomp/filetxt)."""
    out = {}
    for line in jobcomp.read_text().splitlines():
        fields = dict(re.findall(r"(\w+)=(\S*)", line))
        if "JobId" in fields:
            out[int(fields["JobId"])] = fields
    return out


def when(field: str) -> datetime:
    return datetime.fromisoformat(field)


# Snakemake's SLURM executor waits 40 s before its first status check and then polls every 10 s:
# right for a cluster, slow for a test of seconds-long jobs.
FAST = "--slurm-init-seconds-before-status-checks 1 --seconds-between-status-checks 1"


@pytest.fixture
def project(tmp_path):
    archive = make_cifar_python(tmp_path / "c.tar.gz", per_batch=200)  # 1,000 images: fewer, longer epochs
    params = tiny_params(
        str(archive), md5(archive), epochs=2, models=["vit"], recipes=["paper"], seeds=[0, 1], per_batch=200
    )
    params["runtime"]["group_seeds"] = False  # a job per seed: two trainings side by side, each on its GPU
    # a checkpoint every 5 s of training: the resume starts near the kill, not after epoch 1 (its
    # first checkpoint at the default 300 s), which retrained all of it again
    params["runtime"]["checkpoint_every_s"] = 5
    return make_project(tmp_path / "project", params)


def seconds_per_epoch(project: Path, tmp_path: Path) -> float:
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["presets"]["tiny"]["epochs"] = 12
    calib = tmp_path / "calib.yaml"
    calib.write_text(json.dumps(raw))
    raw_file = tmp_path / "raw.tar.gz"  # outside the project: the workflow's own download must still run
    sh(
        f"cnnvit download --params {calib} --out {raw_file} && cnnvit prepare --params {calib} --raw {raw_file} "
        f"--out-dir {tmp_path}/prep",
        project,
    )
    sh(
        f"cnnvit train --params {calib} --model vit --recipe paper --data-dir {tmp_path}/prep "
        f"--runs-dir {tmp_path}/calib --ckpt-dir {tmp_path}/ck",
        project,
    )
    return json.loads((tmp_path / "calib/vit-paper-s0/summary.json").read_text())["wall_seconds"] / 12


def run_until_killed(cmd: str, project: Path, jobcomp: Path, kills: int) -> str:
    """Run the workflow until SLURM has killed ``kills`` of its jobs for their time limit, then
    interrupt it as a user would (Snakemake's status polling backs off to minutes on long jobs)."""
    log = project / "first-run.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(f"exec {cmd}", shell=True, cwd=project, env=ENV, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 420
        while proc.poll() is None and time.monotonic() < deadline:
            mine = [r for r in records(jobcomp).values() if r.get("WorkDir") == str(project)]
            if sum(r["JobState"] == "TIMEOUT" for r in mine) >= kills:
                proc.send_signal(signal.SIGINT)
                break
            time.sleep(1)
        proc.wait(timeout=120)
    return log.read_text()


def test_the_slurm_profile_runs_the_pipeline_and_resumes_after_a_time_limit(slurm, project, tmp_path):
    """Two trainings (two seeds), sized from timed epochs to need ~100 s alone (with a job's start,
    past 90 s side by side), run side by side under a 1-minute limit: SLURM kills both (its limits
    are whole minutes, enforced on a 30 s sweep: the kill comes 60-90 s in), and the same command
    then resumes them from their checkpoints (up to `train`: the later stages are one-core jobs
    like download and prepare, and test_e2e runs them, so CI's minutes go elsewhere). The first
    pass uses runtime.device auto, so each training asks SLURM for a GPU; the second pass uses cpu,
    a runtime-only setting (the checkpoints stay valid), so none is asked for."""
    epochs = math.ceil(100 / seconds_per_epoch(project, tmp_path))
    config = f"--config 'presets={{tiny: {{epochs: {epochs}}}}}'"
    output = run_until_killed(f"{COMMAND} {FAST} {config} --set-resources train:runtime=1", project, slurm, kills=2)
    jobs, done = submitted(output), records(slurm)
    # cost and corrupt (seconds each) finish long before the trainings are killed
    assert sorted(jobs.values()) == ["corrupt", "cost", "download", "prepare", "train", "train"], output[-3000:]
    trains = [done[j] for j, rule in jobs.items() if rule == "train"]
    assert [r["JobState"] for r in trains] == ["TIMEOUT", "TIMEOUT"], trains
    assert all(done[j]["JobState"] == "COMPLETED" for j, rule in jobs.items() if rule != "train")
    overlap = min(when(r["EndTime"]) for r in trains) - max(when(r["StartTime"]) for r in trains)
    assert overlap.total_seconds() > 0, trains  # the two trainings ran at the same time
    for seed in (0, 1):
        log = (project / f"logs/train/vit-paper-s{seed}.log").read_text()
        assert "CUDA_VISIBLE_DEVICES=" in log and "on cpu" in log  # a GPU was allocated; torch had none here
        assert (project / f"results/checkpoints/vit-paper-s{seed}.pt").exists()

    until = "--until train"
    second = sh(f"{COMMAND} {FAST} {until} {config} 'runtime={{device: cpu}}' 2>&1", project)  # one --config, two items
    jobs = submitted(second.stdout)
    want = ["train", "train"]
    assert sorted(jobs.values()) == want, jobs
    done = records(slurm)
    assert all(done[j]["JobState"] == "COMPLETED" for j in jobs), {j: done[j]["JobState"] for j in jobs}
    for seed in (0, 1):
        log = (project / f"logs/train/vit-paper-s{seed}.log").read_text()
        resumed = re.search(r"resuming after epoch (\d+)", log)
        assert resumed and 0 < int(resumed.group(1)) < epochs, log[-1500:]
        assert "CUDA_VISIBLE_DEVICES" not in log
        assert (project / f"results/runs/vit-paper-s{seed}/summary.json").exists()  # finished


def test_without_slurm_on_path_the_profile_says_so(project):
    bin_dir = project.parent / "bin"
    bin_dir.mkdir()
    for tool in ("git", "sh", "bash", "env", "uname", "which", "cat"):
        if shutil.which(tool):
            (bin_dir / tool).symlink_to(shutil.which(tool))
    env = {**ENV, "PATH": f"{Path(sys.executable).parent}:{bin_dir}"}
    proc = subprocess.run(COMMAND, shell=True, cwd=project, env=env, capture_output=True, text=True)
    assert proc.returncode != 0
    errors = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.startswith("error:")]
    want = (
        "error: this profile submits jobs to SLURM, but sbatch is not on PATH: run it on a SLURM login node "
        "(or drop --workflow-profile workflow/profiles/slurm)"
    )
    assert errors == [want], proc.stdout[-2000:]
