"""What the Snakemake rules need at run time: the values of the params a job reads, a batch's
runs and code, the GPU a training job asks for, its memory and time limit on a cluster, the
config snapshot and the forecast. The rules themselves (``workflow/rules/pipeline.smk`` and
``code.smk``) are generated from the stages' declarations by ``cnnvit snakemake-rules``
(:mod:`cnnvit.dag.rules`); ``workflow/rules/common.smk`` binds these helpers to the params.

A per-run stage's job is a batch of runs (:func:`cnnvit.batch.batches`), the ``{batch}``
wildcard: the seeds of one model x recipe x fraction, whose outputs are ``<batch>-s<seed>/...``
for every seed, or one run (``runtime.group_seeds``, :func:`cnnvit.batch.grouped`), whose outputs are
``<batch>/...``.

Every job reads the config Snakemake validated at its start, written once (in ``onstart``) to
:data:`PARAMS_SNAPSHOT`, with the overrides given to Snakemake (``--config``) in it: editing
params.yaml during a run changes nothing for the jobs still to come.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from cnnvit.config.types import SEED_SUFFIX
from cnnvit.paths import RUNS_DIR
from cnnvit.stage import RUN

PARAMS_SNAPSHOT = ".snakemake/cnnvit/params.yaml"

if TYPE_CHECKING:
    from cnnvit.batch import Batch
    from cnnvit.config.types import Params


def each_run(params: Params, path: str, grouped: bool) -> list[str]:
    """A per-run path (``results/runs/{run}/weights.safetensors``) for every run of a ``{batch}``
    (its seeds where the seeds are ``grouped``, else the run itself)."""
    suffixes = [SEED_SUFFIX.format(seed=s) for s in params.runs.seeds] if grouped else [""]
    return [path.replace(RUN, "{batch}" + suffix) for suffix in suffixes]


def arch_of(params: Params, batch: Batch) -> str:
    """The arch of a batch's model (its runs share it), as the active preset defines it."""
    return params.active.models[batch.runs[0].model]["arch"]


def write_snapshot(params: Params) -> Path:
    """The config Snakemake validated at its start, as the one file every job reads: editing
    params.yaml during a run cannot reach the jobs still to come (they would mix configs)."""
    from cnnvit.files import write_text

    write_text(
        PARAMS_SNAPSHOT,
        "# written by Snakemake at its start; every job of the run reads it\n"
        + yaml.safe_dump(params.raw, sort_keys=False),
    )
    return Path(PARAMS_SNAPSHOT)


def all_cores(workflow) -> int:
    """Every core Snakemake was given (a job asking for them runs alone), or 1 where no count is
    given (--report, --lint)."""
    cores = getattr(workflow.resource_settings, "cores", None)
    return int(cores) if isinstance(cores, int) and cores > 0 else 1


def alone_cores(workflow, params: Params) -> int:
    """The cores of a job that times the models (cost): all of them on one machine, so that it
    runs alone; on a cluster a training job's runtime.threads. There the Snakemake that submits
    the job and the one that runs it inside its allocation (started with --cores all) must
    agree on the count, or srun asks for more cores than sbatch was given."""
    if workflow.non_local_exec or workflow.remote_exec:
        return max(1, params.runtime.threads)
    return all_cores(workflow)


def name_pattern(names) -> str:
    """A wildcard constraint that matches exactly these names."""
    return "|".join(re.escape(name) for name in names)


def gpu_request(device: str, local_exec: bool) -> int:
    """1 when a training job can use CUDA (runtime.device cuda, or auto on a cluster or on a machine
    with an NVIDIA GPU), else 0, so CPU-only machines and clusters never ask for a GPU."""
    from cnnvit.training.device import gpu_count

    if device == "cpu":
        return 0
    if device == "cuda" or not local_exec:
        return 1
    return 1 if gpu_count() else 0


def local_source(url: Any) -> list[str]:
    """The archive (or directory) itself as an input when data.url is a local path."""
    from cnnvit.stages.download import local_path

    path = local_path(str(url))
    return [str(path)] if path is not None and path.exists() else []


def slurm_minutes(params: Params, batch: Batch) -> int:
    """A time limit for a batch: the preset's per-epoch estimate times its runs' epochs, plus 20%."""
    from cnnvit.config.runs import epochs_for

    epochs = sum(epochs_for(params, run) * (run.fraction if run.fraction < 1 else 1.0) for run in batch.runs)
    return max(5, round(params.active.minutes_per_epoch * epochs * 1.2) + 5)


def _resource(workflow, name: str) -> int | None:
    value = workflow.global_resources.get(name)
    value = getattr(value, "value", value)  # Snakemake 9 wraps each in a Resource
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def plan_slots(workflow, params: Params) -> int:
    """Training jobs Snakemake runs at once: its ``gpu`` resource where the jobs use a GPU,
    else its cores over runtime.threads."""
    if gpu_request(params.runtime.device, workflow.local_exec):
        return max(1, _resource(workflow, "gpu") or 1)
    return max(1, all_cores(workflow) // max(1, params.runtime.threads))


def lanes(workflow, params: Params) -> int:
    """The lanes :func:`cnnvit.batch.grouped` decides by: this machine's slots (its cores over
    runtime.threads, or its GPUs x runs_per_gpu), not ``--cores``, so that a ``snakemake -n
    --cores 1`` after ``--cores all`` sees the same jobs (a job's runs are a param: another
    grouping would re-run them); on a cluster, the jobs Snakemake may queue (``--jobs``)."""
    if not workflow.local_exec:
        return max(1, getattr(workflow.resource_settings, "nodes", None) or 1)
    from cnnvit.training.device import slots

    return slots(params.runtime)


def print_plan(workflow, params: Params) -> str | None:
    """Print ``cnnvit plan``'s forecast for this run (measurements cached under .snakemake/);
    the error line, if the settings cannot run here (a precision or device this machine lacks)."""
    import subprocess

    if not workflow.local_exec:
        print("plan: the jobs go to a cluster; for a forecast, run `uv run cnnvit plan` on one of its nodes")
        return None
    from cnnvit import progress

    cmd = ["cnnvit", "plan", "--params", PARAMS_SNAPSHOT, "--cache", str(Path(PARAMS_SNAPSHOT).parent)]
    cmd += ["--slots", str(plan_slots(workflow, params)), "--progress", RUNS_DIR]
    proc = subprocess.run(cmd, stderr=subprocess.PIPE, text=True)
    if proc.returncode:
        lines = proc.stderr.strip().splitlines() or [f"cnnvit plan failed (exit {proc.returncode})"]
        return lines[-1].removeprefix("error: ")
    # every job started from here (and their epochs' pipeline line) finds the forecast the plan kept
    kept = (Path(RUNS_DIR) / progress.FILE).resolve()
    os.environ[progress.ENV] = str(kept)
    longest_first(workflow, kept)
    return None


# Each run's forecast seconds (the plan's), by run name: the training jobs' priorities.
FORECAST_S: dict[str, float] = {}


def expected_s(batch: Batch) -> float:
    """A batch's Snakemake priority: its runs' forecast seconds (0 before the plan has measured;
    not rounded, a tiny preset's runs take fractions of a second)."""
    return sum(FORECAST_S.get(run.name, 0.0) for run in batch.runs)


def longest_first(workflow, kept: Path) -> None:
    """Start the longest trainings first, as the plan's makespan packs them: with Snakemake's
    order, short jobs went first and left one long training to a lane alone at the end (the laptop
    preset: a core idle for 12 of 86 minutes). Snakemake computes the priorities with the DAG,
    before ``onstart`` has measured the models; they are computed again from the plan kept."""
    from cnnvit import progress

    FORECAST_S.clear()
    FORECAST_S.update(progress.kept(kept)["runs_s"])
    workflow.dag.update_priority()
