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

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from cnnvit.errors import CnnvitError


@dataclass(frozen=True)
class Metric:
    column: str
    split: str  # train | test
    metric: str  # its name in the long table
    doc: str


METRICS: tuple[Metric, ...] = (
    Metric("epoch", "", "epoch", "1-based epoch after which the row was taken"),
    Metric("train_loss", "train", "loss", "mean training loss over the epoch (with label smoothing, if any)"),
    Metric("train_acc", "train", "acc", "training accuracy over the epoch, on augmented images (%)"),
    Metric("test_loss", "test", "loss", "mean cross-entropy on the test images, without smoothing"),
    Metric("test_acc", "test", "acc", "test accuracy (%), eval mode, no augmentation"),
    Metric("lr", "train", "lr", "learning rate of the epoch's last step"),
    # A fraction run records one row per eval_every epochs; the row carries all their seconds.
    Metric("epoch_seconds", "train", "seconds", "seconds of optimizer steps since the previous row"),
    Metric("train_images_per_s", "train", "images_per_s", "training images per second of optimizer steps"),
    Metric("peak_mem_mb", "train", "peak_mem_mb", "peak CUDA memory, or peak process RSS on a CPU"),
)
METRIC_COLUMNS = [m.column for m in METRICS]
VALUE_METRICS = [m for m in METRICS if m.column != "epoch"]
TIMING_COLUMNS = ["epoch_seconds", "train_images_per_s", "peak_mem_mb"]  # vary from run to run


@dataclass(frozen=True)
class RunSummary:
    run: str
    model: str
    recipe: str
    seed: int
    fraction: float
    best_test_acc: float
    final_test_acc: float
    preset: str | None = None
    epochs: int | None = None
    best_epoch: int | None = None
    n_train: int | None = None
    n_test: int | None = None
    train_seconds: float | None = None
    wall_seconds: float | None = None
    params: int | None = None
    flops_per_image: int | None = None  # forward FLOPs, 2 per multiply-add
    train_images_per_s: float | None = None
    infer_images_per_s: float | None = None
    peak_mem_mb: float | None = None
    device: str | None = None  # the device the run trained on, e.g. "cuda: NVIDIA H100" or "cpu: x86_64 x2"
    threads: int | None = None
    precision: str | None = None
    compile: bool | None = None
    pretrained: dict | None = None  # {"source": file or hub name, "sha256": ...}
    config: dict | None = None  # RunConfig.identity() the run was trained with
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
            kw["best_test_acc"], kw["final_test_acc"] = float(kw["best_test_acc"]), float(kw["final_test_acc"])
            return cls(**kw)
        except (TypeError, ValueError) as exc:
            raise CnnvitError(f"{where}: malformed summary ({exc}): delete it and train the run again") from None
