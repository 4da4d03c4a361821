"""Per-run granularity under DVC (issue 29.6): DVC's one train and one evaluate stage say first
which runs they will (re)do and why, re-do only those (a finished run is re-emitted from its
checkpoint, an evaluation of the same weights under the same settings is kept), and `cnnvit
status` names the stale runs before anything runs; undoing a change restores the earlier
training from its kept checkpoint without training."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from conftest import make_cifar_python, make_project, md5, sh, tiny_params, write_yaml

pytestmark = pytest.mark.slow  # three `dvc repro evaluate` of two tiny runs: ~1.5 minutes

RUNS = ("vit-paper-s0", "resnet50-paper-s0")


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("status")
    archive = make_cifar_python(d / "c.tar.gz")
    params = tiny_params(str(archive), md5(archive), epochs=1, models=["vit", "resnet50"], recipes=["paper"])
    project = make_project(d / "project", params)
    sh("dvc repro evaluate", project)  # the stages up to evaluate: what `cnnvit status` speaks of
    return project


def set_depth(project: Path, depth: int) -> None:
    cfg = yaml.safe_load((project / "params.yaml").read_text())
    cfg["presets"]["tiny"]["models"]["vit"]["depth"] = depth
    write_yaml(project / "params.yaml", cfg)


def status(project: Path) -> dict[str, dict[str, str]]:
    """stage -> run -> why, from `cnnvit status`."""
    out, stage, found = sh("cnnvit status", project).stdout, "", {}
    for line in out.splitlines():
        if m := re.match(r"^(\w+): (\d+) of (\d+) runs to \(re\)do", line):
            stage = m.group(1)
            found[stage] = {}
        elif m := re.match(r"^  (\S+): (.+)$", line):
            found[stage][m.group(1)] = m.group(2)
    return found


def test_nothing_is_stale_after_a_run_and_the_evaluation_records_its_settings(project):
    assert status(project) == {"train": {}, "evaluate": {}}
    record = json.loads((project / "results/eval/vit-paper-s0/evaluation.json").read_text())
    assert set(record) == {"run", "weights_sha256", "settings"}
    assert {"corrupted_sha256", "attention_images", "precision", "model", "code"} <= set(record["settings"])
    assert "cnnvit.measure.attention" in record["settings"]["code"]


def test_a_change_to_one_model_redoes_only_its_runs_and_says_so(project):
    set_depth(project, 2)
    stale = status(project)
    assert set(stale["train"]) == {"vit-paper-s0"} and "model.depth: 1 -> 2" in stale["train"]["vit-paper-s0"]
    assert stale["evaluate"] == {"vit-paper-s0": "its run trains again first"}
    kept = (project / "results/eval/resnet50-paper-s0/robustness.csv").stat().st_mtime_ns
    out = sh("dvc repro evaluate", project).stdout
    assert "train: 1 of 2 runs to (re)do, 1 up to date" in out and "evaluate: 1 of 2 runs to (re)do" in out, out
    assert "resnet50-paper-s0: checkpoint found, finished; not retraining" in out
    assert "vit-paper-s0 epoch 1/1 " in out and "resnet50-paper-s0 epoch" not in out
    assert "resnet50-paper-s0: evaluation up to date, kept" in out and "vit-paper-s0: clean " in out
    assert (project / "results/eval/resnet50-paper-s0/robustness.csv").stat().st_mtime_ns == kept
    assert status(project) == {"train": {}, "evaluate": {}}


def test_undoing_the_change_restores_the_earlier_training_without_training(project):
    set_depth(project, 1)
    stale = status(project)
    assert stale["train"] == {}  # the checkpoint kept for depth 1 is reused
    assert set(stale["evaluate"]) == {"vit-paper-s0"}  # its weights go back to depth 1's
    out = sh("dvc repro evaluate", project).stdout
    assert "was kept for exactly these params, data and code: using it" in out
    assert " epoch 1/1 " not in out, out  # nothing trained
    assert status(project) == {"train": {}, "evaluate": {}}
    assert "up to date" in sh("dvc status evaluate", project).stdout
