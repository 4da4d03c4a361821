"""The contracts between stages: the per-epoch metrics (``metrics.csv``) and the run summary
(``summary.json``) that ``cnnvit train`` writes and ``cnnvit collect`` and the report read.

    METRICS            # metrics.csv columns, in order, with their split and meaning
    RunSummary(...)    # one finished run; .to_json() / RunSummary.from_json(d, where)

Accuracies are percent. Times: ``train_seconds`` is the optimizer steps alone (data cut,
augmentation, forward, backward, step); ``wall_seconds`` is the run end to end inside the
process: training, evaluation and checkpoints, summed over resumed segments (not the ~5 s of
importing torch and timm, nor queueing).
"""

from __future__ import annotations

import csv
import dataclasses
import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cnnvit.errors import CnnvitError


@dataclass(frozen=True)
class Metric:
    column: str
    split: str  # train | val | test
    metric: str  # its name in the long table
    doc: str


METRICS: tuple[Metric, ...] = (
    Metric("epoch", "", "epoch", "1-based epoch after which the row was taken"),
    Metric("train_loss", "train", "loss", "mean training loss over the epoch (with label smoothing, if any)"),
    Metric("train_acc", "train", "acc", "training accuracy over the epoch, on augmented images (%)"),
    Metric("val_loss", "val", "loss", "mean cross-entropy on the validation images (carved from the training split)"),
    Metric("val_acc", "val", "acc", "validation accuracy (%): what the reported epoch is chosen on"),
    Metric("test_loss", "test", "loss", "mean cross-entropy on the test images, without smoothing"),
    Metric("test_acc", "test", "acc", "test accuracy (%), eval mode, no augmentation"),
    Metric("lr", "train", "lr", "learning rate of the epoch's last step"),
    # A fraction run records one row per eval_every epochs; the row carries all their seconds.
    Metric("epoch_seconds", "train", "seconds", "seconds of optimizer steps since the previous row"),
    Metric("train_images_per_s", "train", "images_per_s", "training images per second of optimizer steps"),
    Metric("peak_mem_mb", "train", "peak_mem_mb", "peak CUDA memory, or peak process RSS on a CPU"),
)
METRIC_COLUMNS = [m.column for m in METRICS]
ACCURACIES = ("selected_test_acc", "final_test_acc", "best_test_acc")  # every summary has these
VALUE_METRICS = [m for m in METRICS if m.column != "epoch"]
TIMING_COLUMNS = ["epoch_seconds", "train_images_per_s", "peak_mem_mb"]  # vary from run to run


@dataclass(frozen=True)
class RunSummary:
    """One finished run. Its headline number is ``selected_test_acc``: the test accuracy at the
    epoch with the best validation accuracy (ties: the earliest). ``best_test_acc`` is the highest
    test accuracy over epochs, i.e. an epoch chosen on the test set: optimistic, kept only to set
    beside the paper's tables, which report it."""

    run: str
    model: str
    recipe: str
    seed: int
    fraction: float
    selected_test_acc: float
    final_test_acc: float
    best_test_acc: float
    selected_epoch: int | None = None
    selected_val_acc: float | None = None
    selected_test_loss: float | None = None  # the NLL of the selected epoch's test predictions
    selected_ece: float | None = None  # expected calibration error (15 bins), percent
    final_ece: float | None = None
    best_test_epoch: int | None = None
    diverged: str | None = None  # why the run is taken as diverged (cnnvit.runfiles.diverged), or None
    preset: str | None = None
    epochs: int | None = None
    n_train: int | None = None
    n_val: int | None = None
    n_test: int | None = None
    train_seconds: float | None = None
    wall_seconds: float | None = None
    params: int | None = None
    flops_per_image: int | None = None  # forward FLOPs, 2 per multiply-add
    train_images_per_s: float | None = None
    infer_images_per_s: float | None = None
    peak_mem_mb: float | None = None
    device: str | None = None  # the device the run trained on, e.g. "cuda: NVIDIA H100", "cpu: Xeon, AVX512 x2"
    threads: int | None = None
    precision: str | None = None
    compile: bool | None = None
    pretrained: dict | None = None  # {"source": file or hub name, "sha256": ...}
    config: dict | None = None  # RunConfig.identity() the run was trained with
    weights_sha256: str | None = None  # of its weights.safetensors: what its other files must name
    provenance: dict = field(default_factory=dict)

    @property
    def train_images(self) -> int | None:
        """Images seen by the optimizer: the training set times the epochs."""
        return None if self.n_train is None or self.epochs is None else self.n_train * self.epochs

    @property
    def train_pflops(self) -> float | None:
        """Training compute, forward + backward taken as 3x the forward FLOPs, in PFLOPs."""
        if self.flops_per_image is None or self.train_images is None:
            return None
        return 3 * self.flops_per_image * self.train_images / 1e15

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: Any, where: str) -> RunSummary:
        if not isinstance(d, dict):
            raise CnnvitError(f"{where}: expected a JSON object: delete it and train the run again")
        known = {f.name for f in dataclasses.fields(cls)}
        required = [
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        missing = [name for name in required if name not in d]
        # run, model, recipe and seed may come from the directory name; the accuracies may not
        if missing:
            raise CnnvitError(f"{where}: missing {', '.join(missing)}: delete it and train the run again")
        try:
            kw = {k: v for k, v in d.items() if k in known}
            kw["fraction"] = float(kw["fraction"])
            for k in ACCURACIES:
                kw[k] = float(kw[k])
        except (TypeError, ValueError) as exc:
            raise CnnvitError(f"{where}: malformed summary ({exc}): delete it and train the run again") from None
        for k in ACCURACIES:
            if not (math.isfinite(kw[k]) and 0 <= kw[k] <= 100):
                raise CnnvitError(f"{where}: {k} is {kw[k]}, not an accuracy: delete it and train the run again")
        for k, kind, what in (
            ("run", str, "name"),
            ("model", str, "name"),
            ("recipe", str, "name"),
            ("seed", int, "whole number"),
        ):
            if not isinstance(kw[k], kind) or isinstance(kw[k], bool):
                raise CnnvitError(f"{where}: {k} is {kw[k]!r}, not a {what}: delete it and train the run again")
        try:
            return cls(**kw)
        except TypeError as exc:
            raise CnnvitError(f"{where}: malformed summary ({exc}): delete it and train the run again") from None


MIN_EPOCHS_AT_CHANCE = 3  # a run still at chance after fewer epochs may just be slow to start


def diverged(rows: list[dict], num_classes: int) -> str | None:
    """Why a finished run should be read as diverged, or None, from what it trained on and its
    validation split (never the test set): an exploding validation loss (over ten times that of a
    uniform guess), or, after a few epochs, a model still at chance on its own training data."""
    last, chance_loss, chance_acc = rows[-1], math.log(num_classes), 100 / num_classes
    if not math.isfinite(last["val_loss"]) or last["val_loss"] > 10 * chance_loss:
        return f"validation loss {last['val_loss']:.3g} at the last epoch (a uniform guess scores {chance_loss:.2f})"
    at_chance = last["train_acc"] <= chance_acc * 1.05 and last["train_loss"] >= chance_loss
    if at_chance and last["epoch"] >= MIN_EPOCHS_AT_CHANCE:
        acc, epochs = last["train_acc"], last["epoch"]
        return f"training accuracy {acc:.1f}% after {epochs} epochs: still at chance ({chance_acc:g}%)"
    return None


# ----------------------------------------------------------------------------- a run's files

METRICS_FILE, SUMMARY_FILE = "metrics.csv", "summary.json"
PREDICTIONS_FILE, WEIGHTS_FILE = "predictions.npz", "weights.safetensors"
RUN_FILES = (METRICS_FILE, SUMMARY_FILE, PREDICTIONS_FILE, WEIGHTS_FILE)  # what `cnnvit train` writes per run
PREDICTION_KEYS = ("labels", "indices", "classes", "selected_logits", "final_logits", "selected_epoch", "final_epoch",
                   "run", "weights_sha256")  # fmt: skip


def write_metrics(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=METRIC_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def write_predictions(path: Path, **arrays: Any) -> None:
    """The test set's labels, their positions in the prepared test split, and the logits (float32,
    as evaluated) of the selected and the final epoch: what the verdicts, per-class accuracy,
    calibration and confusion matrices are computed from; and the run's name and the sha256 of the
    weights file written beside it, which tie the file to its run."""
    assert set(arrays) == set(PREDICTION_KEYS), sorted(arrays)
    with open(path, "wb") as f:
        arrays = {k: np.asarray(v) for k, v in arrays.items()}
        np.savez_compressed(f, allow_pickle=False, **arrays)


def read_predictions(path: Path) -> dict[str, np.ndarray]:
    fix = "delete its run directory and train it again"
    try:
        with np.load(path, allow_pickle=False) as z:
            out = {k: z[k] for k in PREDICTION_KEYS}
    except FileNotFoundError:
        raise CnnvitError(f"{path} not found: {fix}") from None
    except (zipfile.BadZipFile, EOFError, ValueError, KeyError, OSError) as exc:
        raise CnnvitError(f"{path} is corrupt or not a cnnvit predictions file ({type(exc).__name__}): {fix}") from None
    n = len(out["labels"])
    if any(out[k].shape != (n, out["selected_logits"].shape[1]) for k in ("selected_logits", "final_logits")):
        raise CnnvitError(f"{path}: logits do not match the {n} labels: {fix}")
    if not np.isfinite(out["selected_logits"]).all() or not np.isfinite(out["final_logits"]).all():
        raise CnnvitError(f"{path}: non-finite logits (the run diverged?): {fix}")
    return out
