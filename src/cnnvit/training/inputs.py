"""The fast data path: the whole prepared split lives on the device as one uint8 tensor.

    data = load_prepared("data/prepared", cfg, device)   # the run's subsets of each split, on the device
    trainer = Trainer(cfg, data, device)

Batches are cut with a seeded permutation; random crop, flip and normalisation run batched on
the device, so the hot loop has no per-sample Python and no DataLoader workers (as in airbench).
Every random draw comes from a generator seeded by (seed, epoch), which is what makes a resumed
run bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from cnnvit.cifar import stratified_indices, subset_size
from cnnvit.errors import CnnvitError

if TYPE_CHECKING:
    from cnnvit.config.types import RunConfig

PREPARE_AGAIN = "run `cnnvit prepare` (or the pipeline) again"


@dataclass
class Split:
    images: torch.Tensor  # uint8, N x C x H x W, on the device
    labels: torch.Tensor  # int64, N, on the device
    indices: np.ndarray | None = None  # the images' positions in the prepared split (to pair predictions)

    def __len__(self) -> int:
        return len(self.labels)


def load_split(
    path: Path, size: int, seed: int, device: torch.device, fraction: float = 1.0, key: str = ""
) -> tuple[Split, list[str]]:
    """A stratified, seeded subset of ``size`` images (0 = all) of one prepared split, on the device;
    ``key`` names the params key that asked for ``size``, for the error when the split is smaller."""
    if not path.exists():
        raise CnnvitError(f"{path} not found: {PREPARE_AGAIN}")
    try:
        with np.load(path, allow_pickle=False) as z:
            labels = z["labels"]
            if size > len(labels) and key:
                raise CnnvitError(f"{key}: {size} is more than the {len(labels)} images of {path}: use at most that")
            idx = stratified_indices(labels, subset_size(len(labels), size, fraction), seed)
            images = torch.from_numpy(np.ascontiguousarray(z["images"][idx].transpose(0, 3, 1, 2)))
            classes = [str(c) for c in z["classes"]]
    except (zipfile.BadZipFile, EOFError, ValueError, KeyError, OSError) as exc:
        raise CnnvitError(f"{path} is corrupt or truncated ({type(exc).__name__}: {exc}): {PREPARE_AGAIN}") from None
    return Split(images.to(device), torch.from_numpy(labels[idx]).to(device), idx), classes


@dataclass
class Prepared:
    """What one run trains and is evaluated on: its subsets of the prepared splits, on the device."""

    train: Split  # the run's subset of the training split (seeded by the run's seed)
    val: Split  # the preset's subset of the validation split: the same for every run
    test: Split  # the preset's subset of the test split: the same for every run
    stats: dict  # the prepared data's stats.json without provenance: its identity
    classes: list[str]

    @property
    def mean(self) -> list[float]:
        return [float(v) for v in self.stats["mean"]]

    @property
    def std(self) -> list[float]:
        return [float(v) for v in self.stats["std"]]


def load_prepared(data_dir: str | Path, cfg: RunConfig, device: torch.device) -> Prepared:
    """The run's data: a stratified subset of the training split seeded by the run's seed, and
    subsets of the validation and test splits drawn with the prepared data's own seed, so that
    every model, recipe, seed and fraction is selected and scored on the same images."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise CnnvitError(
            f"no prepared data at {data_dir.resolve()}: run from the project root, pass --data-dir, or run "
            "`cnnvit prepare` first"
        )
    stats = load_stats(data_dir / "stats.json")
    if not (data_dir / "val.npz").exists() or "val" not in stats.get("counts", {}):
        raise CnnvitError(
            f"{data_dir} has no validation split (it was prepared before validation sets were carved out): "
            f"{PREPARE_AGAIN}"
        )
    fixed = int(stats.get("val_seed", 0))
    preset = f"presets.{cfg.preset}"
    train, classes = load_split(data_dir / "train.npz", cfg.train_size, cfg.run.seed, device, cfg.run.fraction,
                                f"{preset}.train_size")  # fmt: skip
    val, _ = load_split(data_dir / "val.npz", cfg.val_size, fixed, device, key=f"{preset}.val_size")
    test, _ = load_split(data_dir / "test.npz", cfg.test_size, fixed, device, key=f"{preset}.test_size")
    return Prepared(train, val, test, stats, classes)


def load_stats(path: Path) -> dict:
    """stats.json without its provenance: what identifies the prepared data."""
    if not path.exists():
        raise CnnvitError(f"{path} not found: {PREPARE_AGAIN}")
    try:
        stats = json.loads(path.read_text())
        stats = {k: v for k, v in stats.items() if k != "provenance"}
        mean, std = [float(v) for v in stats["mean"]], [float(v) for v in stats["std"]]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CnnvitError(f"{path} is corrupt ({type(exc).__name__}: {exc}): {PREPARE_AGAIN}") from None
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise CnnvitError(
            f"{path}: per-channel std {std} has a zero: every training image is constant "
            "in a channel, which no model can learn from; fix data.url"
        )
    return stats


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


class Augment:
    """uint8 batch -> float batch, with optional random crop (zero pad) and flip.

    ``normalize="meanstd"`` gives (x/255 - mean) / std per channel; ``"unit"`` gives x/255."""

    def __init__(self, mean, std, normalize: str, crop_padding: int, flip: bool, device, channels_last: bool):
        if normalize == "unit":
            mean, std = [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]
        self.scale = torch.tensor([1 / (255 * s) for s in std], device=device).view(1, -1, 1, 1)
        shift = [m / s for m, s in zip(mean, std, strict=True)]
        self.shift = torch.tensor(shift, device=device).view(1, -1, 1, 1)
        self.pad, self.flip, self.device = crop_padding, flip, device
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def draws(self, n: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        """One epoch's random crop offsets and flips, drawn up front from the epoch generator."""
        out = {}
        if self.pad:
            out["shift"] = torch.randint(0, 2 * self.pad + 1, (n, 2), generator=gen).to(self.device)
        if self.flip:
            out["flip"] = (torch.rand(n, generator=gen) < 0.5).to(self.device)
        return out

    def __call__(self, x: torch.Tensor, draws: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        if draws:
            x = self._crop_flip(x, draws.get("shift"), draws.get("flip"))
        x = x.float().mul_(self.scale).sub_(self.shift)
        return x.contiguous(memory_format=self.memory_format)

    def _crop_flip(self, x: torch.Tensor, shift, flip) -> torch.Tensor:
        """Crop and flip as one gather over flat pixel indices (6x faster than fancy indexing)."""
        p, (b, c, h, w) = self.pad, x.shape
        xp = F.pad(x, (p, p, p, p)).view(b, c, -1) if p else x.reshape(b, c, -1)
        cols = torch.arange(w, device=x.device).expand(b, w)
        rows = torch.arange(h, device=x.device).expand(b, h)
        if flip is not None:
            cols = torch.where(flip.view(b, 1), cols.flip(1), cols)
        if shift is not None:
            rows, cols = rows + shift[:, :1], cols + shift[:, 1:]
        idx = (rows[:, :, None] * (w + 2 * p) + cols[:, None, :]).view(b, 1, h * w)
        return torch.gather(xp, 2, idx.expand(b, c, h * w)).view(b, c, h, w)
