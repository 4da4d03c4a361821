"""``cnnvit plan``: what the active preset's runs will cost on this machine, before any of it runs.

    cnnvit plan [--jobs snakemake|dvc] [--slots N] [--cache DIR] [--out plan.json]

For each model: forward FLOPs per image (``torch.utils.flop_counter``), the images its runs train
on, the training PFLOP (3x forward per trained image) and three times measured here on random
images, each with the trainer's own code, eager and in the run's precision: an optimizer step
(augmentation, forward, backward, optimizer), an evaluation pass (per image, at
``runtime.eval_batch_size``), and the write of a checkpoint of the run's size (model, optimizer,
the kept weights) beside the cache. On a GPU the step runs at the recipe's batch size; on a CPU at
a batch small enough for about a second a step, scaled per image (a CPU's throughput barely
depends on the batch).

The forecast is of the whole DAG, itemised in job-seconds: optimizer steps; per-epoch validation
and test passes; the robustness evaluation (every corrupted set through each run's weights);
checkpoint writes (after a run's first evaluated epoch, every ``runtime.checkpoint_every_s`` of
training, and at its end); compilation (``runtime.compile``: assumed, see ``COMPILE_S``, since
compiling here would take longer than the plan; ``gpu_check.sh`` measures it); each job's
start-up as this process measured it (imports, model build); and the light stages (prepare,
corrupt, cost, collect, figures, report: estimates from a measured quick run on a 2-core CPU,
scaled by their sizes; the download is not counted, it is the network's). The jobs are packed
longest-first onto the slots that run at once (Snakemake's batches and the corrupt and cost jobs
onto ``--slots``: its cores over runtime.threads on a CPU, its ``gpu`` resource on a GPU; DVC's
stages one after another, its runs onto the workers), between prepare before them and collect,
figures and report after. Runs that share a GPU (``runtime.runs_per_gpu``) are given as a range:
from no gain (one run per GPU at a time) to no loss. A GPU-sized preset forecast over two hours
on a CPU ends in a warning naming the laptop preset, a preset forecast past 1.5 times its
``budget_minutes`` in a warning with the forecast. Snakemake prints this at its start (``onstart``), from a
cache of the measurements keyed by everything they depend on; DVC's train stage prints it before
it trains.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from cnnvit.config.types import Params, RunSpec

CPU_STEP_BUDGET_FLOP = 3e10  # ~1 s of a CPU thread: the measured batch's 3 x forward FLOPs
CPU_WARNING_S = 2 * 3600  # a GPU-sized preset on a CPU beyond this is told of the laptop preset
BUDGET_SLACK = 1.5  # a preset forecast past this multiple of its budget_minutes warns
# torch.compile (inductor) of one model's training step: its first process, and a later one that
# finds inductor's on-disk cache warm. Assumed (a cold compile of a paper-size model takes about a
# minute on a GPU machine's CPUs); gpu_check.sh's compile rows measure it.
COMPILE_S = {"first": 60.0, "warm": 15.0}
# The light stages' job-seconds, start-up included, from `snakemake --config preset=quick` on a
# 2-core CPU (README): fixed parts, and the per-unit parts that grow with the preset.
LIGHT_S = {"prepare": 22.0, "collect": 4.0, "figures": 12.0, "report": 4.0}
CORRUPT_S = (3.0, 0.3e-3)  # start-up, and seconds per corrupted image
COST_S = (5.0, 35)  # start-up, and the batch-1 forward passes of each model x size (warm-up + timed)
MEASURE_VERSION = 2  # of the cached measurements' fields


@dataclass(frozen=True)
class Measured:
    flops: int  # forward FLOPs of one image
    batch: int  # the batch the step was timed at
    step_s: float  # seconds of one optimizer step at that batch
    eval_image_s: float  # seconds of one image of an evaluation pass
    checkpoint_s: float  # seconds to write one checkpoint of the run's size

    @property
    def image_s(self) -> float:
        return self.step_s / self.batch


def _key(params: Params, model: str, batch: int) -> str:
    import torch

    r = params.runtime
    what = [MEASURE_VERSION, params.active.models[model], batch, r.device, r.precision, r.eval_batch_size]
    what += [r.threads, torch.__version__, platform.node(), platform.processor()]
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]


def measure(params: Params, model: str, recipe: str, steps: int = 4, where: Path | None = None) -> tuple[Measured, str]:
    """Time the trainer's step, its evaluation and a checkpoint write for ``model`` under
    ``recipe`` on random images; and the device, with the precision the run would resolve to."""
    import torch

    from cnnvit.config.runs import run_config
    from cnnvit.models import flops_per_image
    from cnnvit.training import numerics
    from cnnvit.training.checkpoint import save
    from cnnvit.training.device import resolve_precision, select_device, use_precision
    from cnnvit.training.engine import Trainer
    from cnnvit.training.inputs import Prepared, Split

    device, device_name = select_device(params.runtime.device, params.runtime.runs_per_gpu)
    precision = resolve_precision(params.runtime.precision, device)
    use_precision(precision, device)
    torch.set_num_threads(params.runtime.threads)
    cfg = run_config(params, RunSpec(model, recipe, 0))
    cfg = dataclasses.replace(cfg, runtime=dataclasses.replace(cfg.runtime, compile=False))  # eager: see above
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
    eval_batch = min(len(split), numerics.eval_batch(params.runtime.eval_batch_size, device))
    trainer.evaluate(split, eval_batch)  # warm-up
    began = time.perf_counter()
    trainer.evaluate(split, eval_batch)
    eval_image_s = (time.perf_counter() - began) / len(split)
    with tempfile.TemporaryDirectory(dir=where if where and where.is_dir() else None) as tmp:
        began = time.perf_counter()
        save(Path(tmp) / "probe.pt", {"state": trainer.state(), "kept": {"selected_model": trainer.weights()}})
        checkpoint_s = time.perf_counter() - began
    measured = Measured(flops, batch, row["epoch_seconds"] / steps, eval_image_s, checkpoint_s)
    return measured, f"{device_name}, {precision}"


def measure_all(params: Params, runs: list[RunSpec], cache: Path | None = None) -> tuple[dict, str, float]:
    """(model -> Measured, the device's name, this process's start-up seconds), measuring only
    what ``cache`` does not hold for these settings and this machine."""
    import cnnvit.training.engine  # noqa: F401  # what a training job imports first: torch, timm, the models
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
            m, device = measure(params, model, recipe, where=cache)
            stored[key] = {"measured": m.__dict__, "device": device, "startup_s": startup}
        startup = stored[key].get("startup_s", startup)
        out[model] = m
    if path:
        from cnnvit.files import write_json

        write_json(path, stored)
    return out, device, startup


def checkpoint_writes(evaluations: int, train_s: float, every_s: float) -> int:
    """Checkpoints a run writes (as the train stage does): after its first evaluated epoch,
    after one ending ``every_s`` or more after the last, and the finished run's."""
    if evaluations <= 1:
        return 1
    between = evaluations - 2  # the evaluated epochs after the first and before the last
    if every_s > 0:
        between = min(between, int(train_s / every_s))
    return 2 + between


def run_parts(params: Params, run: RunSpec, m: Measured) -> dict[str, float]:
    """One run's job-seconds by part, from the measured times, and its trained images."""
    from cnnvit.config.runs import epochs_for

    p, d = params.active, params.data
    n_train = round((p.train_size or max(0, d.expect_train - d.val_size)) * run.fraction)
    epochs = epochs_for(params, run)
    every = max(1, round(run.fraction**-1)) if epochs > 1 and run.fraction < 1 else 1
    evaluations = math.ceil(epochs / every)
    evaluated = evaluations * ((p.val_size or d.val_size) + (p.test_size or d.expect_test))
    corrupted = (p.robustness_images or p.test_size or d.expect_test) * (
        1 + len(params.robustness.corruptions) * len(params.robustness.severities)
    )
    trained = n_train * epochs
    steps, evaluation = trained * m.image_s, evaluated * m.eval_image_s
    writes = checkpoint_writes(evaluations, steps + evaluation, params.runtime.checkpoint_every_s)
    return {
        "optimizer steps": steps,
        "per-epoch evaluation": evaluation,
        "checkpoints": writes * m.checkpoint_s,
        "robustness evaluation": corrupted * m.eval_image_s,
        "trained": float(trained),
        "writes": float(writes),
    }


TRAIN_PARTS = ("optimizer steps", "per-epoch evaluation", "checkpoints")


def light_stages(params: Params, measured: dict) -> dict[str, float]:
    p, d = params.active, params.data
    sets = len(params.robustness.corruptions) * len(params.robustness.severities)
    out = dict(LIGHT_S)
    out["corrupt"] = CORRUPT_S[0] + CORRUPT_S[1] * (p.robustness_images or p.test_size or d.expect_test) * sets
    cells = len(params.cost.sizes) * COST_S[1]
    out["cost"] = COST_S[0] + sum(
        cells * max(2e-3, m.eval_image_s) + params.cost.batch * (6 * m.eval_image_s + 3 * m.image_s)
        for m in measured.values()
    )
    return out


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
    """Training PFLOP, per-model figures, the job-seconds of each part, and the forecast wall time
    of the whole DAG (a low-high range where runs share a GPU) of ``runs`` run as ``jobs``
    (snakemake or dvc) on ``slots`` at once."""
    from cnnvit.batch import batches

    per_run = {run: run_parts(params, run, measured[run.model]) for run in runs}
    compiled = params.runtime.compile is not False
    models: dict[str, dict] = {}
    for run, part in per_run.items():
        m = measured[run.model]
        row = models.setdefault(
            run.model,
            {"runs": 0, "gflop_per_image": m.flops / 1e9, "step_ms": 1e3 * m.step_s, "batch": m.batch, "pflop": 0.0,
             "hours": 0.0},
        )  # fmt: skip
        row["runs"] += 1
        row["pflop"] += 3 * m.flops * part["trained"] / 1e15
        row["hours"] += sum(part[k] for k in (*TRAIN_PARTS, "robustness evaluation")) / 3600
    light = light_stages(params, measured)
    first_compile: set[str] = set()

    def compile_s(model: str) -> float:
        if not compiled:
            return 0.0
        warm = model in first_compile
        first_compile.add(model)
        return COMPILE_S["warm" if warm else "first"]

    if jobs == "snakemake":
        groups = [[r for r in b.runs if r in per_run] for b in batches(params, slots)]
        trains = [(g, compile_s(g[0].model)) for g in groups if g]
        durations = [startup + c + sum(per_run[r][k] for r in g for k in TRAIN_PARTS) for g, c in trains]
        durations += [startup + sum(per_run[r]["robustness evaluation"] for r in g) for g, _ in trains]
        n_jobs, starts, compiles = len(durations), len(durations), sum(c for _, c in trains)
        durations += [light["corrupt"], light["cost"]]  # beside the trainings, in the same lanes
        serial = light["prepare"] + light["collect"] + light["figures"] + light["report"]
    else:  # DVC: the stages one after another, train and evaluate each a pool of workers that start once
        n_jobs, starts = 2, 2
        each = {r: compile_s(r.model) for r in per_run}  # a worker's first run of a model compiles it cold
        compiles = sum(each.values())
        serial = sum(light.values())
    share = params.runtime.runs_per_gpu if device.startswith("cuda") else 1
    wall = []
    for lanes in sorted({max(1, slots // share), slots}):
        if jobs == "snakemake":
            wall.append(serial + makespan(durations, lanes))
        else:
            train = [sum(p[k] for k in TRAIN_PARTS) + each[r] for r, p in per_run.items()]
            evals = [p["robustness evaluation"] for p in per_run.values()]
            wall.append(serial + 2 * startup + makespan(train, lanes) + makespan(evals, lanes))
    lanes_used = max(1, slots // share)
    after = sum(p["robustness evaluation"] for p in per_run.values()) / lanes_used
    after += light["collect"] + light["figures"] + light["report"]
    parts = {k: sum(p[k] for p in per_run.values()) for k in (*TRAIN_PARTS, "robustness evaluation")}
    parts |= {"compile": compiles, "start-up": starts * startup, "light stages": sum(light.values())}
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
        "parts_s": parts,
        "light_s": light,
        "checkpoint_writes": int(sum(p["writes"] for p in per_run.values())),
        "forecast_s": sorted(wall),
        # for each epoch's pipeline line (cnnvit.progress): every training's seconds, and what follows them
        "runs_s": {r.name: sum(p[k] for k in TRAIN_PARTS) for r, p in per_run.items()},
        "lanes": lanes_used,
        "after_s": after,
    }


def parts_line(plan: dict, params: Params) -> str:
    p, r = plan["parts_s"], params.runtime
    every = f"every {r.checkpoint_every_s:g} s" if r.checkpoint_every_s else "every evaluated epoch"
    compiled = f"{p['compile']:.0f} s (assumed, runtime.compile {r.compile})" if p["compile"] else "none (eager)"
    light = ", ".join(f"{k} {v:.0f}" for k, v in plan["light_s"].items())
    return (
        f"  job-seconds: optimizer steps {p['optimizer steps']:.0f}, per-epoch evaluation "
        f"{p['per-epoch evaluation']:.0f}, robustness evaluation {p['robustness evaluation']:.0f}, checkpoints "
        f"{p['checkpoints']:.0f} ({plan['checkpoint_writes']} writes, {every}), compile {compiled}, start-up "
        f"{p['start-up']:.0f}, light stages {p['light stages']:.0f} ({light}; the download not counted)"
    )


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
    lines.append(parts_line(plan, params))
    low, high = plan["forecast_s"][0], plan["forecast_s"][-1]
    span = fmt_duration(low) if low == high else f"{fmt_duration(low)} to {fmt_duration(high)}"
    start = f"{plan['startup_s']:.0f} s start-up a"
    if plan["jobs"] == "dvc":
        how = f"DVC's stages in turn, train and evaluate with {plan['slots']} workers each, {start} stage"
    else:
        how = f"{plan['job_count']} snakemake jobs, {plan['slots']} at once, {start} job"
    lines.append(f"  forecast: {span} for the whole DAG ({how}; the download not counted)")
    lines += budget_warning(params, device, high)
    return lines


def budget_warning(params: Params, device: str, seconds: float) -> list[str]:
    """A line when the forecast is far from what the preset is sized for on this hardware: a
    GPU-sized preset on a CPU, or a CPU preset past 1.5x its budget (one core, a slow host)."""
    preset = params.active
    if preset.hardware == "gpu" and device.startswith("cpu") and seconds > CPU_WARNING_S:
        return [
            f"warning: that is {fmt_duration(seconds)} on this machine's CPU; preset {params.preset} is sized for a "
            "GPU. The laptop preset answers the paper's question on a CPU in about an hour: `snakemake --cores all "
            "--config preset=laptop` or `dvc exp run -S preset=laptop`"
        ]
    budget = 60 * (preset.budget_minutes or 0)
    if budget and seconds > BUDGET_SLACK * budget:
        return [
            f"warning: that is {fmt_duration(seconds)} here; preset {params.preset} is sized for "
            f"{fmt_duration(budget)} on its hardware ({preset.hardware}): this machine is slower (fewer cores, "
            "other load), or the runs were made larger; fewer seeds or epochs shorten it"
        ]
    return []


def plan(params: Params, runs: list[RunSpec], jobs: str, slots: int, cache: Path | None = None) -> dict:
    measured, device, startup = measure_all(params, runs, cache)
    return forecast(params, runs, measured, startup, jobs, slots, device)


def _plan_lines(params: Params, runs: list[RunSpec], jobs: str, slots: int, cache: Path | None) -> tuple[list, dict]:
    got = plan(params, runs, jobs, slots, cache)
    return report_lines(got, params), got


def print_forecast(params: Params, runs: list[RunSpec], workers: int, runs_dir: Path) -> dict:
    """The forecast of DVC's train stage, measured in a child process: this one forks its workers
    next, and must not have started torch's thread pools (or CUDA) before that. It is kept beside
    the runs for the pipeline line of every epoch (cnnvit.progress), and returned."""
    from cnnvit import progress
    from cnnvit.batch import _context

    cache = Path(".dvc/tmp/cnnvit") if Path(".dvc").is_dir() else None
    with _context().Pool(1) as pool:
        lines, got = pool.apply(_plan_lines, (params, runs, "dvc", workers, cache))
    print("\n".join(lines), flush=True)
    progress.start(got, runs_dir)
    return got


def add_args(p) -> None:
    p.add_argument("--jobs", choices=["snakemake", "dvc"], default="snakemake", help="how the runs are run")
    p.add_argument("--slots", default="auto", help="jobs at once: a number, or auto (this machine's slots)")
    p.add_argument("--cache", default=None, help="a folder to keep the measurements in, for the next plan")
    p.add_argument("--out", default=None, help="also write the plan as JSON here")
    p.add_argument("--progress", default=None, help="the runs' folder: keep the forecast there for the epochs' lines")


def run(args, params: Params) -> None:
    from cnnvit.batch import worker_count

    runs = params.all_runs()
    slots = worker_count(args.slots, params, 10**6)
    got = plan(params, runs, args.jobs, slots, Path(args.cache) if args.cache else None)
    print("\n".join(report_lines(got, params)), flush=True)
    if args.out:
        from cnnvit.files import write_json

        write_json(args.out, got)
    if args.progress:
        from cnnvit import progress

        progress.start(got, args.progress)
