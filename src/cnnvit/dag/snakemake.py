"""What the Snakemake rules (``workflow/rules/*.smk``) take from the pipeline description.

    input:  S.inputs("collect", PARAMS, RUNS)
    output: **S.outputs("collect")           # marked with report() and directory() as described
    log:    S.log("collect")
    params: values=S.param_values("collect", PARAMS), sets=S.set_flags("collect", BASE, PARAMS)

Overrides given to Snakemake (``--config``) reach each command as ``--set`` flags, limited to the
keys that command reads, so the outputs always match the config Snakemake validated. Also here:
the GPU a training job asks for, and its time limit on a cluster.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

from snakemake.io import directory, report

from cnnvit.dag import stages as S

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
    return S.command(stage, run)


def param_values(stage: str, params: Params, run: RunSpec | None = None) -> dict:
    return S.job_params(stage, params.raw, run)


def set_overrides(base: dict, cfg: dict, keys: list[str]) -> list[str]:
    """``--set`` items (sorted, so the same config always gives the same command) that turn the
    params file ``base`` into ``cfg`` for the dotted ``keys`` a stage reads."""

    def flat(d: Any, prefix: str = "") -> dict[str, Any]:
        if not isinstance(d, dict) or not d:
            return {prefix: d}
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out

    fb, fc = flat(base), flat(cfg)
    items = [f"{k}=null" for k in fb if k not in fc]
    items += [f"{k}={json.dumps(v, separators=(',', ':'))}" for k, v in fc.items() if k not in fb or fb[k] != v]

    def touches(item: str, key: str) -> bool:
        name = item.split("=", 1)[0]
        return name == key or name.startswith(key + ".") or key.startswith(name + ".")

    return sorted(i for i in items if any(touches(i, k) for k in keys))


def set_flags(stage: str, base: dict, params: Params, run: RunSpec | None = None) -> str:
    """The ``--set`` flags, shell-quoted, that pass Snakemake's config overrides to a command."""
    keys = list(S.job_params(stage, params.raw, run))
    return " ".join(f"--set {shlex.quote(item)}" for item in set_overrides(base, params.raw, keys))


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
