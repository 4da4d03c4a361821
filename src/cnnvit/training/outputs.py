"""What a finished run writes: its summary, and its files (cnnvit.runfiles.RUN_FILES) together.

summary = make_summary(cfg, trainer, rows, runtime, wall, saves)
write_outputs(out_dir, cfg, rows, summary, data, kept)
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np

from cnnvit.cifar import NUM_CLASSES
from cnnvit.config.types import RunConfig
from cnnvit.files import atomic_dir, file_sha256, provenance, write_json
from cnnvit.models import count_params, flops_per_image
from cnnvit.models.pretrained import weights_source
from cnnvit.models.weights import save_weights
from cnnvit.runfiles import (
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
from cnnvit.training.device import cuda_facts


def selected_row(rows: list[dict]) -> dict:
    """The evaluated epoch with the best validation accuracy; ties go to the earliest."""
    return max(rows, key=lambda r: (r["val_acc"], -r["epoch"]))


def make_summary(cfg: RunConfig, trainer, rows: list[dict], runtime: dict, wall: float, saves: dict) -> RunSummary:
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
