"""Snakemake and DVC run the whole pipeline on fixture data, in temporary copies of the project;
a change to params or code re-runs exactly what it affects; overrides reach the commands."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import MODELS, TINY_MODELS, make_cifar_python, make_project, md5, sh, tiny_params, write_yaml

from cnnvit.stats.claims import CLAIM_COLUMNS

pytestmark = pytest.mark.slow  # the workflow tests: minutes; CI runs them, `-m 'not slow'` skips them


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    return make_cifar_python(tmp_path_factory.mktemp("data") / "cifar-10-python.tar.gz")


def params_for(archive: Path) -> dict:
    """Every model on the whole training set and on a fifth of it (the data-size axis)."""
    params = tiny_params(str(archive), md5(archive), epochs=1, models=MODELS, recipes=["paper"], seeds=[0])
    params["runs"]["train_fractions"] = [0.2, 1.0]
    return params


@pytest.fixture(scope="module")
def sm_project(tmp_path_factory, archive) -> Path:
    project = make_project(tmp_path_factory.mktemp("sm") / "project", params_for(archive))
    proc = sh("snakemake --cores 2", project)
    (project.parent / "snakemake.out").write_text(proc.stdout + proc.stderr)
    return project


@pytest.fixture(scope="module")
def dvc_project(tmp_path_factory, archive) -> Path:
    project = make_project(tmp_path_factory.mktemp("dvc") / "project", params_for(archive))
    sh("dvc repro", project)
    return project


def assert_report(project: Path) -> None:
    html = (project / "report/index.html").read_text()
    for needle in [
        "Table 1: ViT",
        "Table 2: ResNet50",
        "Table 3: CNN+ViT",
        "Extra table: ConvNeXt",
        "Table 4: training time",
        "What differs from the paper",
        "What a variant of a paper model changes",
        "Conclusions",
        "not meant to conclude",  # the tiny preset's banner
        "19 vs 10",  # Table 4's observation, told as an unequal-epoch comparison
        "How much data does each model need?",
        "Efficiency",
        "GMACs",
        "Provenance",
        "TINY PRESET",
        "35.71%",
        "79.21% (epoch 15)",
        "78.35%",
        "Colab",
        "not stated",
        "wall-clock",
    ]:
        assert needle in html, needle
    # curves and a confusion matrix per model, + Figure 6, the accuracy bars, data size, cost; robustness,
    # attention for the ViT and the hybrid, cost by input size
    assert html.count('src="data:image/png;base64,') == 2 * len(MODELS) + 4 + 4
    for needle in ("Robustness to corrupted inputs", "mCE", "Where attention looks", "What each model costs to run"):
        assert needle in html, needle
    for needle in ("epoch chosen on the validation split", "Graybill and Wang", "MDE", "98.3%",
                   "exploratory", "ECE", "§2.3"):  # fmt: skip
        assert needle in html, needle
    assert "Test accuracy at the selected epoch against training images" in html
    assert re.search(r"(Reproduced|Contradicted|Inconclusive)</span>", html)
    sizes = pd.read_csv(project / "results/tables/datasize.csv")
    images = {(r.model, r.recipe, r.fraction): r.train_images for r in sizes.itertuples()}
    assert all(images[(m, "paper", 0.2)] == 16 and images[(m, "paper", 1.0)] == 80 for m in MODELS), sizes
    claims = (project / "results/tables/claims.csv").read_text().splitlines()
    # the header is the contract (claim id, the two models, the interval that decides, its power);
    # one row per claim of the one recipe with full-set runs
    assert claims[0].split(",") == CLAIM_COLUMNS and claims[0].startswith("claim_id,claim,kind,a,b,recipe,")
    assert {"mde_pp", "ci_low_pp", "ci_high_pp", "level", "verdict"} <= set(CLAIM_COLUMNS) and len(claims) == 4


def test_snakemake_end_to_end(sm_project):
    assert_report(sm_project)
    out = (sm_project.parent / "snakemake.out").read_text()
    # the forecast comes before any job: 10 trainings in 10 jobs (one seed), with their evaluations
    assert "plan: preset tiny, 10 trainings" in out and "(20 snakemake jobs, 2 at once" in out, out[:3000]
    assert out.index("plan: preset tiny") < out.index("rule train")
    # the trainings start longest first, by the forecast the plan kept (issue 26: Snakemake's own
    # order left one long training alone at the end): all are ready at once, after prepare
    forecast = json.loads((sm_project / "results/runs/.progress.json").read_text())["runs_s"]
    started = re.findall(r"rule train:\n(?:.+\n)*?\s+wildcards: batch=(\S+)", out)
    seconds = [sum(s for run, s in forecast.items() if run.rsplit("-s", 1)[0] == b) for b in started]
    assert len(started) == 10 and len(set(seconds)) > 3 and seconds == sorted(seconds, reverse=True), (started, seconds)
    sh("snakemake --report results/snakemake-report.html", sm_project)  # Snakemake's own report
    html = (sm_project / "results/snakemake-report.html").read_text()
    assert all(f'"{c}"' in html for c in ("Tables", "Figures", "Report")) and "claims.csv" in html, html[:500]
    assert "Nothing to be done" in sh("snakemake -n --cores 2", sm_project).stdout
    assert "Using workflow specific profile profiles/default" in sh("snakemake -n --cores 1", sm_project).stderr


def test_dvc_end_to_end(dvc_project):
    assert_report(dvc_project)
    metrics = json.loads(sh("dvc metrics show --json", dvc_project).stdout)
    assert "resnet_beats_vit-paper" in json.dumps(metrics)
    assert "up to date" in sh("dvc status", dvc_project).stdout


def edit_params(project: Path, dotted: str, value) -> None:
    cfg = yaml.safe_load((project / "params.yaml").read_text())
    node = cfg
    *parents, last = dotted.split(".")
    for part in parents:
        node = node[part]
    node[last] = value
    write_yaml(project / "params.yaml", cfg)


def snakemake_plan(project: Path) -> dict[str, int]:
    dry = sh("snakemake -n --cores 2", project).stdout
    return {rule: int(n) for rule, n in re.findall(r"^(\w+)\s+(\d+)$", dry.split("Job stats:")[-1], flags=re.M)}


def test_a_params_change_reruns_only_that_model(sm_project, dvc_project):
    for project in (sm_project, dvc_project):
        edit_params(project, "presets.tiny.models.vit.depth", 2)
    # its two runs train and are evaluated again; cost measures every model of the preset
    plan = {"train": 2, "evaluate": 2, "cost": 1, "collect": 1, "figures": 1, "report": 1, "all": 1, "total": 9}
    assert snakemake_plan(sm_project) == plan
    status = yaml.safe_load(sh("dvc status --json", dvc_project).stdout)
    # DVC's train and evaluate do every run; collect and report read the preset too (collect checks
    # each run's config, report prints it)
    assert set(status) == {"train", "evaluate", "cost", "collect", "report"}, status
    try:
        # ... and the runs whose params did not change are re-emitted from their checkpoints, not retrained
        out = sh("dvc repro", dvc_project).stdout
        # the two workers' lines may run together (an unbuffered stdout writes a line and its end apart)
        emitted = re.findall(r"([\w.-]+-s\d+): checkpoint found, finished; not retraining", out)
        assert sorted(emitted) == sorted(f"{m}-paper{f}-s0" for m in MODELS if m != "vit" for f in ("", "-f0.2")), out
        assert "vit-paper-s0 epoch 1/1 " in out and "vit-paper-f0.2-s0 epoch 5/5 " in out
        assert "plan: preset tiny, 10 trainings" in out  # the forecast, before it trains
    finally:  # the later tests start from the params the fixtures ran with
        for project in (sm_project, dvc_project):
            edit_params(project, "presets.tiny.models.vit.depth", 1)


def test_outputs_made_under_other_params_are_stale_to_both_tools_without_snakemakes_records(
    sm_project, dvc_project, tmp_path
):
    """Issue 28.15: a run trained by hand with other params, and the corrupted set made under
    another test_size, with .snakemake gone: every `snakemake` stopped at collect ("train it again")
    or evaluate ("run `cnnvit corrupt` again") and never ran them. Their own records make them stale.
    On copies of the two projects: without Snakemake's records, its later tests' times would differ."""
    sm, dvc = (
        shutil.copytree(p, tmp_path / name, symlinks=True) for p, name in ((sm_project, "sm"), (dvc_project, "dvc"))
    )
    made = shutil.copy2(sm / "data/corrupted/test.npz", tmp_path / "corrupted.npz")
    for project in (sm, dvc):
        sh("cnnvit train --model vit --recipe paper --seeds 0 --set presets.tiny.val_size=10", project)
        sh("cnnvit corrupt --set presets.tiny.test_size=15", project)
    shutil.rmtree(sm / ".snakemake")
    dry = sh("snakemake -n --cores 2", sm)
    assert "data/corrupted/test.npz was made under other params (presets.tiny.test_size: 15 -> 0)" in dry.stderr
    assert "results/runs/vit-paper-s0/summary.json was made under other params (val_size: 10 -> 0)" in dry.stderr
    plan = snakemake_plan(sm)
    batches = 2 * len(MODELS)  # every model on the whole training set and on a fifth
    assert plan == {"corrupt": 1, "train": 1, "evaluate": batches, "collect": 1, "figures": 1, "report": 1, "all": 1,
                    "total": batches + 6}, plan  # fmt: skip
    # the corrupted set as the pipeline made it, with its time: then only the hand-trained run's jobs run
    shutil.copy2(made, sm / "data/corrupted/test.npz")
    plan = snakemake_plan(sm)
    assert plan == {"train": 1, "evaluate": 1, "collect": 1, "figures": 1, "report": 1, "all": 1, "total": 6}, plan
    proc = sh("snakemake --cores 2", sm, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = sh("snakemake -n --cores 2", sm)
    assert "Nothing to be done" in again.stdout and "its job runs again" not in again.stderr, again.stderr
    stamps = list((sm / ".snakemake/cnnvit/made-with").rglob("*.txt"))
    assert stamps and all(p.read_text() == "agree\n" for p in stamps)  # what the runs made agrees, every stage
    # DVC hashes its outputs against dvc.lock: outputs replaced by hand are a change to it already
    status = yaml.safe_load(sh("dvc status --json", dvc).stdout)
    assert "changed outs" in json.dumps(status.get("corrupt")) and "train" in status, status


def edit(project: Path, path: str, old: str, new: str) -> None:
    f = project / path
    assert old in f.read_text(), (path, old)
    f.write_text(f.read_text().replace(old, new, 1))


def stale_for(project: Path, path: str) -> set[str]:
    """The DVC stages that `dvc status` finds stale because ``path`` changed."""
    status = yaml.safe_load(sh("dvc status --json", project).stdout) or {}
    return {stage for stage, changes in status.items() if path in json.dumps(changes)}


def test_a_code_change_makes_exactly_its_stages_stale(sm_project, dvc_project):
    """Issue 29.1: a changed message re-ran every training; a model's code re-runs its runs only."""
    for project in (sm_project, dvc_project):  # a message: no job of either tool is stale
        edit(project, "src/cnnvit/errors.py", "is not a whole number", "is not a whole number (edited)")
    assert "Nothing to be done" in sh("snakemake -n --cores 2", sm_project).stdout
    assert stale_for(dvc_project, "errors.py") == set()
    for project in (sm_project, dvc_project):
        sh("git checkout -q src/cnnvit/errors.py", project)
    for module, archs in (("resnet", {"resnet50"}), ("vit", {"vit", "cnn_vit"})):
        for project in (sm_project, dvc_project):
            path = project / f"src/cnnvit/models/{module}.py"
            path.write_text(path.read_text() + "\n# edited\n")
        runs = 2 * sum(TINY_MODELS[m]["arch"] in archs for m in MODELS)  # its models, at two training-set sizes
        assert 0 < runs < 2 * len(MODELS)
        assert snakemake_plan(sm_project) == {
            "train": runs,
            "evaluate": runs,  # it builds the model too
            "cost": 1,  # it builds every model
            "collect": 1,
            "figures": 1,
            "report": 1,
            "all": 1,
            "total": 2 * runs + 5,
        }, module
        dry = sh("snakemake -n -p --cores 2", sm_project).stdout
        trained = set(re.findall(r"^Shell command: cnnvit train --model (\S+)", dry, flags=re.M))
        assert {TINY_MODELS[m]["arch"] for m in trained} == archs, trained
        # DVC's one train stage covers every run (it re-emits the others); collect and report read the specs too
        assert stale_for(dvc_project, f"models/{module}.py") == {"train", "evaluate", "cost", "collect", "report"}
        for project in (sm_project, dvc_project):
            sh(f"git checkout -q src/cnnvit/models/{module}.py", project)
    assert "Nothing to be done" in sh("snakemake -n --cores 2", sm_project).stdout  # same content again
    report = sm_project / "src/cnnvit/stages/report.py"
    report.write_text(report.read_text() + "\n# edited\n")
    assert snakemake_plan(sm_project) == {"report": 1, "all": 1, "total": 2}
    sh("git checkout -q src/cnnvit/stages/report.py", sm_project)


def test_config_overrides_reach_the_commands_canonically(sm_project):
    base = yaml.safe_load((sm_project / "params.yaml").read_text())
    shuffled = {k: base[k] for k in reversed(list(base))}
    shuffled["recipes"] = {n: dict(reversed(list(r.items()))) for n, r in base["recipes"].items()}
    write_yaml(sm_project / "shuffled.yaml", shuffled)
    assert "Nothing to be done" in sh("snakemake -n --cores 2 --configfile shuffled.yaml", sm_project).stdout
    dry = sh('snakemake -n -p --cores 2 --config "recipes={paper: {lr: 1e-4}}"', sm_project).stdout
    trains = re.findall(r"^Shell command: (cnnvit train .*)$", dry, flags=re.M)
    # every training reruns, and reads the config Snakemake validated (with the override) from its snapshot
    snapshot = "--params .snakemake/cnnvit/params.yaml"
    assert len(trains) == len(MODELS) * 2 and all(snapshot in c for c in trains), dry[-2000:]
    bad = sh('snakemake -n --cores 2 --config "recipes={paper: {lr: -1}}"', sm_project, check=False)
    assert bad.returncode == 1 and "error: config: recipes.paper.lr: -1" in bad.stderr and "minimum of 0" in bad.stderr


def test_snakemake_lint_and_snakefmt_are_clean(sm_project):
    lint = sh("snakemake --lint", sm_project, check=False)
    assert lint.returncode == 0 and "Lints for" not in lint.stdout + lint.stderr, lint.stdout + lint.stderr
    fmt = sh("snakefmt --check Snakefile workflow/rules", sm_project, check=False)
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr
