"""The pipeline's jobs, from the stages' declarations: each tool's commands, inputs, outputs and params.

    download -> prepare -> corrupt -> train, evaluate (per run) -> cost -> collect -> figures -> report

Each stage declares itself beside its ``run()`` (``STAGE`` in ``cnnvit/stages/<name>.py``, read
without importing it: :mod:`cnnvit.dag.declared`). The Snakemake rules are generated from the
declarations by ``cnnvit snakemake-rules`` (:mod:`cnnvit.dag.rules`) and ``dvc.yaml`` by ``cnnvit
dvc-yaml`` (:mod:`cnnvit.dag.dvc`); neither names a stage. A test builds both tools' DAGs and
checks each runs exactly the jobs :func:`jobs` lists.

A stage's code dependencies are the source files that can change its results
(:mod:`cnnvit.dag.code`). A per-run stage writes a folder per run, named by
:func:`cnnvit.config.types.run_name`; its jobs are :class:`Batch`es of runs, because a process's
start-up (imports, CUDA, compilation) costs as much as a small run: Snakemake runs one job per
group of seeds or one per run (:func:`batches`, ``runtime.group_seeds``: auto groups where the
groups fill the lanes that run at once), and DVC, which
runs one stage at a time, one job for every run with a worker per slot (:data:`ALL_RUNS`). A run
whose params, data and code are unchanged is re-emitted from its checkpoint, not retrained, and
an evaluation of the same weights under the same settings is kept, so a job re-does only what
changed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cnnvit.batch import Batch, batches
from cnnvit.config.types import run_name
from cnnvit.config.values import values
from cnnvit.dag.code import arch_modules, stage_code
from cnnvit.dag.declared import declared
from cnnvit.stage import BATCH, RUN, RUNS, Out, Stage

if TYPE_CHECKING:
    from cnnvit.config.types import Params, RunSpec

ALL_RUNS = "--all-runs --workers auto"
PRESET_RUNS = "presets.{preset}.runs"  # the keys of runs: the active preset sets for itself

STAGES: dict[str, Stage] = declared()


def arch_module(params: Params, model: str) -> str:
    """The module that defines ``model``'s arch in the active preset (``cnnvit.models.vit``)."""
    return arch_modules()[params.active.models[model]["arch"]]


def code_deps(stage: str, params: Params | None = None, batch: Batch | None = None) -> tuple[str, ...]:
    """The source files (and package data) whose change re-runs a job of ``stage``: for a
    per-run stage's ``batch``, its model's arch module among them and no other arch's."""
    arch = arch_module(params, batch.runs[0].model) if batch is not None and params is not None else None
    return stage_code(STAGES[stage], arch if STAGES[stage].per_run else None)


# ----------------------------------------------------------------------------- one job of a stage


def job_keys(stage: str, whole: bool = False, fraction: bool = False) -> list[str]:
    """The dotted params keys a job of ``stage`` reads, {preset}, {model} and {recipe} unfilled.
    ``whole``: DVC's job, of every run: each key is cut before its first {model} or {recipe} (all
    models, all recipes), and a per-run stage reads the runs. DVC reads params.yaml itself and
    cannot resolve ``runs.K`` (the active preset's runs: over the top-level ones), so a stage that
    reads one lists the preset's whole ``runs:`` too."""
    s = STAGES[stage]
    keys = list(s.params) + (list(s.fraction_params) if fraction or whole else [])
    if not whole:
        return keys
    every = [*keys, *(["runs"] if s.per_run else [])]
    every += [PRESET_RUNS] if any(k == "runs" or k.startswith("runs.") for k in every) else []
    cut = list(dict.fromkeys(k.split(".{model}")[0].split(".{recipe}")[0] for k in every))
    return [k for k in cut if not any(k.startswith(other + ".") for other in cut)]


def job_params(stage: str, cfg: dict, batch: Batch | None = None, tool: str = "snakemake") -> dict[str, Any]:
    """The dotted keys one job of ``stage`` reads (a batch's, for a per-run stage under Snakemake),
    with their values in ``cfg`` (the raw params): what Snakemake's params trigger compares, what
    DVC lists, and what --set passes on."""
    s = STAGES[stage]
    if tool == "dvc":
        return values(cfg, job_keys(stage, whole=True))
    return values(cfg, s.params, batch, s.fraction_params)


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


def jobs(params: Params, tool: str = "snakemake", lanes: int = 1) -> list[Job]:
    """Every job of the DAG for these params, as ``tool`` should run it: a per-run stage is a
    job per batch under Snakemake, one job for every run under DVC (whose outputs are then the
    runs' folder, and whose dependencies the folders of the runs it reads)."""
    out = []
    for name, s in STAGES.items():
        units: list[Batch | None] = [None]
        if s.per_run and tool == "snakemake":
            units = list(batches(params, lanes))
        for batch in units:
            outs = run_outputs(name, batch.runs) if batch else [run_folder(name)] if s.per_run else outputs(name)
            out.append(
                Job(
                    name,
                    command(name, batch),
                    (*deps(name, batch=batch), *code_deps(name, params, batch)),
                    tuple(outs),
                    tuple(job_params(name, params.raw, batch, tool)),
                )
            )
    return out


__all__ = [
    "ALL_RUNS", "BATCH", "RUN", "RUNS", "STAGES", "Batch", "Job", "Out", "Stage", "arch_module", "batches",
    "code_deps", "command", "job_params", "jobs", "run_name",
]  # fmt: skip
