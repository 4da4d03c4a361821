"""One description of the pipeline: the Snakemake rules and dvc.yaml are generated from the stages'
declarations, both are current, and both tools' DAGs (Snakemake's from its API, DVC's from its
index) are the jobs cnnvit.dag.stages lists: each job's command, outputs, inputs (its code among
them) and params."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ENV, ROOT, claims_for, make_cifar_python, make_project, md5, sh, tiny_params

from cnnvit.code_identity import training_modules
from cnnvit.config.load import load_params, params_from_dict
from cnnvit.dag import code
from cnnvit.dag import dvc as dvcgen
from cnnvit.dag import rules as rulegen
from cnnvit.dag import snakemake as smk
from cnnvit.dag import stages as pipeline

# Snakemake's own DAG, the way `snakemake --d3dag` builds it, as JSON (run inside the project).
SNAKEMAKE_JOBS = """
import json, sys
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.settings.types import ConfigSettings, DAGSettings, OutputSettings, Quietness, ResourceSettings
with SnakemakeApi(OutputSettings(quiet={Quietness.ALL})) as api:
    wf = api.workflow(resource_settings=ResourceSettings(cores=2), snakefile=Path("Snakefile"),
                      config_settings=ConfigSettings(config=json.loads(sys.argv[1])))
    dag = wf.dag(dag_settings=DAGSettings(forceall=True))
    w = dag.workflow_api._workflow
    w._prepare_dag(forceall=True, ignore_incomplete=True, lock_warn_only=True)
    w._build_dag()
    print(json.dumps([{"rule": j.rule.name, "cmd": j.shellcmd, "inputs": list(j.input), "outputs": list(j.output),
                       "params": sorted(j.params.get("values", {})), "resources": dict(j.resources)}
                      for j in w.dag.jobs if j.rule.name != "all"]))
"""


def snakemake_jobs(project: Path, config: dict | None = None) -> list[dict]:
    out = subprocess.run(
        [sys.executable, "-c", SNAKEMAKE_JOBS, json.dumps(config or {})],
        cwd=project,
        env=ENV,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def dvc_stages(project: Path) -> list[dict]:
    from dvc.repo import Repo

    with Repo(str(project)) as repo:
        rel = lambda p: os.path.relpath(p, project)  # noqa: E731
        return [
            {
                "name": s.name,
                "cmd": s.cmd,
                "deps": {rel(d.fs_path) for d in s.deps if not d.def_path.endswith(".yaml")},
                "outs": {rel(o.fs_path) for o in s.outs},
                "params": sorted(k for d in s.deps if d.def_path.endswith("params.yaml") for k in d.params),
            }
            for s in repo.index.stages
        ]


@pytest.mark.slow
def test_dvc_yaml_is_what_the_pipeline_generates():
    assert (ROOT / "dvc.yaml").read_text() == dvcgen.dvc_yaml(load_params(ROOT / "params.yaml"))
    proc = sh("cnnvit dvc-yaml --check", ROOT)
    assert "up to date" in proc.stdout


def test_the_snakemake_rules_are_what_the_declarations_generate_and_snakefmt_keeps_them():
    for path, text in rulegen.generated().items():
        assert (ROOT / path).read_text() == text, f"{path}: run `uv run cnnvit snakemake-rules`"
    assert "up to date" in sh("cnnvit snakemake-rules --check", ROOT).stdout
    fmt = sh("snakefmt --check Snakefile workflow/rules", ROOT, check=False)
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


def test_the_rules_name_their_files_and_chain_on_the_rules_that_make_them():
    text = (ROOT / "workflow/rules/pipeline.smk").read_text()
    for line in (
        '"data/raw/cifar10.tar.gz",',  # a fixed stage's output, written out
        "rules.download.output,",  # prepare reads what download writes
        "rules.train.output.weights,",  # evaluate reads its batch's weights, nothing else of train's
        "expand(rules.evaluate.output, batch=BATCHES),",  # collect reads every run's evaluation
        'weights=each_run("results/runs/{run}/weights.safetensors"),',
        '"logs/train/{batch}.log",',
        "mem_mb=PARAMS.active.mem_mb,",
        '"recipes.{recipe}",',  # the params a training batch reads
        'fraction=["runs.fraction_budget"],',
        '" --threads {threads} > {log} 2>&1"',
    ):
        assert line in text, line
    assert "S.inputs(" not in text and "S.outputs(" not in text


def test_training_depends_on_exactly_the_code_that_sets_a_runs_numbers():
    params = load_params(ROOT / "params.yaml")
    vit = next(b for b in pipeline.batches(params) if b.runs[0].model == "vit")
    assert set(pipeline.code_deps("train", params, vit)) == set(code.files_of(training_modules("cnnvit.models.vit")))
    every = set(pipeline.code_deps("train"))  # DVC's one stage over every run: every arch
    assert {"src/cnnvit/models/resnet.py", "src/cnnvit/models/vit.py", "src/cnnvit/models/convnext.py"} <= every
    evaluate = set(pipeline.code_deps("evaluate", params, vit))
    assert "src/cnnvit/models/vit.py" in evaluate and "src/cnnvit/measure/attention.py" in evaluate
    assert "src/cnnvit/models/resnet.py" not in evaluate  # a ViT's evaluation builds no ResNet


def test_an_evaluation_records_the_code_the_dag_reruns_it_for():
    """evaluate keeps a run's evaluation while its record's code digests match: the modules it
    records must be those the DAG re-runs evaluate for, less those that cannot move its numbers."""
    from cnnvit.stages.evaluate import EVALUATION_CODE

    # the corrupted set's maker (its sha256 is recorded), the paper's tables, the file names, the
    # intervals (imported beside the per-image writer, not by it), and packages whose __init__ is a docstring
    # and the params values the corrupted set records it was made with
    outside = {"cnnvit.measure.corruptions", "cnnvit.paper", "cnnvit.runfiles", "cnnvit.stats.intervals",
               "cnnvit.config.values"}  # fmt: skip
    outside |= {"cnnvit", "cnnvit.config", "cnnvit.measure", "cnnvit.stats", "cnnvit.training"}
    stage = pipeline.STAGES["evaluate"]
    every = code.result_modules(stage.module)
    archs = set(code.arch_modules().values())
    for module in archs:
        rerun = (every - archs) | {module}
        assert rerun - {*training_modules(module), *EVALUATION_CODE} == outside, module


def test_no_stage_depends_on_the_infrastructure_and_every_dependency_exists():
    never = {"errors.py", "arguments.py", "files.py", "tables.py", "paths.py", "batch.py", "plan.py", "cli.py"}
    never |= {"dag/code.py", "dag/stages.py", "training/device.py", "training/checkpoint.py", "config/load.py"}
    for stage in pipeline.STAGES:
        deps = set(pipeline.code_deps(stage))
        assert not {f"src/cnnvit/{f}" for f in never} & deps, stage
        assert all((ROOT / f).is_file() for f in deps), stage
    figures = pipeline.code_deps("figures")
    assert "src/cnnvit/paper/epochs.csv" in figures and "src/cnnvit/models/vit.py" not in figures
    assert "src/cnnvit/stages/report.py" in pipeline.code_deps("report")
    assert "src/cnnvit/config/types.py" in pipeline.code_deps("collect")  # a run's identity, the fraction budget
    # every infrastructure module named exists (a renamed one would silently count again)
    assert all(code.module_file(m) for m in code.INFRASTRUCTURE), [m for m in code.INFRASTRUCTURE]


def test_every_snakemake_job_reads_the_config_snakemake_validated(tmp_path, monkeypatch):
    """Issue 19.5: editing params.yaml during a run reached the jobs still to come. Jobs read a
    snapshot written at Snakemake's start, which loads back to exactly the validated params."""
    monkeypatch.chdir(tmp_path)
    params = load_params(ROOT / "params.yaml", ["preset=quick", "recipes.paper.lr=1e-4"])
    path = smk.write_snapshot(params)
    assert str(path) == smk.PARAMS_SNAPSHOT and load_params(path) == params
    shells = (ROOT / "workflow/rules/pipeline.smk").read_text().split("shell:")[1:]
    assert len(shells) == len(pipeline.STAGES)
    assert all(f"--params {smk.PARAMS_SNAPSHOT}" in s for s in shells)


def covered(dep: str, inputs: set[str]) -> bool:
    return dep in inputs or any(i.startswith(dep.rstrip("/") + "/") for i in inputs)


@pytest.fixture(scope="module")
def fraction_project(tmp_path_factory):
    d = tmp_path_factory.mktemp("dag")
    archive = make_cifar_python(d / "c.tar.gz")
    params = tiny_params(
        str(archive), md5(archive), models=["vit", "resnet50"], recipes=["paper", "modern"], seeds=[0, 1]
    )
    params["runs"]["train_fractions"] = [0.2, 1.0]
    return make_project(d / "project", params), params_from_dict(params)


def check_snakemake_jobs(sm: list[dict], expected: dict) -> None:
    assert len(sm) == len(expected)
    for job in sm:
        words = shlex.split(job["cmd"])
        matches = [c for c in expected if words[: len(shlex.split(c))] == shlex.split(c)]
        assert len(matches) == 1, job["cmd"]
        want = expected[matches[0]]
        extra = words[len(shlex.split(matches[0])) :]
        assert extra[:2] == ["--params", smk.PARAMS_SNAPSHOT], job["cmd"]  # the config validated at the start
        extra = extra[2:]
        while extra and extra[0] == "--threads":
            extra = extra[2:]
        assert extra[0] == ">" and extra[2:] == ["2>&1"], job["cmd"]  # only the log redirect is left
        assert set(job["outputs"]) == set(want.outs), job["rule"]
        assert all(covered(d, set(job["inputs"])) for d in want.deps), (job["rule"], want.deps, job["inputs"])
        assert job["params"] == sorted(want.params), job["rule"]


@pytest.mark.slow
def test_snakemake_and_dvc_run_exactly_the_jobs_the_pipeline_describes(fraction_project):
    project, params = fraction_project
    expected = {j.cmd: j for j in pipeline.jobs(params, "snakemake")}
    trains = [j for j in expected.values() if j.stage == "train"]
    assert len(trains) == 2 * 2 * 2  # models x recipes x fractions: one job trains both seeds
    assert sum(len(j.outs) for j in trains) == 2 * 2 * 2 * 2 * len(pipeline.STAGES["train"].outs)
    assert any("--fraction 0.2" in c and "--model vit --recipe paper --seeds 0 1" in c for c in expected)
    check_snakemake_jobs(snakemake_jobs(project), expected)

    # DVC runs one stage at a time: each per-run stage is one stage over every run, a worker per slot
    expected = {j.cmd: j for j in pipeline.jobs(params, "dvc")}
    dvc = {s["cmd"]: s for s in dvc_stages(project)}
    assert set(dvc) == set(expected), set(dvc) ^ set(expected)
    assert len(dvc) == len(pipeline.STAGES) and any("train --all-runs --workers auto" in c for c in dvc)
    for cmd, stage in dvc.items():
        job = expected[cmd]
        assert stage["outs"] == set(job.outs), stage["name"]  # metrics are outputs too
        assert stage["deps"] == set(job.deps), (stage["name"], stage["deps"] ^ set(job.deps))
        assert stage["params"] == sorted(job.params), stage["name"]
    assert dvc[pipeline.command("train")]["outs"] == {"results/runs"}
    assert "runs" in dvc[pipeline.command("train")]["params"]  # the runs it trains are params it reads


@pytest.mark.slow
def test_one_snakemake_job_per_run_when_seeds_are_not_grouped(fraction_project):
    project, params = fraction_project
    raw = json.loads(json.dumps(params.raw))
    raw["runtime"]["group_seeds"] = False
    expected = {j.cmd: j for j in pipeline.jobs(params_from_dict(raw), "snakemake")}
    assert len([j for j in expected.values() if j.stage == "train"]) == 2 * 2 * 2 * 2
    check_snakemake_jobs(snakemake_jobs(project, {"runtime": {"group_seeds": False}}), expected)


@pytest.mark.slow
def test_gpus_are_requested_only_where_a_job_can_use_one(fraction_project):
    project, _ = fraction_project
    for device, gpu in (("cpu", 0), ("auto", 0), ("cuda", 1)):  # auto, here: no NVIDIA GPU on this machine
        jobs = snakemake_jobs(project, {"runtime": {"device": device}})
        models = [j for j in jobs if j["rule"] in ("train", "evaluate", "cost")]  # the jobs that run a model
        assert len(models) == 17 and all(j["resources"].get("gpu", 0) == gpu for j in models), device
        assert all(j["resources"].get("runtime", 0) > 0 for j in jobs if j["rule"] == "train")
        assert all(j["resources"].get("gpu", 0) == 0 for j in jobs if j not in models)


@pytest.mark.slow
def test_dvc_yaml_needs_no_regeneration_for_new_runs_and_says_when_it_is_stale(fraction_project, tmp_path):
    _, params = fraction_project
    raw = json.loads(json.dumps(params.raw))
    raw["runs"].update(train_fractions=[0.2, 0.5, 1.0], seeds=[0, 1, 2], models=["vit"])
    raw["analysis"]["claims"] = claims_for(["vit"])  # none: every claim needs a second model
    assert dvcgen.dvc_yaml(params) == dvcgen.dvc_yaml(params_from_dict(raw))  # the stages read runs.* themselves
    (tmp_path / "params.yaml").write_text(json.dumps(raw))
    (tmp_path / "dvc.yaml").write_text(dvcgen.dvc_yaml(params).replace("--workers auto", "--workers 1"))
    proc = sh(
        f"cnnvit dvc-yaml --check --params {tmp_path / 'params.yaml'} --out {tmp_path / 'dvc.yaml'}",
        tmp_path,
        check=False,
    )
    assert proc.returncode == 1 and "run `uv run cnnvit dvc-yaml`" in proc.stderr
