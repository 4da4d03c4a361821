"""Train stage: model x recipe x fraction x seed runs, each resumable and deterministic.

    cnnvit train --model vit --recipe paper --seeds 0 1 2 [--fraction 0.2] --data-dir data/prepared \
        --runs-dir results/runs --ckpt-dir results/checkpoints [--threads 2]
    cnnvit train --all-runs --workers auto ...     # every run of params.yaml, N at a time

Which runs, and how many at once: :mod:`cnnvit.batch` (a Snakemake job trains the seeds of one
model x recipe x fraction in turn; DVC's one train stage trains every run, a worker per slot).

This module owns a run's epoch loop (as nanoGPT's train.py does): it loads the run's data, builds
the engine (:class:`cnnvit.training.engine.Trainer`), trains and evaluates epoch by epoch, and
checkpoints. It writes, for each run, ``metrics.csv`` (one row per evaluated epoch, columns in
:data:`cnnvit.runfiles.METRICS`) and ``summary.json``
(:class:`cnnvit.runfiles.RunSummary`) to ``--runs-dir/<run>`` only when the run finishes.

Checkpoints go to ``--ckpt-dir``, outside the DAG's declared outputs (Snakemake and DVC delete
those before a re-run): after the first evaluated epoch (a full disk or an unwritable folder shows
in the first minutes, not hours in), then after the first evaluated epoch that ends
``runtime.checkpoint_every_s`` seconds or more after the last one (0: every evaluated epoch), and
when the run finishes. An epoch-boundary checkpoint holds the whole state, so the same command
after a crash resumes from the last one bit-identically (on a CPU), redoing at most
``checkpoint_every_s`` of training; a finished run is re-emitted, not retrained, unless its params,
data or training code changed (see :mod:`cnnvit.training.checkpoint`). One process at a time
trains a run. The summary's provenance records the compilation (seconds, graphs, CUDA graphs) and
the checkpoints written (count, seconds) of the process that finished the run.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from cnnvit import paths
from cnnvit.batch import add_run_args, checked_runs, run_each, worker_count
from cnnvit.cifar import NUM_CLASSES
from cnnvit.config.runs import run_config
from cnnvit.config.types import Params, RunConfig, RunSpec
from cnnvit.errors import positive_int
from cnnvit.files import atomic_dir, file_sha256, provenance, write_json
from cnnvit.models import count_params, flops_per_image
from cnnvit.models.pretrained import weights_source
from cnnvit.models.weights import save_weights
from cnnvit.runfiles import (
    METRIC_COLUMNS,
    METRICS_FILE,
    PREDICTIONS_FILE,
    RUN_FILES,
    SUMMARY_FILE,
    WEIGHTS_FILE,
    RunSummary,
    diverged,
    write_metrics,
    write_predictions,
)
from cnnvit.training import checkpoint
from cnnvit.training.device import cuda_facts, held_slot, resolve_precision, select_device, use_precision
from cnnvit.training.engine import Trainer, compile_mode, peak_mem_mb, reset_peak_memory
from cnnvit.training.inputs import load_prepared


def fmt_eta(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}h{m % 60:02d}m" if m >= 60 else f"{m}m{s:02d}s"


def selected_row(rows: list[dict]) -> dict:
    """The evaluated epoch with the best validation accuracy; ties go to the earliest."""
    return max(rows, key=lambda r: (r["val_acc"], -r["epoch"]))


def make_summary(
    cfg: RunConfig, trainer: Trainer, rows: list[dict], runtime: dict, wall: float, saves: dict
) -> RunSummary:
    if math.isnan(trainer.infer_images_per_s):  # resumed after its last evaluation: time one now
        trainer.evaluate()
    best, chosen, data = max(rows, key=lambda r: r["test_acc"]), selected_row(rows), trainer.data
    return RunSummary(
        run=cfg.name,
        model=cfg.run.model,
        recipe=cfg.run.recipe,
        seed=cfg.run.seed,
        fraction=cfg.run.fraction,
        selected_test_acc=chosen["test_acc"],
        final_test_acc=rows[-1]["test_acc"],
        best_test_acc=best["test_acc"],
        selected_epoch=chosen["epoch"],
        selected_val_acc=chosen["val_acc"],
        selected_test_loss=chosen["test_loss"],
        best_test_epoch=best["epoch"],
        diverged=diverged(rows, NUM_CLASSES),
        preset=cfg.preset,
        epochs=rows[-1]["epoch"],
        n_train=len(data.train),
        n_val=len(data.val),
        n_test=len(data.test),
        train_seconds=sum(r["epoch_seconds"] for r in rows),
        wall_seconds=wall,
        params=count_params(trainer.model),
        flops_per_image=flops_per_image(trainer.model, trainer.device),
        train_images_per_s=float(np.mean([r["train_images_per_s"] for r in rows])),
        infer_images_per_s=trainer.infer_images_per_s,
        peak_mem_mb=max(r["peak_mem_mb"] for r in rows),
        device=runtime["device"],
        threads=runtime["threads"],
        precision=cfg.precision,
        compile=runtime["compile"],
        config=cfg.identity(),
        pretrained=weights_source(cfg.model.pretrained) if cfg.model.pretrained else None,
        provenance=provenance(cfg.to_dict(), runtime["device"], cuda_facts())
        | {"compile": trainer.compile_info, "checkpoints": saves},
    )


def train_run(cfg: RunConfig, data_dir, out_dir, ckpt_dir, threads: int | None = None) -> RunSummary:
    """Train (or resume, or re-emit if finished) one run; writes its files (records.RUN_FILES)."""
    start = time.perf_counter()
    out_dir, ckpt_dir = Path(out_dir), Path(ckpt_dir)
    ckpt_path = ckpt_dir / f"{cfg.name}.pt"
    threads = threads or cfg.runtime.threads
    with checkpoint.run_lock(ckpt_dir, cfg.name):
        device, device_name = select_device(cfg.runtime.device, cfg.runtime.runs_per_gpu)
        reset_peak_memory(device)  # this run's peak, not an earlier run's of this process
        precision = resolve_precision(cfg.runtime.precision, device)
        cfg = dataclasses.replace(cfg, precision=precision)
        use_precision(precision, device)
        runtime = {"device": device_name, "threads": threads, "compile": compile_mode(cfg.runtime.compile) or False}
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        gpus = f", CUDA_VISIBLE_DEVICES={visible}" if visible is not None else ""
        slot = f" ({s})" if (s := held_slot(cfg.runtime.runs_per_gpu)) else ""
        print(f"{cfg.name}: on {device_name}{slot}, {cfg.precision}, {threads} CPU thread(s){gpus}", flush=True)
        torch.set_num_threads(threads)
        data = load_prepared(data_dir, cfg, device)
        trainer = Trainer(cfg, data, device)
        ident = checkpoint.identity(cfg.identity(), data.stats)
        ckpt = checkpoint.load(ckpt_path, ident, runtime)
        done, rows, summary, wall, kept = 0, [], None, 0.0, {}
        if ckpt is not None:
            trainer.load_state(ckpt["state"])
            done, rows, wall, kept = ckpt["epoch"], ckpt["rows"], ckpt["wall_seconds"], ckpt["kept"]
            summary = RunSummary.from_json(ckpt["summary"], str(ckpt_path)) if ckpt["summary"] else None
            state = "finished; not retraining" if summary else f"resuming after epoch {done}"
            print(f"{cfg.name}: checkpoint found, {state}", flush=True)
        progress = sys.stderr.isatty()
        unrecorded = 0.0  # seconds of the epochs since the last recorded row
        saves: dict = {"every_s": cfg.runtime.checkpoint_every_s, "written": 0, "seconds": 0.0}
        saved_at = None  # when this process last wrote the run's checkpoint
        for epoch in range(done + 1, cfg.epochs + 1):
            row = {"epoch": epoch, **trainer.train_epoch(epoch, progress=progress)}
            unrecorded += row["epoch_seconds"]
            if epoch % cfg.eval_every and epoch != cfg.epochs:
                continue  # a small fraction's many short epochs are evaluated every eval_every
            row["epoch_seconds"], unrecorded = unrecorded, 0.0
            val, test = trainer.evaluate(data.val), trainer.evaluate(data.test)
            row |= {"val_loss": val.loss, "val_acc": val.acc, "test_loss": test.loss, "test_acc": test.acc}
            row["peak_mem_mb"] = peak_mem_mb(device)
            rows.append({k: row[k] for k in METRIC_COLUMNS})
            kept["final_logits"] = test.logits.cpu()  # float32: the argmax the accuracy was counted from
            if selected_row(rows) is rows[-1]:  # the validation accuracy improved: keep this epoch
                kept |= {"selected_logits": kept["final_logits"], "selected_model": trainer.weights()}
            saved = ""
            due = saved_at is None or time.monotonic() - saved_at >= cfg.runtime.checkpoint_every_s
            if due and epoch != cfg.epochs:  # the last epoch's is the finished run's, below
                began = time.perf_counter()
                wall_now = wall + began - start
                checkpoint.save(ckpt_path, _checkpoint(trainer, ident, runtime, epoch, rows, None, wall_now, kept))
                saved_at, took = time.monotonic(), time.perf_counter() - began
                saves["written"], saves["seconds"] = saves["written"] + 1, saves["seconds"] + took
                saved = f"  checkpoint {took:.1f}s"
            spent = sum(r["epoch_seconds"] for r in rows)
            print(
                f"{cfg.name} epoch {epoch}/{cfg.epochs}  train_loss {row['train_loss']:.4f}  "
                f"train_acc {row['train_acc']:.2f}%  val_acc {row['val_acc']:.2f}%  test_acc {row['test_acc']:.2f}%  "
                f"lr {row['lr']:.2e}  {row['epoch_seconds']:.1f}s ({row['train_images_per_s']:.0f} img/s)  "
                f"ETA {fmt_eta(spent / len(rows) * (cfg.epochs - epoch) / cfg.eval_every)}{saved}",
                flush=True,
            )
        if summary is None:
            summary = make_summary(cfg, trainer, rows, runtime, wall + time.perf_counter() - start, saves)
            checkpoint.save(
                ckpt_path, _checkpoint(trainer, ident, runtime, cfg.epochs, rows, summary, summary.wall_seconds, kept)
            )
    write_outputs(out_dir, cfg, rows, summary, data, kept)
    return summary


def write_outputs(out_dir: Path, cfg: RunConfig, rows: list[dict], summary: RunSummary, data, kept: dict) -> None:
    """The run's files, replacing its directory together: none or all of them are there. Each names
    the run, and the summary and the predictions the sha256 of the weights: collect checks they agree."""
    with atomic_dir(out_dir, owned=lambda name: name in RUN_FILES) as tmp:
        meta = {"run": cfg.name, "epoch": str(summary.selected_epoch), "arch": cfg.model.arch, "selected_on": "val_acc"}
        save_weights(tmp / WEIGHTS_FILE, kept["selected_model"], meta)
        digest = file_sha256(tmp / WEIGHTS_FILE)
        write_metrics(tmp / METRICS_FILE, rows)
        write_json(tmp / SUMMARY_FILE, dataclasses.replace(summary, weights_sha256=digest).to_json())
        write_predictions(
            tmp / PREDICTIONS_FILE,
            labels=data.test.labels.cpu().numpy().astype(np.uint8),
            indices=data.test.indices.astype(np.int32),
            classes=np.array(data.classes),
            selected_logits=kept["selected_logits"].numpy(),
            final_logits=kept["final_logits"].numpy(),
            selected_epoch=summary.selected_epoch,
            final_epoch=rows[-1]["epoch"],
            run=cfg.name,
            weights_sha256=digest,
        )


def _checkpoint(trainer, ident, runtime, epoch, rows, summary, wall, kept) -> dict:
    return {
        "identity": ident,
        "runtime": runtime,
        "epoch": epoch,
        "rows": rows,
        "summary": summary.to_json() if summary else None,
        "wall_seconds": wall,
        "kept": kept,  # test logits of the last and the selected epoch, and the selected epoch's weights
        "state": trainer.state(),
    }


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

        print_forecast(params, runs, workers)
    fn = functools.partial(
        train_one, params=params, data_dir=args.data_dir, runs_dir=args.runs_dir, ckpt_dir=args.ckpt_dir,
        threads=args.threads,
    )  # fmt: skip
    run_each(fn, runs, workers)
