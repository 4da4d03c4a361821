"""The pipeline, described once: every stage's command, inputs, outputs, log, params and code.

    download -> prepare -> corrupt -> train, evaluate (per run) -> cost -> collect -> figures -> report

The Snakemake rules (``workflow/rules/*.smk``) read their inputs, outputs, logs, commands and
params from here (through :mod:`cnnvit.dag.snakemake`), and ``dvc.yaml`` is generated from here
by ``cnnvit dvc-yaml`` (:mod:`cnnvit.dag.dvc`, which names no stage). A test builds both tools'
DAGs and checks each runs exactly the jobs :func:`jobs` lists.

A stage's code dependencies are the source files it runs (:mod:`cnnvit.dag.code`), so a code
change re-runs exactly the stages that run that code. A per-run stage writes a folder per run,
named by :func:`cnnvit.config.types.run_name`; its jobs are :class:`Batch`es of runs, because a
process's start-up (imports, CUDA, compilation) costs as much as a small run: Snakemake runs one
job per group of seeds (:func:`batches`; ``runtime.group_seeds: false``, one per run), and DVC,
which runs one stage at a time, one job for every run with a worker per slot (:data:`ALL_RUNS`).
A run whose params, data and code are unchanged is re-emitted from its checkpoint, not
retrained, so a batch re-runs only what changed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cnnvit.batch import Batch, batches
from cnnvit.config.types import run_name
from cnnvit.dag.code import code_files
from cnnvit.paths import (
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
from cnnvit.runfiles import RUN_FILES, WEIGHTS_FILE

if TYPE_CHECKING:
    from cnnvit.config.types import Params, RunSpec

RUN = "{run}"  # stands for a run's name in a per-run stage's paths
BATCH = "{batch}"  # stands for a batch's name in a per-run stage's log
RUNS = "{runs}"  # stands for the options that name a batch's runs in a per-run stage's command
ALL_RUNS = "--all-runs --workers auto"


@dataclass(frozen=True)
class Out:
    """One output of a stage, and how each tool treats it."""

    path: str
    cache: bool = True  # DVC keeps a copy in its cache
    metric: bool = False  # `dvc metrics show` lists it
    report: str | None = None  # its category in `snakemake --report`
    directory: bool = False


@dataclass(frozen=True)
class Stage:
    name: str
    cmd: str  # a per-run stage's holds {runs}
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
        return f"logs/{self.name}/{BATCH}.log" if self.per_run else f"logs/{self.name}.log"


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
            f"cnnvit train {RUNS} --data-dir {PREPARED_DIR} --runs-dir {RUNS_DIR} --ckpt-dir {CHECKPOINT_DIR}",
            PREPARED,
            tuple(Out(f"{RUNS_DIR}/{RUN}/{f}") for f in RUN_FILES),
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
            f"cnnvit evaluate {RUNS} --data-dir {PREPARED_DIR} --corrupted {CORRUPTED} --runs-dir {RUNS_DIR} "
            f"--out-dir {EVAL_DIR}",
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
            (
                "preset",
                "runs.models",
                "presets.{preset}.models",
                "cost",
                "runtime.device",
                "runtime.threads",
                "runtime.precision",
            ),
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


def job_keys(stage: str, whole: bool = False, fraction: bool = False) -> list[str]:
    """The dotted params keys a job of ``stage`` reads, {preset}, {model} and {recipe} unfilled.
    ``whole``: a job of every run, which reads each key cut before its first {model} or {recipe}
    (all models, all recipes), and ``runs``, which lists the runs."""
    s = STAGES[stage]
    keys = list(s.params) + (list(s.fraction_params) if fraction or whole else [])
    if whole and s.per_run:
        cut = list(dict.fromkeys(k.split(".{model}")[0].split(".{recipe}")[0] for k in [*keys, "runs"]))
        keys = [k for k in cut if not any(k.startswith(other + ".") for other in cut)]
    return keys


def job_params(stage: str, cfg: dict, batch: Batch | None = None) -> dict[str, Any]:
    """The dotted keys one job of ``stage`` reads (every run's, without ``batch``), with their
    values in ``cfg`` (the raw params): what Snakemake's params trigger compares, what DVC lists,
    and what --set passes on."""
    run = batch.runs[0] if batch else None
    keys = job_keys(stage, whole=batch is None, fraction=run is not None and run.fraction < 1)
    fill = {"preset": cfg["preset"], "model": run.model if run else "", "recipe": run.recipe if run else ""}
    return {k.format(**fill): _canonical(get_key(cfg, k.format(**fill))) for k in keys}


def command(stage: str, batch: Batch | None = None) -> str:
    """The stage's command; a per-run stage's for ``batch``, or for every run without one."""
    cmd = STAGES[stage].cmd
    return cmd.replace(RUNS, batch.args if batch else ALL_RUNS) if STAGES[stage].per_run else cmd


def outputs(stage: str, run: RunSpec | None = None) -> list[str]:
    return [o.path.replace(RUN, run.name) if run else o.path for o in STAGES[stage].outs]


def run_outputs(stage: str, runs) -> list[str]:
    """Every output of every run of a per-run stage."""
    return [path for run in runs for path in outputs(stage, run)]


def run_folder(stage: str) -> str:
    """The folder a per-run stage writes its runs' folders into (results/runs for train)."""
    return STAGES[stage].outs[0].path.split(f"/{RUN}/")[0]


def deps(stage: str, runs: list[RunSpec] | None = None, batch: Batch | None = None) -> list[str]:
    """The data a job of ``stage`` reads: for a per-run stage, that of ``batch``'s runs, or of
    every run (the folders that hold them) without one. A stage that reads every run's outputs
    depends on each of them when ``runs`` is given (Snakemake), else on their folders (DVC)."""
    s = STAGES[stage]
    extra = [p for st in s.reads_all_runs for p in (run_outputs(st, runs) if runs is not None else [run_folder(st)])]
    own: list[str] = []
    for d in s.deps:
        if RUN not in d:
            own.append(d)
        elif batch is not None:
            own += [d.replace(RUN, run.name) for run in batch.runs]
        else:
            own.append(d.split(f"/{RUN}/")[0])  # the folder of every run's
    return own + extra


@dataclass(frozen=True)
class Job:
    stage: str
    cmd: str
    deps: tuple[str, ...]
    outs: tuple[str, ...]
    params: tuple[str, ...]


def jobs(params: Params, tool: str = "snakemake") -> list[Job]:
    """Every job of the DAG for these params, as ``tool`` should run it: a per-run stage is a
    job per batch under Snakemake, one job for every run under DVC (whose outputs are then the
    runs' folder, and whose dependencies the folders of the runs it reads)."""
    out = []
    for name, s in STAGES.items():
        units: list[Batch | None] = [None]
        if s.per_run and tool == "snakemake":
            units = list(batches(params))
        for batch in units:
            outs = run_outputs(name, batch.runs) if batch else [run_folder(name)] if s.per_run else outputs(name)
            out.append(
                Job(
                    name,
                    command(name, batch),
                    (*deps(name, batch=batch), *code_deps(name)),
                    tuple(outs),
                    tuple(job_params(name, params.raw, batch)),
                )
            )
    return out


__all__ = [
    "ALL_RUNS", "BATCH", "RUN", "STAGES", "Batch", "Job", "Out", "Stage", "batches", "code_deps", "command",
    "job_params", "jobs", "run_name",
]  # fmt: skip
