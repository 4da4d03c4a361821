"""Snakemake and DVC run the same DAG end to end on fixture data, in temporary project copies."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, make_cifar_python, md5, tiny_params, write_yaml

from cnnvit.config import stage_param_keys

BIN = str(Path(sys.executable).parent)
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PYTHONUNBUFFERED": "1"}
E2E_MODELS = ["resnet50", "vit", "cnn_vit", "convnext"]


def sh(cmd: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, shell=True, cwd=cwd, env=ENV, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc


def make_project(dest: Path, archive: Path, epochs: int = 1) -> Path:
    dest.mkdir(parents=True)
    for name in ["Snakefile", "dvc.yaml", "pyproject.toml"]:
        (dest / name).write_bytes((ROOT / name).read_bytes())
    for name in ["workflow", "report", "src"]:
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "index.html"))
    (dest / "profiles").symlink_to("workflow/profiles")  # where Snakemake looks, beside the Snakefile
    params = tiny_params(str(archive), md5(archive), epochs=epochs, models=E2E_MODELS, recipes=["paper"])
    write_yaml(dest / "params.yaml", params)
    sh("git init -q && git add -A && git -c user.email=t@t -c user.name=t commit -qm init", dest)
    return dest


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    return make_cifar_python(tmp_path_factory.mktemp("data") / "cifar-10-python.tar.gz")


@pytest.fixture(scope="module")
def sm_project(tmp_path_factory, archive) -> Path:
    project = make_project(tmp_path_factory.mktemp("sm") / "project", archive)
    sh("snakemake --cores 2", project)
    return project


@pytest.fixture(scope="module")
def dvc_project(tmp_path_factory, archive) -> Path:
    project = make_project(tmp_path_factory.mktemp("dvc") / "project", archive)
    sh("dvc init -q && dvc repro", project)
    return project


def assert_report(project: Path) -> None:
    html = (project / "report/index.html").read_text()
    for needle in ["Table 1: ViT", "Table 2: ResNet50", "Table 3: CNN+ViT", "Extra table: ConvNeXt",
                   "Table 4: training time", "Efficiency", "Provenance", "TINY PROFILE"]:  # fmt: skip
        assert needle in html, needle
    assert html.count('src="data:image/png;base64,') == 2 + len(E2E_MODELS)
    assert re.search(r"(Reproduced|Not reproduced|Inconclusive)</span>\s+under", html)


def test_snakemake_end_to_end(sm_project):
    assert_report(sm_project)
    assert (sm_project / "results/tables/epochs.csv").exists()
    assert sh("snakemake -n --cores 2", sm_project).stdout.count("Nothing to be done") == 1


def test_dvc_end_to_end(dvc_project):
    assert_report(dvc_project)
    metrics = sh("dvc metrics show --json", dvc_project).stdout
    assert "best_test_acc" in metrics
    assert "up to date" in sh("dvc status", dvc_project).stdout


def edit_params(project: Path, dotted: str, value) -> None:
    cfg = yaml.safe_load((project / "params.yaml").read_text())
    node = cfg
    *parents, last = dotted.split(".")
    for part in parents:
        node = node[part]
    node[last] = value
    write_yaml(project / "params.yaml", cfg)


def test_params_change_reruns_only_that_model(sm_project, dvc_project):
    for project in (sm_project, dvc_project):
        edit_params(project, "profiles.tiny.models.vit.depth", 2)
    dry = sh("snakemake -n --cores 2", sm_project).stdout
    trained = set(re.findall(r"wildcards: model=(\w+), recipe=(\w+), seed=(\d+)", dry))
    assert trained == {("vit", "paper", "0")}, dry
    stats = re.findall(r"^(\w+)\s+(\d+)$", dry, flags=re.M)
    expected = {
        "train": "1",
        "collect": "1",
        "figures": "1",
        "report": "1",
        "all": "1",
        "total": "5",
    }
    assert dict(stats) == expected, dry
    status = yaml.safe_load(sh("dvc status --json", dvc_project).stdout)
    # report is downstream anyway, and it reads every param: it prints them as provenance.
    assert set(status) == {"train@vit-paper-0", "report"}, status
    for project in (sm_project, dvc_project):
        edit_params(project, "profiles.tiny.models.vit.depth", 1)


def test_workflow_profile_is_picked_up(sm_project):
    proc = sh("snakemake -n --cores 1", sm_project)
    assert "Using workflow specific profile profiles/default" in proc.stdout + proc.stderr
    profile = yaml.safe_load((sm_project / "profiles/default/config.yaml").read_text())
    assert profile["resources"] == ["gpu=1"] and profile["rerun-incomplete"] is True


def test_snakemake_lint_is_clean(sm_project):
    proc = sh("snakemake --lint", sm_project, check=False)
    assert proc.returncode == 0 and "Lints for" not in proc.stdout + proc.stderr, proc.stdout


# ----------------------------------------------------------------------------- DAG agreement


def normalise(cmd: str) -> str:
    """Drop what only Snakemake adds: log redirection, --threads and --set pass-through."""
    cmd = re.sub(r"\s*>\s*\S+\s+2>&1\s*$", "", cmd.strip())
    words = shlex.split(cmd)
    out, skip = [], False
    for w in words:
        if skip:
            skip = False
        elif w in ("--threads", "--set"):
            skip = True
        else:
            out.append(w)
    return " ".join(out)


def snakemake_jobs(project: Path) -> dict[str, dict]:
    """cmd -> {outs, deps} from `snakemake -n -p --forceall` (nothing is run)."""
    text = sh("snakemake -n -p --forceall --cores 1", project).stdout
    jobs: dict[str, dict] = {}
    for block in re.split(r"\n\[[^\]]+\]\n", text)[1:]:
        fields = dict(re.findall(r"^    (\w+): (.*)$", block, flags=re.M))
        shell = re.search(r"^Shell command: (.*)$", block, flags=re.M)
        if shell is None or shell.group(1) == "None":  # the `all` target has no command
            continue
        split = lambda s: {f.strip().rstrip("/") for f in s.split(",") if f.strip()}  # noqa: E731
        jobs[normalise(shell.group(1))] = {
            "outs": split(fields.get("output", "")),
            "deps": split(fields.get("input", "")),
        }
    return jobs


def dvc_stages(project: Path) -> dict[str, dict]:
    from dvc.repo import Repo

    stages = {}
    with Repo(str(project)) as repo:
        for stage in repo.index.stages:
            rel = lambda p: os.path.relpath(p, project)  # noqa: E731
            deps = {rel(d.fs_path) for d in stage.deps if not d.def_path.endswith("params.yaml")}
            params = [k for d in stage.deps if d.def_path.endswith("params.yaml") for k in d.params]
            stages[normalise(stage.cmd)] = {
                "name": stage.name,
                "outs": {rel(o.fs_path) for o in stage.outs},
                "deps": deps,
                "params": params,
            }
    return stages


def test_snakemake_and_dvc_describe_the_same_dag(tmp_path, archive):
    project = make_project(tmp_path / "project", archive)
    sh("dvc init -q", project)
    sm, dv = snakemake_jobs(project), dvc_stages(project)
    assert set(sm) == set(dv), set(sm) ^ set(dv)
    for cmd, job in sm.items():
        stage = dv[cmd]
        assert job["outs"] == stage["outs"], (cmd, job["outs"], stage["outs"])
        inside = {d for d in job["deps"] if not os.path.isabs(d)}  # data.url may live outside
        dir_deps = {d for d in stage["deps"] if not any(d == i for i in inside)}
        covered = {i for i in inside for d in dir_deps if i.startswith(d + "/")}
        assert inside - covered == stage["deps"] - dir_deps, (cmd, inside, stage["deps"])
        assert all(any(i.startswith(d + "/") for i in inside) for d in dir_deps), cmd


def test_dvc_stages_list_exactly_the_params_each_stage_reads(tmp_path, archive):
    project = make_project(tmp_path / "project", archive)
    sh("dvc init -q", project)
    for stage in dvc_stages(project).values():
        name = stage["name"]
        base, _, item = name.partition("@")
        kw = {}
        if item:
            model, recipe, _ = item.rsplit("-", 2)
            kw = {"model": model, "recipe": recipe}
        expected = stage_param_keys(base, profile="tiny", **kw)
        assert sorted(stage["params"]) == sorted(expected), name


def test_data_stages_alone_in_each_tool(tmp_path, archive):
    """The issue's two invocations: Snakemake targeting the prepared files, `dvc repro prepare`."""
    sm = make_project(tmp_path / "sm", archive)
    sh("snakemake --cores 1 data/prepared/train.npz data/prepared/test.npz data/prepared/stats.json", sm)
    dv = make_project(tmp_path / "dvc", archive)
    sh("dvc init -q && dvc repro prepare", dv)
    for project in (sm, dv):
        assert (project / "data/prepared/stats.json").exists()
        assert not (project / "results").exists()  # nothing downstream ran


def test_snakemake_config_overrides_reach_the_commands_that_read_them(tmp_path, archive):
    project = make_project(tmp_path / "project", archive)
    dry = sh("snakemake -n -p --forceall --cores 1 --config data='{format: imagefolder}'", project).stdout
    commands = re.findall(r"^Shell command: (.*)$", dry, flags=re.M)
    reads_format = [c for c in commands if c.startswith(("cnnvit download", "cnnvit prepare"))]
    assert len(reads_format) == 2
    assert all("--set 'data.format=\"imagefolder\"'" in c for c in reads_format), reads_format
    assert not any("--set" in c for c in commands if c.startswith("cnnvit train")), commands
    quick = sh("snakemake -n -p --forceall --cores 1 --config profile=quick", project).stdout
    trains = [c for c in re.findall(r"^Shell command: (.*)$", quick, flags=re.M) if "train" in c]
    assert trains and all("--set 'profile=\"quick\"'" in c for c in trains)
