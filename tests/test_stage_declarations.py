"""Each stage declares itself once (``STAGE`` beside its ``run()``): the DAG reads the declaration
from the source exactly as importing the module gives it, the CLI's stage subcommands are the
declared stages, and a declaration that its code does not agree with, or that the DAG cannot
read, ends in one line naming the stage and what disagrees."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import re
import subprocess
import sys

import pytest
import yaml
from conftest import ROOT, assert_one_line_error, write_yaml

from cnnvit import cli
from cnnvit.dag import check as declared_check
from cnnvit.dag import declared
from cnnvit.errors import CnnvitError
from cnnvit.stage import Out
from cnnvit.stages import NAMES


@pytest.mark.parametrize("name", NAMES)
def test_the_declaration_read_from_the_source_is_the_one_the_module_defines(name):
    assert declared.declaration(name) == importlib.import_module(f"cnnvit.stages.{name}").STAGE


def test_reading_the_declarations_imports_no_stage_and_nothing_heavy():
    code = (
        "import sys; from cnnvit.dag.declared import declared; d = declared(); "
        "heavy = [m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy', 'pandas', 'matplotlib') "
        "or m.startswith('cnnvit.stages.')]; print(len(d), heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == f"{len(NAMES)} []"


# the pipeline's stages in the order they run, written out (the CLI and the DAG read cnnvit.stages.NAMES)
PIPELINE = ["download", "prepare", "corrupt", "train", "evaluate", "cost", "collect", "figures", "report"]


def test_the_stage_subcommands_are_the_pipelines_stages_each_with_its_modules_help_and_arguments(capsys, monkeypatch):
    """`cnnvit --help` lists the stages in pipeline order, each with the help its module's STAGE
    declares (imported here, not read as the CLI reads it), and each stage's subcommand takes the
    arguments of that stage's own parser."""
    assert list(NAMES) == PIPELINE
    monkeypatch.setenv("COLUMNS", "1000")  # one line a subcommand
    with pytest.raises(SystemExit) as done:
        cli.main(["--help"])
    listing = capsys.readouterr().out
    assert done.value.code == 0
    shown = re.findall(r"^ {4}(\S+) +(.+)$", listing, re.M)
    stages = [(name, help_) for name, help_ in shown if name in PIPELINE]
    assert stages == [(n, importlib.import_module(f"cnnvit.stages.{n}").STAGE.help) for n in PIPELINE], listing
    assert {"plan", "bench", "dvc-yaml", "snakemake-rules", "stages", "schema"} <= {name for name, _ in shown}
    for name in PIPELINE:
        own = argparse.ArgumentParser()
        importlib.import_module(f"cnnvit.stages.{name}").add_args(own)
        sub = next(a for a in cli.build_parser([name])._actions if a.dest == "command").choices[name]
        assert {o for a in own._actions for o in a.option_strings} <= {
            o for a in sub._actions for o in a.option_strings
        }


def test_every_declaration_agrees_with_its_stages_parser():
    stages = declared.declared()
    for stage in stages.values():
        declared_check.check(stage, stages)


def test_a_declared_option_the_parser_does_not_take_is_one_line(tmp_path, capsys, monkeypatch):
    stages = declared.declared()
    bad = dict(stages, corrupt=dataclasses.replace(stages["corrupt"], cmd=stages["corrupt"].cmd + " --images 10"))
    monkeypatch.setattr(declared, "declared", lambda: bad)
    params = write_yaml(tmp_path / "params.yaml", yaml.safe_load((ROOT / "params.yaml").read_text()))
    code = cli.main(["stages", "--check", "--params", str(params)])
    assert_one_line_error(code, capsys.readouterr().err, "stage corrupt", "--images", "`cnnvit corrupt` does not take")


@pytest.mark.parametrize(
    ("stage", "change", "needles"),
    [
        ("figures", {"outs": (Out("results/plots", directory=True),)}, ["output results/plots"]),
        ("train", {"cmd": "cnnvit train {runs} --runs-dir results/other"}, ["--runs-dir results/other"]),
        ("collect", {"deps": ("results/cost/other.csv",)}, ["input results/cost/other.csv"]),
        ("report", {"cmd": "cnnvit figures --tables-dir results/tables"}, ["runs `cnnvit figures`"]),
        ("evaluate", {"cmd": "cnnvit evaluate {runs} --seed x"}, ["refused by its parser", "'x'"]),
    ],
)
def test_a_declaration_its_code_disagrees_with_names_the_stage(stage, change, needles):
    stages = declared.declared()
    bad = dataclasses.replace(stages[stage], **change)
    with pytest.raises(CnnvitError) as exc:
        declared_check.check(bad, stages)
    line = str(exc.value)
    assert "\n" not in line and line.startswith(f"stage {stage}: ") and f"src/cnnvit/stages/{stage}.py" in line
    for needle in needles:
        assert needle in line, line


def test_a_declaration_the_dag_cannot_read_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(declared, "STAGES_DIR", tmp_path)
    declared.declaration.cache_clear()
    try:
        cases = {
            "nothing": ("x = 1\n", "declares no module-level STAGE"),
            "twice": ("STAGE = 1\nSTAGE = 2\n", "more than one"),
            "unknown": (
                "from cnnvit.stage import Stage\nSTAGE = Stage(name='unknown', help='', cmd=f'cnnvit x {DIR}')\n",
                "uses 'DIR'",
            ),
            "renamed": ("from cnnvit.stage import Stage\nSTAGE = Stage(name='other', help='', cmd='')\n", "'other'"),
        }
        for name, (source, needle) in cases.items():
            (tmp_path / f"{name}.py").write_text(source)
            with pytest.raises(CnnvitError, match=needle):
                declared.declaration(name)
        with pytest.raises(CnnvitError, match="does not exist"):
            declared.declaration("missing")
        # a path constant a declaration imports is bound as the module binds it
        (tmp_path / "ok.py").write_text(
            "from cnnvit.paths import RAW as ARCHIVE\nfrom cnnvit.runfiles import WEIGHTS_FILE\n"
            "from cnnvit.stage import Out, Stage\n"
            "STAGE = Stage(name='ok', help='h', cmd=f'cnnvit ok {ARCHIVE}', outs=(Out(WEIGHTS_FILE),))\n"
        )
        assert declared.declaration("ok").cmd == "cnnvit ok data/raw/cifar10.tar.gz"
        assert declared.declaration("ok").outs[0].path == "weights.safetensors"
    finally:
        declared.declaration.cache_clear()
