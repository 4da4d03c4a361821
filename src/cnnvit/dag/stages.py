"""The pipeline, described once: every stage's command, inputs, outputs, code and params keys.

    download -> prepare -> train (one job per run) -> collect -> figures -> report

The Snakemake rules (``workflow/rules/*.smk``) take their paths, commands and params from here,
the stage commands take their default paths from here, and ``dvc.yaml`` is *generated* from here
by ``cnnvit dvc-yaml`` (:mod:`cnnvit.dag.dvc`; a test checks the committed file is what it
generates). Generated rather than checked, because DVC's matrix can only name runs with one
pattern, and the fraction runs need another: see :mod:`cnnvit.dag.dvc`.

Each stage depends on the source files it runs (its module's imports within ``cnnvit``, found
by reading them), so a code change re-runs exactly the stages that run that code, in both tools.
Adding a run dimension means touching this module, params.yaml and the schema.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from cnnvit.config.types import Params, RunSpec
from cnnvit.dag.code import code_files
from cnnvit.dag.paths import (
    CHECKPOINT_DIR,
    FIGURES_DIR,
    METRICS,
    PREPARED,
    PREPARED_DIR,
    RAW,
    REPORT,
    RUN_FILES,
    RUNS_DIR,
    TABLES,
    TABLES_DIR,
    TEMPLATE,
)


def run_dir(run: RunSpec) -> str:
    return f"{RUNS_DIR}/{run.name}"


RUN_OUTPUT = {Path(f).stem: f"{RUNS_DIR}/{{run}}/{f}" for f in RUN_FILES}  # Snakemake's patterns for a run


__all__ = [
    "CHECKPOINT_DIR",
    "FIGURES_DIR",
    "METRICS",
    "PREPARED",
    "PREPARED_DIR",
    "RAW",
    "REPORT",
    "RUNS_DIR",
    "RUN_FILES",
    "TABLES",
    "TABLES_DIR",
    "TEMPLATE",
    "Stage",
    "code_deps",
    "jobs",
]


@dataclass(frozen=True)
class Stage:
    name: str
    module: str  # cnnvit.<module> runs it
    cmd: str  # with {model}, {recipe}, {seed}, {fraction} and {run_dir} for a run
    deps: tuple[str, ...]
    outs: tuple[str, ...]
    params: tuple[str, ...]  # dotted keys read; {profile}, {model} and {recipe} are filled in


_RUN_ARGS = "--model {model} --recipe {recipe} --seed {seed}"
_TRAIN_PARAMS = (
    "profile",
    "profiles.{profile}.train_size",
    "profiles.{profile}.test_size",
    "profiles.{profile}.epochs",
    "profiles.{profile}.models.{model}",
    "recipes.{recipe}",
    "runtime.precision",
)
STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        Stage(
            "download",
            "download",
            f"cnnvit download --out {RAW}",
            (),
            (RAW,),
            ("data.url", "data.md5", "data.sha256", "data.format"),
        ),
        Stage(
            "prepare",
            "prepare",
            f"cnnvit prepare --raw {RAW} --out-dir {PREPARED_DIR}",
            (RAW,),
            PREPARED,
            ("data.format", "data.expect_train", "data.expect_test"),
        ),
        Stage(
            "train",
            "train",
            f"cnnvit train {_RUN_ARGS}{{fraction_arg}} --data-dir {PREPARED_DIR} --out-dir {{run_dir}} "
            f"--ckpt-dir {CHECKPOINT_DIR}",
            PREPARED,
            tuple(f"{{run_dir}}/{f}" for f in RUN_FILES),
            _TRAIN_PARAMS,
        ),
        Stage(
            "collect",
            "collect",
            f"cnnvit collect --runs-dir {RUNS_DIR} --out-dir {TABLES_DIR} --metrics {METRICS}",
            (RUNS_DIR,),
            (*TABLES, METRICS),
            ("profile", "runs", "profiles.{profile}", "recipes", "runtime.precision"),
        ),
        Stage(
            "figures",
            "figures",
            f"cnnvit figures --tables-dir {TABLES_DIR} --out-dir {FIGURES_DIR}",
            TABLES,
            (FIGURES_DIR,),
            (),
        ),
        Stage(
            "report",
            "report",
            f"cnnvit report --tables-dir {TABLES_DIR} --figures-dir {FIGURES_DIR} --template {TEMPLATE} --out {REPORT}",
            (*TABLES, FIGURES_DIR, TEMPLATE),
            (REPORT,),
            ("profile", "data", "runs", "runtime", "recipes", "profiles.{profile}"),
        ),
    )
}


# ----------------------------------------------------------------------------- code dependencies


def code_deps(stage: str) -> tuple[str, ...]:
    """The source files (and package data) that ``stage`` runs, as paths from the project root.
    Every command loads params.yaml through the config loader, so that is in too."""
    return code_files(f"cnnvit.stages.{STAGES[stage].module}", "cnnvit.config.load")


# ----------------------------------------------------------------------------- expanding the DAG


def param_keys(stage: str, profile: str, model: str = "", recipe: str = "") -> list[str]:
    return [k.format(profile=profile, model=model, recipe=recipe) for k in STAGES[stage].params]


def get_key(cfg: dict, dotted: str):
    node = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _canonical(value):
    """Sorted keys all the way down: the same config in another key order is the same params."""
    return json.loads(json.dumps(value, sort_keys=True))


def param_values(cfg: dict, stage: str, model: str = "", recipe: str = "") -> dict:
    """The values ``stage`` reads, by dotted key: what Snakemake's params trigger compares."""
    return {k: _canonical(get_key(cfg, k)) for k in param_keys(stage, cfg["profile"], model, recipe)}


def train_params(run: RunSpec) -> list[str]:
    """A fraction run also reads how its epochs are budgeted."""
    return list(_TRAIN_PARAMS) + (["runs.fraction_budget"] if run.fraction < 1 else [])


def run_param_keys(profile: str, run: RunSpec) -> list[str]:
    return [k.format(profile=profile, model=run.model, recipe=run.recipe) for k in train_params(run)]


def run_param_values(cfg: dict, run: RunSpec) -> dict:
    return {k: _canonical(get_key(cfg, k)) for k in run_param_keys(cfg["profile"], run)}


def run_fields(run: RunSpec) -> dict:
    fraction_arg = f" --fraction {run.fraction}" if run.fraction < 1 else ""
    return {
        "model": run.model,
        "recipe": run.recipe,
        "seed": run.seed,
        "fraction_arg": fraction_arg,
        "run_dir": run_dir(run),
    }


def command(stage: str, run: RunSpec | None = None) -> str:
    return STAGES[stage].cmd.format(**(run_fields(run) if run else {}))


def outputs(stage: str, run: RunSpec | None = None) -> list[str]:
    return [o.format(**(run_fields(run) if run else {})) for o in STAGES[stage].outs]


@dataclass(frozen=True)
class Job:
    stage: str
    cmd: str
    deps: tuple[str, ...]
    outs: tuple[str, ...]
    params: tuple[str, ...]


def jobs(params: Params) -> list[Job]:
    """Every job of the DAG for these params, as both tools should run it."""
    out = []
    for name in STAGES:
        runs = params.runs() if name == "train" else [None]
        for run in runs:
            keys = param_keys(name, params.profile) if run is None else run_param_keys(params.profile, run)
            deps = (*STAGES[name].deps, *code_deps(name))
            out.append(Job(name, command(name, run), deps, tuple(outputs(name, run)), tuple(keys)))
    return out


def set_overrides(base: dict, cfg: dict, keys: list[str]) -> list[str]:
    """``--set`` items (sorted, so the same config always gives the same command) that turn the
    params file ``base`` into ``cfg`` for the dotted ``keys`` a stage reads."""

    def flat(d, prefix=""):
        if not isinstance(d, dict) or not d:
            return {prefix: d}
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out

    fb, fc = flat(base), flat(cfg)
    items = [f"{k}=null" for k in fb if k not in fc]
    items += [f"{k}={json.dumps(v, separators=(',', ':'))}" for k, v in fc.items() if k not in fb or fb[k] != v]
    touches = lambda item, k: (key := item.split("=", 1)[0]) == k or key.startswith(k + ".") or k.startswith(key + ".")  # noqa: E731
    return sorted(i for i in items if any(touches(i, k) for k in keys))


def set_flags(base: dict, cfg: dict, keys: list[str]) -> str:
    """The ``--set`` flags, shell-quoted, that pass Snakemake's config overrides to a command."""
    return " ".join(f"--set {shlex.quote(item)}" for item in set_overrides(base, cfg, keys))


def run_pattern(names) -> str:
    """A wildcard constraint that matches exactly these run names."""
    return "|".join(re.escape(name) for name in names)


def run_outputs(runs) -> list[str]:
    return [pattern.format(run=run) for run in runs for pattern in RUN_OUTPUT.values()]


def gpu_request(device: str, local_exec: bool) -> int:
    """1 when a training job can use CUDA (runtime.device cuda, or auto on a cluster or on a machine
    with an NVIDIA GPU), else 0, so CPU-only machines and clusters never ask for a GPU."""
    from cnnvit.training.device import gpu_count

    if device == "cpu":
        return 0
    if device == "cuda" or not local_exec:
        return 1
    return 1 if gpu_count() else 0


def local_source(url: str) -> list[str]:
    """The archive (or directory) itself as an input when data.url is a local path."""
    from cnnvit.stages.download import local_path

    path = local_path(url)
    return [str(path)] if path is not None and path.exists() else []


def slurm_minutes(params: Params, run: RunSpec) -> int:
    """A time limit for a run: the profile's per-epoch estimate times its epochs, plus 20%."""
    cfg = params.run_config(run)
    epochs = cfg.epochs * (run.fraction if run.fraction < 1 else 1.0)
    return max(5, round(params.active.minutes_per_epoch * epochs * 1.2) + 5)
