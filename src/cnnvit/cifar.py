"""What every part of the pipeline knows about CIFAR-10's images, and how subsets are drawn.

    stratified_indices(labels, 500, seed=3)     # a class-balanced, seeded, nested subset
    validation_split(labels, 5000, seed)        # (train indices, validation indices) of the train split
    check_duplicates(result, raw)               # no test image a copy of a training image

`cnnvit prepare` refuses data of another shape or class count, and every model is built for it.
Pure numpy: the prepare stage uses it without importing torch.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np

from cnnvit.errors import CnnvitError

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


def _quotas_by_size(counts: np.ndarray) -> np.ndarray:
    """What :func:`class_quotas` gives each class for every size 1..N at once (N x classes)."""
    n = int(counts.sum())
    sizes = np.arange(1, n + 1)[:, None]
    exact = counts[None, :] * sizes / n
    quota = np.floor(exact).astype(int)
    remainder = sizes[:, 0] - quota.sum(1)
    order = np.argsort(-(exact - quota), axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(counts.size)[None, :].repeat(n, 0), axis=1)
    return quota + (rank < remainder[:, None])


def validation_problem(
    labels: np.ndarray, size: int, names: list[str], eligible: np.ndarray | None = None
) -> str | None:
    """Why ``size`` validation images cannot be carved from these training labels, or None:
    every class must give at least one image and keep at least one for training. The carve takes
    each class in proportion, so a small class can need a larger set than there are classes. It
    draws from the ``eligible`` images only (as :func:`validation_split`); the others stay in training."""
    pool = labels if eligible is None else labels[eligible]
    classes, counts = np.unique(pool, return_counts=True)
    totals = np.array([int((labels == c).sum()) for c in classes]) if eligible is not None else counts
    n = int(counts.sum())
    quota = _quotas_by_size(counts)
    fits = np.logical_and(np.all(quota >= 1, axis=1), np.all(quota < totals[None, :], axis=1))
    if 1 <= size <= n and fits[size - 1]:
        return None
    ok = np.flatnonzero(fits) + 1
    smallest = int(np.argmin(counts))
    if not ok.size:
        return (
            f"no size works: class {names[classes[smallest]]!r} has {counts[smallest]} of the {n:,} training "
            "images, and the carve takes every class in proportion, leaving it no validation or no training "
            "image: add images of that class (or remove it from both splits)"
        )
    lo, hi = int(ok.min()), int(ok.max())
    if size < lo:
        fix = f"use at least {lo:,}"
    elif size > hi:
        fix = f"use at most {hi:,}"
    else:  # rounding in proportion can fail one size and fit its neighbours
        fix = f"use {int(ok[ok < size].max()):,} or {int(ok[ok > size].min()):,}"
    row = quota[min(max(size, 1), n) - 1]
    balanced = counts.min() * 2 > counts.max()
    share = "" if balanced else f" of the {n:,}; the carve takes each class in proportion"
    if size < 1 or (row < 1).any():
        c = int(np.flatnonzero(row < 1)[0]) if size >= 1 else smallest
        has = "" if balanced else f" (it has {counts[c]}{share})"
        return f"{size} gives class {names[classes[c]]!r} no validation image{has}: {fix}"
    c = int(np.flatnonzero(row >= totals)[0])
    return f"{size} leaves class {names[classes[c]]!r} no training image (it has {totals[c]}{share}): {fix}"


def validation_split(
    labels: np.ndarray, size: int, seed: int, eligible: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(indices kept for training, indices of the validation set): a stratified, seeded carve
    among the ``eligible`` images (default all; prepare leaves out images with a copy in the split)."""
    pool = np.arange(len(labels)) if eligible is None else np.flatnonzero(eligible)
    val = pool[stratified_indices(labels[pool], size, seed)]
    keep = np.ones(len(labels), dtype=bool)
    keep[val] = False
    return np.flatnonzero(keep), val


def content_keys(images: np.ndarray) -> list[bytes]:
    """A 128-bit hash of each image's pixels: equal keys, equal images (60,000 in about 0.2 s)."""
    flat = np.ascontiguousarray(images).reshape(len(images), -1)
    return [hashlib.blake2b(row.data, digest_size=16).digest() for row in flat]


def check_duplicates(result: dict, raw: Path) -> np.ndarray:
    """Refuse test images that are copies of training images (by their pixels, whatever the file
    or its encoding): a model would be scored on what it trained on. Copies within one split are
    a warning. Returns which training images have a copy in the training split (kept out of the
    validation carve, so that validation stays disjoint from training too)."""
    names = result.get("names") or {s: [f"{s}[{i}]" for i in range(len(result[s][1]))] for s in ("train", "test")}
    keys = {split: content_keys(result[split][0]) for split in ("train", "test")}
    first: dict[bytes, int] = {}
    for i, key in enumerate(keys["train"]):
        first.setdefault(key, i)
    crossed = [(i, first[k]) for i, k in enumerate(keys["test"]) if k in first]
    if crossed:
        (t, tr), more = crossed[0], f" and {len(crossed) - 1:,} more" if len(crossed) > 1 else ""
        raise CnnvitError(
            f"{raw}: {len(crossed):,} test images are copies of training images ({names['test'][t]} = "
            f"{names['train'][tr]}{more}): a model would be scored on images it trained on; remove them from one "
            "split (fix data.url)"
        )
    repeated = np.zeros(len(keys["train"]), dtype=bool)
    for split in ("train", "test"):
        seen: dict[bytes, int] = {}
        pairs = []
        for i, key in enumerate(keys[split]):
            if key in seen:
                pairs.append((seen[key], i))
                if split == "train":
                    repeated[[seen[key], i]] = True
            else:
                seen[key] = i
        if pairs:
            (a, b), kind = pairs[0], "training" if split == "train" else "test"
            also = " (and kept out of the validation set)" if split == "train" else ""
            warn(
                f"{raw}: {len(pairs):,} {kind} images are copies of others in the {split} split ({names[split][b]} = "
                f"{names[split][a]}{', ...' if len(pairs) > 1 else ''}): kept{also}, weighing those images more"
            )
    return repeated


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)
