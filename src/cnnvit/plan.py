"""``cnnvit plan``: what the active preset's runs will cost on this machine, before any of it runs.

    cnnvit plan [--jobs snakemake|dvc] [--slots N] [--cache DIR] [--out plan.json]

For each model: forward FLOPs per image (``torch.utils.flop_counter``), the images its runs train
on, the training PFLOP (3x forward per trained image, 1x per evaluated one) and the time of one
optimizer step measured here: the trainer's own step (augmentation, forward, backward, optimizer)
on random images, a few steps per model. On a GPU the step runs at the recipe's batch size; on a
CPU at a batch small enough for about a second a step, scaled per image (a CPU's throughput
barely depends on the batch). The measurement is eager (``runtime.compile`` is not applied: its
compilation would take longer than the plan), in the run's precision.

The forecast adds each job's time (its runs' training, per-epoch evaluation and corruption
benchmark, plus the start-up this process measured: imports, model build) and packs the jobs
longest-first onto the slots that run at once: Snakemake's batches onto ``--slots`` (its cores
over runtime.threads on a CPU, its ``gpu`` resource on a GPU), DVC's runs onto its workers.
Runs that share a GPU (``runtime.runs_per_gpu``) are given as a range: from no gain (one run
per GPU at a time) to no loss (each as fast as alone). The light stages (download, prepare,
figures) are not in it. On a CPU, a forecast over two hours ends in a warning naming the quick
preset. Snakemake prints this at its start (``onstart``), from a cache of the measurements
keyed by everything they depend on; DVC's train stage prints it before it trains.
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import time
from dataclasses import dataclass
from pathlib import Path

from cnnvit.config.types import Params, RunSpec

CPU_STEP_BUDGET_FLOP = 3e10  # ~1 s of a CPU thread: the measured batch's 3 x forward FLOPs
CPU_WARNING_S = 2 * 3600
EVAL_COST = 1 / 3  # an evaluated image costs a third of a trained one (forward only)


@dataclass(frozen=True)
class Measured:
    flops: int  # forward FLOPs of one image
    batch: int  # the batch the step was timed at
    step_s: float  # seconds of one optimizer step at that batch

    @property
    def image_s(self) -> float:
        return self.step_s / self.batch


def _key(params: Params, model: str, batch: int) -> str:
    import torch

    what = [params.active.models[model], batch, params.runtime.device, params.runtime.precision]
    what += [params.runtime.threads, torch.__version__, platform.node(), platform.processor()]
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]


def measure(params: Params, model: str, recipe: str, steps: int = 4) -> tuple[Measured, str]:
    """Time the trainer's step for ``model`` under ``recipe`` on random images; and the device,
    with the precision the run would resolve to there."""
    import torch

    from cnnvit.config.runs import run_config
    from cnnvit.models import flops_per_image
    from cnnvit.training.data import Prepared, Split
    from cnnvit.training.device import resolve_precision, select_device, use_precision
    from cnnvit.training.engine import Trainer

    device, device_name = select_device(params.runtime.device, params.runtime.runs_per_gpu)
    precision = resolve_precision(params.runtime.precision, device)
    use_precision(precision, device)
    torch.set_num_threads(params.runtime.threads)
    cfg = run_config(params, RunSpec(model, recipe, 0))
    probe = cfg.model.build()
    flops = flops_per_image(probe, "cpu")
    batch = cfg.recipe.batch_size
    if device.type == "cpu":
        batch = max(2, min(batch, int(CPU_STEP_BUDGET_FLOP / (3 * max(flops, 1)))))
    images = torch.randint(0, 256, (batch * steps, 3, 32, 32), dtype=torch.uint8, device=device)
    labels = torch.randint(0, 10, (batch * steps,), device=device)
    split = Split(images, labels)
    data = Prepared(split, split, split, {"mean": [0.5] * 3, "std": [0.25] * 3}, [str(i) for i in range(10)])
    trainer = Trainer(cfg, data, device)
    trainer.batch_size = batch
    trainer.steps_per_epoch = steps
    trainer.train_epoch(1, max_steps=2)  # warm-up: allocations, cuDNN's algorithm search
    row = trainer.train_epoch(2, max_steps=steps)
    return Measured(flops, batch, row["epoch_seconds"] / steps), f"{device_name}, {precision}"


def measure_all(params: Params, runs: list[RunSpec], cache: Path | None = None) -> tuple[dict, str, float]:
    """(model -> Measured, the device's name, this process's start-up seconds), measuring only
    what ``cache`` does not hold for these settings and this machine."""
    import cnnvit.stages.train  # noqa: F401  # what a training job imports first: torch, timm, the models
    from cnnvit import START

    startup = time.perf_counter() - START
    out, device = {}, ""
    path = cache / "plan-cache.json" if cache else None
    stored = json.loads(path.read_text()) if path and path.exists() else {}
    for model in dict.fromkeys(r.model for r in runs):
        recipe = next(r.recipe for r in runs if r.model == model)
        key = _key(params, model, params.recipes[recipe].batch_size)
        if key in stored:
            m, device = Measured(**stored[key]["measured"]), stored[key]["device"]
        else:
            m, device = measure(params, model, recipe)
            stored[key] = {"measured": m.__dict__, "device": device, "startup_s": startup}
        startup = stored[key].get("startup_s", startup)
        out[model] = m
    if path:
        from cnnvit.artifacts import write_json

        write_json(path, stored)
    return out, device, startup


def run_seconds(params: Params, run: RunSpec, m: Measured) -> tuple[float, float, int]:
    """(training seconds incl. its per-epoch evaluation, corruption-benchmark seconds, trained
    images) of one run, from its measured per-image time."""
    from cnnvit.config.runs import epochs_for

    p, d = params.active, params.data
    n_train = round((p.train_size or max(0, d.expect_train - d.val_size)) * run.fraction)
    epochs = epochs_for(params, run)
    every = max(1, round(run.fraction**-1)) if epochs > 1 and run.fraction < 1 else 1
    evaluated = math.ceil(epochs / every) * ((p.val_size or d.val_size) + (p.test_size or d.expect_test))
    corrupted = (p.robustness_images or p.test_size or d.expect_test) * (
        1 + len(params.robustness.corruptions) * len(params.robustness.severities)
    )
    trained = n_train * epochs
    return (trained + EVAL_COST * evaluated) * m.image_s, EVAL_COST * corrupted * m.image_s, trained


def makespan(durations: list[float], slots: int) -> float:
    """Longest-first onto the least-loaded of ``slots`` lanes: when the last job ends."""
    lanes = [0.0] * max(1, slots)
    for d in sorted(durations, reverse=True):
        lanes[lanes.index(min(lanes))] += d
    return max(lanes)


def fmt_duration(seconds: float) -> str:
    if seconds >= 2 * 86400:
        return f"{seconds / 86400:.1f} days"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def forecast(
    params: Params, runs: list[RunSpec], measured: dict, startup: float, jobs: str, slots: int, device: str
) -> dict:
    """Training PFLOP, per-model figures and the forecast wall time (a low-high range where runs
    share a GPU) of ``runs`` run as ``jobs`` (snakemake or dvc) on ``slots`` at once."""
    from cnnvit.batch import batches

    per_run = {run: run_seconds(params, run, measured[run.model]) for run in runs}
    models: dict[str, dict] = {}
    for run, (train_s, corrupt_s, trained) in per_run.items():
        m = measured[run.model]
        row = models.setdefault(
            run.model,
            {"runs": 0, "gflop_per_image": m.flops / 1e9, "step_ms": 1e3 * m.step_s, "batch": m.batch, "pflop": 0.0,
             "hours": 0.0},
        )  # fmt: skip
        row["runs"] += 1
        row["pflop"] += 3 * m.flops * trained / 1e15
        row["hours"] += (train_s + corrupt_s) / 3600
    if jobs == "snakemake":
        groups = [[r for r in b.runs if r in per_run] for b in batches(params)]
        durations = [startup + sum(per_run[r][k] for r in g) for g in groups if g for k in (0, 1)]
        n_jobs = len(durations)
    else:  # DVC: two stages one after the other, each a pool of workers that start once
        durations = []
        n_jobs = 2
    share = params.runtime.runs_per_gpu if device.startswith("cuda") else 1
    wall = []
    for lanes in sorted({max(1, slots // share), slots}):
        if jobs == "snakemake":
            wall.append(makespan(durations, lanes))
        else:
            wall.append(sum(startup + makespan([per_run[r][k] for r in per_run], lanes) for k in (0, 1)))
    return {
        "preset": params.preset,
        "device": device,
        "trainings": len(runs),
        "pflop": sum(m["pflop"] for m in models.values()),
        "models": models,
        "jobs": jobs,
        "job_count": n_jobs,
        "slots": slots,
        "startup_s": startup,
        "forecast_s": sorted(wall),
    }


def report_lines(plan: dict, params: Params) -> list[str]:
    r, device = params.runtime, plan["device"]
    lines = [
        f"plan: preset {plan['preset']}, {plan['trainings']} trainings, {plan['pflop']:.3g} PFLOP of training, "
        f"on {device} ({r.threads} thread(s) a run)",
        f"  {'model':<16}{'runs':>5}{'GFLOP/img':>11}{'PFLOP':>10}{'step (measured)':>20}{'runs take':>12}",
    ]
    for name, m in plan["models"].items():
        step = f"{m['step_ms']:.1f} ms @{m['batch']}"
        took = fmt_duration(3600 * m["hours"])
        lines.append(f"  {name:<16}{m['runs']:>5}{m['gflop_per_image']:>11.3g}{m['pflop']:>10.3g}{step:>20}{took:>12}")
    low, high = plan["forecast_s"][0], plan["forecast_s"][-1]
    span = fmt_duration(low) if low == high else f"{fmt_duration(low)} to {fmt_duration(high)}"
    start = f"{plan['startup_s']:.0f} s start-up a"
    if plan["jobs"] == "dvc":
        how = f"DVC's train and evaluate stages, {plan['slots']} workers each, {start} stage"
    else:
        how = f"{plan['job_count']} snakemake jobs, {plan['slots']} at once, {start} job"
    lines.append(f"  forecast: {span} for training and evaluation ({how}; the light stages are extra)")
    if device.startswith("cpu") and high > CPU_WARNING_S:
        lines.append(
            f"warning: that is {fmt_duration(high)} on this machine's CPU. For a look at the whole pipeline in "
            "minutes, run the quick preset: `snakemake --cores all --config preset=quick` or "
            "`dvc exp run -S preset=quick`; the paper preset wants a GPU"
        )
    return lines


def plan(params: Params, runs: list[RunSpec], jobs: str, slots: int, cache: Path | None = None) -> dict:
    measured, device, startup = measure_all(params, runs, cache)
    return forecast(params, runs, measured, startup, jobs, slots, device)


def _plan_lines(params: Params, runs: list[RunSpec], jobs: str, slots: int, cache: Path | None) -> list[str]:
    return report_lines(plan(params, runs, jobs, slots, cache), params)


def print_forecast(params: Params, runs: list[RunSpec], workers: int) -> None:
    """The forecast of DVC's train stage, measured in a child process: this one forks its workers
    next, and must not have started torch's thread pools (or CUDA) before that."""
    from cnnvit.batch import _context

    cache = Path(".dvc/tmp/cnnvit") if Path(".dvc").is_dir() else None
    with _context().Pool(1) as pool:
        lines = pool.apply(_plan_lines, (params, runs, "dvc", workers, cache))
    print("\n".join(lines), flush=True)


def add_args(p) -> None:
    p.add_argument("--jobs", choices=["snakemake", "dvc"], default="snakemake", help="how the runs are run")
    p.add_argument("--slots", default="auto", help="jobs at once: a number, or auto (this machine's slots)")
    p.add_argument("--cache", default=None, help="a folder to keep the measurements in, for the next plan")
    p.add_argument("--out", default=None, help="also write the plan as JSON here")


def run(args, params: Params) -> None:
    from cnnvit.batch import worker_count

    runs = params.all_runs()
    slots = worker_count(args.slots, params, 10**6)
    got = plan(params, runs, args.jobs, slots, Path(args.cache) if args.cache else None)
    print("\n".join(report_lines(got, params)), flush=True)
    if args.out:
        from cnnvit.artifacts import write_json

        write_json(args.out, got)
