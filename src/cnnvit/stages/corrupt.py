"""Corrupt stage: the test images every run is scored on -> CIFAR-10-C's corruptions of them.

    cnnvit corrupt --data-dir data/prepared --out data/corrupted/test.npz

Takes the preset's test subset (the images every run is scored on), a stratified subset of
``presets.<p>.robustness_images`` of them (0 = all), and writes each corruption of
``robustness.corruptions`` at each of ``robustness.severities`` (:mod:`cnnvit.measure.corruptions`,
seeded by ``robustness.seed``): uint8 images shaped corruptions x severities x N x 32 x 32 x 3,
with the labels and the images' positions in the prepared test split. Made once; every run's
evaluation reads it, so a change here re-runs the evaluations, never the trainings.
"""

from __future__ import annotations

import json
import time
import zipfile
from pathlib import Path

import numpy as np

from cnnvit import paths
from cnnvit.cifar import stratified_indices, subset_size
from cnnvit.config.types import Params
from cnnvit.config.values import values
from cnnvit.errors import CnnvitError
from cnnvit.files import atomic_path
from cnnvit.measure.corruptions import corrupt
from cnnvit.stage import Out, Stage
from cnnvit.training.inputs import PREPARE_AGAIN, load_stats

STAGE = Stage(
    name="corrupt",
    help="the runs' test images -> CIFAR-10-C's corruptions of them",
    cmd=f"cnnvit corrupt --data-dir {paths.PREPARED_DIR} --out {paths.CORRUPTED}",
    deps=paths.PREPARED,
    outs=(Out(paths.CORRUPTED),),
    params=("preset", "presets.{preset}.test_size", "presets.{preset}.robustness_images", "robustness"),
)

KEYS = ("images", "labels", "indices", "corruptions", "severities")


def robustness_subset(
    data_dir: Path, test_size: int, images: int, key: str = "robustness_images"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images N x 32 x 32 x 3, labels, positions in the prepared test split): the preset's test
    subset, as every run draws it, then a stratified subset of ``images`` of it, with the same seed;
    more images than the test subset holds is an error naming ``key``, never a silent cut."""
    stats = load_stats(data_dir / "stats.json")
    seed = int(stats.get("val_seed", 0))
    try:
        with np.load(data_dir / "test.npz", allow_pickle=False) as z:
            labels = z["labels"]
            test = stratified_indices(labels, subset_size(len(labels), test_size), seed)
            if images > len(test):  # params could not tell (expect_test 0, test_size 0): say it, never cut it
                raise CnnvitError(
                    f"{key}: {images:,} is more than the {len(test):,} test images the runs are scored on "
                    f"({data_dir / 'test.npz'}): use at most {len(test):,} (0 = all of them)"
                )
            pick = test[stratified_indices(labels[test], subset_size(len(test), images), seed)]
            return z["images"][pick], labels[pick], pick
    except FileNotFoundError:
        raise CnnvitError(f"{data_dir / 'test.npz'} not found: {PREPARE_AGAIN}") from None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
        raise CnnvitError(
            f"{data_dir / 'test.npz'} is corrupt or truncated ({type(exc).__name__}): {PREPARE_AGAIN}"
        ) from None


def make_corrupted(params: Params, data_dir, out) -> dict:
    data_dir, out = Path(data_dir), Path(out)
    preset, r = params.active, params.robustness
    key = f"presets.{params.preset}.robustness_images"
    images, labels, indices = robustness_subset(data_dir, preset.test_size, preset.robustness_images, key)
    shape = (len(r.corruptions), len(r.severities), *images.shape)
    stack = np.empty(shape, dtype=np.uint8)
    for i, name in enumerate(r.corruptions):
        for j, severity in enumerate(r.severities):
            stack[i, j] = corrupt(images, name, severity, r.seed)
    with atomic_path(out) as tmp, open(tmp, "wb") as f:
        # the values of the params it reads: what cnnvit.dag.made_with compares with the current
        # ones, so that a set made under other params is stale to Snakemake without its metadata
        prov = np.array(json.dumps({"values": values(params.raw, STAGE.params)}, sort_keys=True))
        np.savez(f, images=stack, labels=labels, indices=indices, corruptions=np.array(r.corruptions),
                 severities=np.array(r.severities), provenance=prov)  # fmt: skip
    return {"images": len(labels), "sets": len(r.corruptions) * len(r.severities)}


def read_corrupted(path: Path) -> dict[str, np.ndarray]:
    """The corrupted sets, with every array's shape checked against the others: a damaged file
    (empty, truncated, other image sizes, fewer images) is one line, never a numpy error."""
    again = "run `cnnvit corrupt` again"
    try:
        with np.load(path, allow_pickle=False) as z:
            sets = {k: z[k] for k in KEYS}
    except FileNotFoundError:
        raise CnnvitError(f"{path} not found: run `cnnvit corrupt` first (or the pipeline)") from None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise CnnvitError(f"{path} is corrupt or not a cnnvit corrupted set ({type(exc).__name__}): {again}") from None
    images, n = sets["images"], len(sets["labels"])
    want = (len(sets["corruptions"]), len(sets["severities"]), n, 32, 32, 3)
    if images.dtype != np.uint8 or images.shape != want or sets["indices"].shape != (n,):
        raise CnnvitError(
            f"{path} holds images of shape {images.shape} ({images.dtype}) for {n} labels and {len(sets['indices'])} "
            f"positions (expected {want}, uint8): it is damaged or from another version; {again}"
        )
    return sets


def add_args(p) -> None:
    p.add_argument("--data-dir", default=paths.PREPARED_DIR)
    p.add_argument("--out", default=paths.CORRUPTED)


def run(args, params: Params) -> None:
    start = time.perf_counter()
    made = make_corrupted(params, args.data_dir, args.out)
    took = time.perf_counter() - start
    print(f"corrupted {made['images']} test images {made['sets']} ways in {took:.1f}s -> {args.out}")
