"""Train stage: model x recipe x fraction x seed runs, each resumable and deterministic.

    cnnvit train --model vit --recipe paper --seeds 0 1 2 [--fraction 0.2] --data-dir data/prepared \
        --runs-dir results/runs --ckpt-dir results/checkpoints [--threads 2]
    cnnvit train --all-runs --workers auto ...     # every run of params.yaml, N at a time

Which runs, and how many at once: :mod:`cnnvit.batch` (a Snakemake job trains the seeds of one
model x recipe x fraction in turn; DVC's one train stage trains every run, a worker per slot).

Each run is :func:`cnnvit.training.engine.train_run`: the epoch loop, the checkpoints (in
``--ckpt-dir``, outside the DAG's declared outputs, which Snakemake and DVC delete before a re-run),
and the run's files in ``--runs-dir/<run>``: ``metrics.csv`` (one row per evaluated epoch,
:data:`cnnvit.runfiles.METRICS`), ``summary.json`` (:class:`cnnvit.runfiles.RunSummary`), the
per-image predictions and the selected epoch's weights, all written when the run finishes. The
same command after a crash resumes; a finished run is re-emitted, not retrained, unless its
params, data or training code changed (:mod:`cnnvit.training.checkpoint`).
"""

from __future__ import annotations

import functools
from pathlib import Path

from cnnvit import paths
from cnnvit.batch import add_run_args, checked_runs, run_each, worker_count
from cnnvit.config.runs import run_config
from cnnvit.config.types import Params, RunSpec
from cnnvit.errors import positive_int
from cnnvit.runfiles import RUN_FILES, RunSummary
from cnnvit.stage import RUN, RUNS, Out, Stage
from cnnvit.training.engine import train_run

STAGE = Stage(
    name="train",
    help="train model/recipe/fraction/seed runs",
    cmd=f"cnnvit train {RUNS} --data-dir {paths.PREPARED_DIR} --runs-dir {paths.RUNS_DIR} "
    f"--ckpt-dir {paths.CHECKPOINT_DIR}",
    deps=paths.PREPARED,
    outs=tuple(Out(f"{paths.RUNS_DIR}/{RUN}/{f}") for f in RUN_FILES),
    params=(
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
    code="training",
    device=True,
    threads="runtime",
    threads_option="--threads",
    sized_by_runs=True,
    longest_first=True,
)


def add_args(p) -> None:
    add_run_args(p)
    p.add_argument("--data-dir", default=paths.PREPARED_DIR)
    p.add_argument("--runs-dir", default=paths.RUNS_DIR, help="each run's files go to <runs-dir>/<run name>")
    p.add_argument("--ckpt-dir", default=paths.CHECKPOINT_DIR)
    p.add_argument("--threads", type=positive_int, default=None, help="CPU threads a run (default runtime.threads)")


def train_one(run: RunSpec, params: Params, data_dir, runs_dir, ckpt_dir, threads: int | None) -> RunSummary:
    """Train one run of ``params`` and say how it went (what each worker does)."""
    cfg = run_config(params, run)
    out_dir = Path(runs_dir) / cfg.name
    s = train_run(cfg, data_dir, out_dir, ckpt_dir, threads)
    if s.diverged:
        print(f"warning: {cfg.name} diverged: {s.diverged}; lower recipes.{cfg.run.recipe}.lr or set a grad_clip")
    print(
        f"{cfg.name}: test acc {s.selected_test_acc:.2f}% at epoch {s.selected_epoch} (chosen on validation), "
        f"final {s.final_test_acc:.2f}%, {s.train_seconds:.0f}s of training ({s.wall_seconds:.0f}s with "
        f"evaluation) -> {out_dir}",
        flush=True,
    )
    return s


def run(args, params: Params) -> None:
    runs = checked_runs(args, params)
    workers = worker_count(args.workers, params, len(runs))
    if args.all_runs:
        from cnnvit.plan import print_forecast

        forecast = print_forecast(params, runs, workers, Path(args.runs_dir))["runs_s"]
        # longest first, as the plan packs them (and Snakemake's jobs start): no worker is left
        # with one long run at the end
        runs = sorted(runs, key=lambda run: -forecast.get(run.name, 0.0))
    fn = functools.partial(
        train_one, params=params, data_dir=args.data_dir, runs_dir=args.runs_dir, ckpt_dir=args.ckpt_dir,
        threads=args.threads,
    )  # fmt: skip
    run_each(fn, runs, workers)
