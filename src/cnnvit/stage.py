"""What a pipeline stage declares about itself: the :class:`Stage` and :class:`Out` records.

Each stage module ``cnnvit/stages/<name>.py`` declares itself once, beside its ``run()``::

    STAGE = Stage(
        name="corrupt",
        help="the runs' test images -> CIFAR-10-C's corruptions of them",
        cmd=f"cnnvit corrupt --data-dir {paths.PREPARED_DIR} --out {paths.CORRUPTED}",
        deps=paths.PREPARED,
        outs=(Out(paths.CORRUPTED),),
        params=("preset", "presets.{preset}.test_size", "robustness"),
    )

The ``cnnvit`` command's subcommands, the Snakemake rules (``cnnvit snakemake-rules``) and
dvc.yaml (``cnnvit dvc-yaml``) are built from these declarations by :mod:`cnnvit.dag`, which
reads them from the modules' source without importing them (:mod:`cnnvit.dag.declared`): a
declaration is one expression of these two types, string and tuple literals, and the names of
:mod:`cnnvit.paths` and :mod:`cnnvit.runfiles`. This module imports nothing, so that reading a
declaration costs no import of torch or pandas.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

RUN = "{run}"  # stands for a run's name in a per-run stage's paths
BATCH = "{batch}"  # stands for a batch's name (the runs one job does) in a per-run stage's log
RUNS = "{runs}"  # stands for the options that name a job's runs in a per-run stage's command


@dataclass(frozen=True)
class Out:
    """One output of a stage, and how each tool treats it."""

    path: str
    cache: bool = True  # DVC keeps a copy in its cache
    metric: bool = False  # `dvc metrics show` lists it
    report: str | None = None  # its category in `snakemake --report`
    directory: bool = False


@dataclass(frozen=True, kw_only=True)
class Stage:
    """One stage of the pipeline: what it runs, reads and writes, and how its jobs are scheduled."""

    name: str  # its subcommand, its module (cnnvit.stages.<name>), its rule and its DVC stage
    help: str  # one line for `cnnvit --help`
    cmd: str  # the command both tools run; a per-run stage's holds {runs}
    deps: tuple[str, ...] = ()  # the data files it reads; its code and params are added by cnnvit.dag
    outs: tuple[Out, ...] = ()
    # Dotted params keys it reads, at the granularity that should re-run it: {preset}, {model} and
    # {recipe} stand for the active preset and a job's model and recipe; runs.K is the active
    # preset's (presets.<p>.runs.K over runs.K). A test records the keys a tiny run of the stage
    # reads and holds the two equal (tests/test_stage_params.py).
    params: tuple[str, ...] = ()
    per_run: bool = False  # a job per batch of runs (Snakemake), or one over every run (DVC)
    fraction_params: tuple[str, ...] = ()  # what a run on a fraction of the training set reads too
    reads_all_runs: tuple[str, ...] = ()  # per-run stages whose outputs, for every run, it reads
    local_input: str | None = None  # a params key naming a file; when it is a local path, an input too
    # The code whose change re-runs it (cnnvit.dag.code): its module's imports, or for training
    # exactly what sets a run's numbers (cnnvit.code_identity).
    code: Literal["imports", "training"] = "imports"
    # How a job is scheduled (Snakemake): on a GPU slot where one can be used (it runs a model),
    # with one thread, runtime.threads, or every core (a job that times things runs alone); the
    # option that passes the thread count Snakemake gave it; and whether a cluster sizes the job
    # from its runs (the preset's mem_mb, its epochs x minutes_per_epoch) instead of the defaults.
    device: bool = False
    threads: Literal["one", "runtime", "all"] = "one"
    threads_option: str | None = None
    sized_by_runs: bool = False
    # Snakemake's priority: what can fail fast (the download, its checksum) goes first, a job that
    # only times things last, so a wrong URL is found in seconds, not after minutes of timing
    priority: int = 0
    # A per-run stage whose jobs start longest first (their runs' forecast seconds, from the plan)
    longest_first: bool = False

    @property
    def module(self) -> str:
        return f"cnnvit.stages.{self.name}"

    @property
    def log(self) -> str:
        return f"logs/{self.name}/{BATCH}.log" if self.per_run else f"logs/{self.name}.log"


__all__ = ["BATCH", "RUN", "RUNS", "Out", "Stage"]
