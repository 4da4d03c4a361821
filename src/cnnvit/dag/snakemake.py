"""What the Snakemake rules (``workflow/rules/*.smk``) take from the pipeline description.

    input:  S.inputs("collect", PARAMS, RUNS)
    output: **S.outputs("collect")           # marked with report() and directory() as described
    log:    S.log("collect")
    params: values=S.param_values("collect", PARAMS)   # what the params trigger compares
    shell:  S.command("collect") + " > {log} 2>&1"

Every job reads the config Snakemake validated at its start, written once (in ``onstart``) to
:data:`PARAMS_SNAPSHOT`, with the overrides given to Snakemake (``--config``) in it: editing
params.yaml during a run changes nothing for the jobs still to come. Also here: the GPU a training
job asks for, its memory and its time limit on a cluster.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from snakemake.io import directory, report

from cnnvit.dag import stages as S

PARAMS_SNAPSHOT = ".snakemake/cnnvit/params.yaml"

if TYPE_CHECKING:
    from cnnvit.config.types import Params, RunSpec


def inputs(stage: str, params: Params, runs: list[RunSpec] | None = None) -> list[str]:
    s = S.STAGES[stage]
    extra = local_source(S.get_key(params.raw, s.local_input)) if s.local_input else []
    return [*S.deps(stage, runs if s.reads_all_runs else None), *extra, *S.code_deps(stage)]


def outputs(stage: str) -> dict[str, Any]:
    """Named outputs (a per-run stage's hold the ``{run}`` wildcard), marked for ``--report``."""
    out = {}
    for o in S.STAGES[stage].outs:
        value: Any = directory(o.path) if o.directory else o.path
        if o.report:
            value = report(value, category=o.report, patterns=["{name}.png"] if o.directory else [])
        out[re.sub(r"\W", "_", Path(o.path).stem)] = value
    return out


def log(stage: str) -> str:
    return S.STAGES[stage].log


def command(stage: str, run: RunSpec | None = None) -> str:
    """The stage's command, reading the config snapshot Snakemake wrote at its start."""
    return f"{S.command(stage, run)} --params {PARAMS_SNAPSHOT}"


def param_values(stage: str, params: Params, run: RunSpec | None = None) -> dict:
    return S.job_params(stage, params.raw, run)


def write_snapshot(params: Params) -> Path:
    """The config Snakemake validated at its start, as the one file every job reads: editing
    params.yaml during a run cannot reach the jobs still to come (they would mix configs)."""
    from cnnvit.artifacts import write_text

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


def run_pattern(names) -> str:
    """A wildcard constraint that matches exactly these run names."""
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


def slurm_minutes(params: Params, run: RunSpec) -> int:
    """A time limit for a run: the preset's per-epoch estimate times its epochs, plus 20%."""
    from cnnvit.config.runs import epochs_for

    epochs = epochs_for(params, run) * (run.fraction if run.fraction < 1 else 1.0)
    return max(5, round(params.active.minutes_per_epoch * epochs * 1.2) + 5)
