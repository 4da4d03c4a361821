"""Snakemake and DVC in one project: each refuses, in one line, while the other holds it, and
neither deletes a good output first; a Snakemake run uses the config it validated at its start."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import ENV, make_cifar_python, make_project, md5, sh, tiny_params, write_yaml

from cnnvit import progress

pytestmark = pytest.mark.slow  # the workflow tests: minutes; CI runs them, `-m 'not slow'` skips them


def holding(project: Path, code: str) -> subprocess.Popen:
    """A process that takes a lock (``code``) in ``project`` and keeps it until killed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", f"{code}\nprint('held', flush=True)\nimport time\ntime.sleep(600)"],
        cwd=project,
        env=ENV,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


@pytest.fixture
def project(tmp_path) -> Path:
    archive = make_cifar_python(tmp_path / "c.tar.gz")
    params = tiny_params(
        str(archive), md5(archive), epochs=1, models=["vit"], recipes=["paper", "modern"], seeds=[0, 1]
    )
    return make_project(tmp_path / "project", params)


def test_dvc_refuses_while_snakemake_holds_the_project_and_deletes_nothing(project):
    sh("dvc repro prepare", project)  # download and prepare: what a refused repro must not delete
    prepared = sorted(p.name for p in (project / "data/prepared").iterdir())
    cfg = yaml.safe_load((project / "params.yaml").read_text())
    cfg["data"]["val_seed"] = 1  # prepare (and everything after it) is now stale
    write_yaml(project / "params.yaml", cfg)
    snakemake = holding(project, "from cnnvit.dag.tool_lock import hold_for_snakemake\nhold_for_snakemake()")
    try:
        proc = sh("dvc repro", project, check=False)
    finally:
        snakemake.kill()
        snakemake.wait()
    assert proc.returncode != 0
    ours = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert len(ours) == 1 and "snakemake is running in this project" in ours[0], proc.stderr
    assert sorted(p.name for p in (project / "data/prepared").iterdir()) == prepared  # persist: nothing deleted
    # the verified archive survives an unreachable data.url: download keeps it, as `cnnvit download` does
    cfg["data"]["url"] = "http://127.0.0.1:9/unreachable.tar.gz"
    write_yaml(project / "params.yaml", cfg)
    before = (project / "data/raw/cifar10.tar.gz").read_bytes()
    proc = sh("dvc repro -s download", project, check=False)
    assert proc.returncode == 0 and "already present and verified" in proc.stdout + proc.stderr
    assert (project / "data/raw/cifar10.tar.gz").read_bytes() == before


def test_snakemake_refuses_while_dvc_holds_the_project(project):
    dvc = holding(project, "import zc.lockfile\nlock = zc.lockfile.LockFile('.dvc/tmp/lock')")
    try:
        proc = sh("snakemake --cores 1", project, check=False)
    finally:
        dvc.kill()
        dvc.wait()
    assert proc.returncode != 0 and "error: dvc is running in this project" in proc.stderr, proc.stderr[-2000:]
    assert not (project / "results").exists()


def test_editing_params_during_a_snakemake_run_changes_nothing_for_it(project):
    """Issue 19.5: epochs 1 -> 2 fourteen seconds in: some runs trained 2 epochs, collect refused,
    and reverting the edit did not help. Every job reads the config validated at the start."""
    run = subprocess.Popen(
        ["snakemake", "--cores", "2"], cwd=project, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.time() + 300
    while not list((project / "results/runs").glob("*/summary.json")) and time.time() < deadline:
        time.sleep(0.5)
    cfg = yaml.safe_load((project / "params.yaml").read_text())
    cfg["presets"]["tiny"]["epochs"] = 2
    write_yaml(project / "params.yaml", cfg)
    out, _ = run.communicate(timeout=600)
    assert run.returncode == 0, out[-3000:]
    summaries = [yaml.safe_load(p.read_text()) for p in (project / "results/runs").glob("*/summary.json")]
    assert len(summaries) == 4 and {s["epochs"] for s in summaries} == {1}
    assert (project / "report/index.html").exists()
    cfg["presets"]["tiny"]["epochs"] = 1
    write_yaml(project / "params.yaml", cfg)
    assert "Nothing to be done" in sh("snakemake -n --cores 1", project).stdout


def test_snakemake_and_dvc_alternate_on_one_workspace(tmp_path):
    """Issue 28.5: after a Snakemake run, every `dvc repro` failed ("results/figures holds files this
    stage did not write (.snakemake_timestamp)"). Snakemake, DVC, Snakemake on one workspace: each
    tool takes over the other's outputs, both ways, and ends up to date. (A second round, DVC then
    Snakemake again, repeated the first and cost CI 23 s.)"""
    archive = make_cifar_python(tmp_path / "c.tar.gz")
    params = tiny_params(
        str(archive), md5(archive), epochs=1, models=["vit", "cnn_vit"], recipes=["paper"], seeds=[0]
    )  # two models, one claim: the tools' hand-over is the point
    project = make_project(tmp_path / "project", params)
    for step, tool in enumerate(["snakemake", "dvc", "snakemake"]):
        cmd = "snakemake --cores 2" if tool == "snakemake" else "dvc repro"
        proc = sh(cmd, project, check=False)
        assert proc.returncode == 0, f"step {step} ({cmd}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        assert (project / "report/index.html").exists()
    assert "Nothing to be done" in sh("snakemake -n --cores 1", project).stdout
    kept = (".gitignore", ".snakemake_timestamp", progress.FILE)  # progress.FILE: the forecast the runs' lines read
    leftovers = [p for p in (project / "results").rglob(".*") if p.name not in kept]
    assert not leftovers, leftovers  # no temporary folder of either tool's stages left behind
