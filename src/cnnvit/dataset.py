"""What every part of the pipeline knows about CIFAR-10's images, and how subsets are drawn.

    stratified_indices(labels, 500, seed=3)     # a class-balanced, seeded, nested subset
    validation_split(labels, 5000, seed)        # (train indices, validation indices) of the train split

`cnnvit prepare` refuses data of another shape or class count, and every model is built for it.
Pure numpy: the prepare stage uses it without importing torch.
"""

from __future__ import annotations

import numpy as np

IMG_SIZE = 32
CHANNELS = 3
NUM_CLASSES = 10


def class_quotas(labels: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(classes, their counts, how many of each a stratified subset of ``size`` takes)."""
    n = len(labels)
    classes, counts = np.unique(labels, return_counts=True)
    quota = np.floor(counts * size / n).astype(int)
    # Hand the rounding remainder to the classes with the largest fractional parts.
    remainder = size - quota.sum()
    order = np.argsort(-(counts * size / n - quota), kind="stable")
    quota[order[:remainder]] += 1
    return classes, counts, quota


def stratified_indices(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """A seeded subset of ``size`` indices with the class proportions of ``labels`` (sorted).

    For one seed, a smaller subset is a prefix of each class's draw, so it nests inside a larger one."""
    n = len(labels)
    if size == 0 or size >= n:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    classes, _, quota = class_quotas(labels, size)
    picked = [rng.permutation(np.flatnonzero(labels == c))[:q] for c, q in zip(classes, quota, strict=True)]
    return np.sort(np.concatenate(picked))


def subset_size(total: int, size: int, fraction: float = 1.0) -> int:
    """Images a run uses: ``fraction`` of ``size`` images (0 = all ``total``)."""
    base = min(size, total) if size else total
    return base if fraction >= 1 else max(1, round(base * fraction))


def validation_problem(labels: np.ndarray, size: int, names: list[str]) -> str | None:
    """Why ``size`` validation images cannot be carved from these training labels, or None:
    every class must give at least one image and keep at least one for training."""
    classes, counts, quota = class_quotas(labels, size)
    if (quota < 1).any():
        c = int(np.flatnonzero(quota < 1)[0])
        return f"{size} gives class {names[classes[c]]!r} no validation image: use at least {len(classes)}"
    if (quota >= counts).any():
        c = int(np.flatnonzero(quota >= counts)[0])
        lo, hi = len(classes), size  # the largest size that leaves every class a training image
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if (class_quotas(labels, mid)[2] < counts).all() else (lo, mid - 1)
        return f"{size} leaves class {names[classes[c]]!r} no training image (it has {counts[c]}): use at most {lo}"
    return None


def validation_split(labels: np.ndarray, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices kept for training, indices of the validation set): a stratified, seeded carve."""
    val = stratified_indices(labels, size, seed)
    keep = np.ones(len(labels), dtype=bool)
    keep[val] = False
    return np.flatnonzero(keep), val
