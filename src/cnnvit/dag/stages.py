"""The pipeline, described once: every stage's command, inputs, outputs, log, params and code.

    download -> prepare -> corrupt -> train, evaluate (one job each per run) -> cost -> collect
             -> figures -> report

The Snakemake rules (``workflow/rules/*.smk``) read their inputs, outputs, logs, commands and
params from here (through :mod:`cnnvit.dag.snakemake`), and ``dvc.yaml`` is generated from here
by ``cnnvit dvc-yaml`` (:mod:`cnnvit.dag.dvc`, which names no stage). A test builds both tools'
DAGs and checks each runs exactly the jobs :func:`jobs` lists.

A stage's code dependencies are the source files it runs (:mod:`cnnvit.dag.code`), so a code
change re-runs exactly the stages that run that code. A per-run stage becomes one job per run,
named by :func:`cnnvit.config.types.run_name`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cnnvit.analysis.records import METRICS_FILE, RUN_FILES, WEIGHTS_FILE
from cnnvit.config.types import run_name
from cnnvit.dag.code import code_files
from cnnvit.dag.paths import (
    CHECKPOINT_DIR,
    CORRUPTED,
    COST,
    EVAL_DIR,
    EVAL_FILES,
    FIGURES_DIR,
    METRICS,
    PREPARED,
    PREPARED_DIR,
    RAW,
    REPORT,
    RUNS_DIR,
    TABLES,
    TABLES_DIR,
    TEMPLATE,
)

if TYPE_CHECKING:
    from cnnvit.config.types import Params, RunSpec

RUN = "{run}"  # stands for a run's name in a per-run stage's paths


@dataclass(frozen=True)
class Out:
    """One output of a stage, and how each tool treats it."""

    path: str
    cache: bool = True  # DVC keeps a copy in its cache
    metric: bool = False  # `dvc metrics show` lists it
    plot: dict[str, str] | None = None  # `dvc plots show` draws it with these properties
    report: str | None = None  # its category in `snakemake --report`
    directory: bool = False


@dataclass(frozen=True)
class Stage:
    name: str
    cmd: str  # a per-run stage's holds {model}, {recipe}, {seed}, {fraction_arg} and {run}
    deps: tuple[str, ...]  # data it reads; code and params are added from `params` and the module
    outs: tuple[Out, ...]
    params: tuple[str, ...]  # dotted keys read; {preset}, {model} and {recipe} are filled in
    per_run: bool = False
    fraction_params: tuple[str, ...] = ()  # what a run on a fraction of the training set reads too
    reads_all_runs: tuple[str, ...] = ()  # per-run stages whose outputs, for every run, it reads
    local_input: str | None = None  # a params key naming a file; when it is a local path, an input too

    @property
    def module(self) -> str:
        return f"cnnvit.stages.{self.name}"

    @property
    def log(self) -> str:
        return f"logs/{self.name}/{RUN}.log" if self.per_run else f"logs/{self.name}.log"


STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        Stage(
            "download",
            f"cnnvit download --out {RAW}",
            (),
            (Out(RAW),),
            ("data.url", "data.md5", "data.sha256", "data.format"),
            local_input="data.url",
        ),
        Stage(
            "prepare",
            f"cnnvit prepare --raw {RAW} --out-dir {PREPARED_DIR}",
            (RAW,),
            tuple(Out(p) for p in PREPARED),
            ("data.format", "data.expect_train", "data.expect_test", "data.val_size", "data.val_seed"),
        ),
        Stage(
            "corrupt",
            f"cnnvit corrupt --data-dir {PREPARED_DIR} --out {CORRUPTED}",
            PREPARED,
            (Out(CORRUPTED),),
            ("preset", "presets.{preset}.test_size", "presets.{preset}.robustness_images", "robustness"),
        ),
        Stage(
            "train",
            "cnnvit train --model {model} --recipe {recipe} --seed {seed}{fraction_arg} "
            f"--data-dir {PREPARED_DIR} --out-dir {RUNS_DIR}/{RUN} --ckpt-dir {CHECKPOINT_DIR}",
            PREPARED,
            tuple(
                Out(f"{RUNS_DIR}/{RUN}/{f}", plot={"x": "epoch", "y": "val_acc"} if f == METRICS_FILE else None)
                for f in RUN_FILES
            ),
            (
                "preset",
                "presets.{preset}.train_size",
                "presets.{preset}.val_size",
                "presets.{preset}.test_size",
                "presets.{preset}.epochs",
                "presets.{preset}.models.{model}",
                "recipes.{recipe}",
                "runtime.precision",
            ),
            per_run=True,
            fraction_params=("runs.fraction_budget",),
        ),
        Stage(
            "evaluate",
            "cnnvit evaluate --model {model} --recipe {recipe} --seed {seed}{fraction_arg} "
            f"--data-dir {PREPARED_DIR} --corrupted {CORRUPTED} --runs-dir {RUNS_DIR} --out-dir {EVAL_DIR}/{RUN}",
            (*PREPARED, CORRUPTED, f"{RUNS_DIR}/{RUN}/{WEIGHTS_FILE}"),
            tuple(Out(f"{EVAL_DIR}/{RUN}/{f}") for f in EVAL_FILES),
            (
                "preset",
                "presets.{preset}.test_size",
                "presets.{preset}.robustness_images",
                "presets.{preset}.attention_images",
                "presets.{preset}.models.{model}",
                "recipes.{recipe}.normalize",
                "robustness",
            ),
            per_run=True,
        ),
        Stage(
            "cost",
            f"cnnvit cost --out {COST}",
            (),
            (Out(COST, report="Tables"),),
            ("preset", "runs.models", "presets.{preset}.models", "cost", "runtime.device", "runtime.threads"),
        ),
        Stage(
            "collect",
            f"cnnvit collect --runs-dir {RUNS_DIR} --eval-dir {EVAL_DIR} --cost {COST} --out-dir {TABLES_DIR}",
            (COST,),
            tuple(Out(t, report="Tables") if t != METRICS else Out(t, cache=False, metric=True) for t in TABLES),
            ("preset", "runs", "presets.{preset}", "recipes", "runtime.precision", "analysis"),
            reads_all_runs=("train", "evaluate"),
        ),
        Stage(
            "figures",
            f"cnnvit figures --tables-dir {TABLES_DIR} --out-dir {FIGURES_DIR}",
            TABLES,
            (Out(FIGURES_DIR, directory=True, report="Figures"),),
            (),
        ),
        Stage(
            "report",
            f"cnnvit report --tables-dir {TABLES_DIR} --figures-dir {FIGURES_DIR} --template {TEMPLATE} --out {REPORT}",
            (*TABLES, FIGURES_DIR, TEMPLATE),
            (Out(REPORT, cache=False, report="Report"),),
            ("preset", "data", "runs", "runtime", "analysis", "recipes", "presets.{preset}"),
        ),
    )
}


def code_deps(stage: str) -> tuple[str, ...]:
    """The source files (and package data) that ``stage`` runs, as paths from the project root.
    Every command loads params.yaml through the config loader, so that is in too."""
    return code_files(STAGES[stage].module, "cnnvit.config.load")


# ----------------------------------------------------------------------------- one job of a stage


def get_key(cfg: dict, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _canonical(value: Any) -> Any:
    """Sorted keys all the way down: the same config in another key order is the same params."""
    return json.loads(json.dumps(value, sort_keys=True))


def job_params(stage: str, cfg: dict, run: RunSpec | None = None) -> dict[str, Any]:
    """The dotted keys one job of ``stage`` reads, with their values in ``cfg`` (the raw params):
    what Snakemake's params trigger compares, what DVC lists, and what --set passes on."""
    s = STAGES[stage]
    keys = list(s.params) + (list(s.fraction_params) if run is not None and run.fraction < 1 else [])
    fill = {"preset": cfg["preset"], "model": run.model if run else "", "recipe": run.recipe if run else ""}
    return {k.format(**fill): _canonical(get_key(cfg, k.format(**fill))) for k in keys}


def run_fields(run: RunSpec) -> dict[str, Any]:
    return {
        "model": run.model,
        "recipe": run.recipe,
        "seed": run.seed,
        "fraction_arg": f" --fraction {run.fraction}" if run.fraction < 1 else "",
        "run": run.name,
    }


def _fill(text: str, run: RunSpec | None) -> str:
    return text.format(**run_fields(run)) if run else text


def command(stage: str, run: RunSpec | None = None) -> str:
    return _fill(STAGES[stage].cmd, run)


def outputs(stage: str, run: RunSpec | None = None) -> list[str]:
    return [_fill(o.path, run) for o in STAGES[stage].outs]


def run_outputs(stage: str, runs: list[RunSpec]) -> list[str]:
    """Every output of every run of a per-run stage."""
    return [path for run in runs for path in outputs(stage, run)]


def run_folder(stage: str) -> str:
    """The folder a per-run stage writes its runs' folders into (results/runs for train)."""
    return STAGES[stage].outs[0].path.split(f"/{RUN}/")[0]


def deps(stage: str, runs: list[RunSpec] | None = None, run: RunSpec | None = None) -> list[str]:
    """The data a job of ``stage`` (for ``run``, if it is per run) reads. A stage that reads every
    run's outputs depends on each of them when ``runs`` is given (Snakemake), else on the folders
    that hold them (DVC)."""
    s = STAGES[stage]
    extra = [p for st in s.reads_all_runs for p in (run_outputs(st, runs) if runs is not None else [run_folder(st)])]
    return [_fill(d, run) for d in s.deps] + extra


@dataclass(frozen=True)
class Job:
    stage: str
    cmd: str
    deps: tuple[str, ...]
    outs: tuple[str, ...]
    params: tuple[str, ...]


def jobs(params: Params) -> list[Job]:
    """Every job of the DAG for these params, as both tools should run it (DVC's dependencies)."""
    out = []
    for name, s in STAGES.items():
        for run in params.all_runs() if s.per_run else [None]:
            out.append(
                Job(
                    name,
                    command(name, run),
                    (*deps(name, run=run), *code_deps(name)),
                    tuple(outputs(name, run)),
                    tuple(job_params(name, params.raw, run)),
                )
            )
    return out


__all__ = ["RUN", "STAGES", "Job", "Out", "Stage", "code_deps", "command", "job_params", "jobs", "run_name"]
