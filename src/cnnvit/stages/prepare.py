"""Prepare stage: the downloaded archive -> ``train.npz``, ``val.npz``, ``test.npz`` (uint8 NxHxWxC
images, int64 labels, class names) and ``stats.json`` (per-channel mean and std of the images
trained on, the counts, and the seed that draws every run's validation and test subsets).

    cnnvit prepare --raw data/raw/cifar10.tar.gz --out-dir data/prepared

Two layouts (``data.format``): ``cifar10-python`` (the official pickled batches, read with an
unpickler that allows only numpy arrays) and ``imagefolder`` (``train/<class>/*.png|jpg`` and
``test/<class>/*``). Archives are read in memory, never extracted; absolute, ``..`` and link
members are refused; an archive with two roots (two train/ folders) is refused, not merged. A
stratified validation set of ``data.val_size`` images, drawn with ``data.val_seed``, is carved
out of the official training split: the same for every model, recipe, seed and fraction, and
never trained on (the epoch a run reports is chosen on it, not on the test set). The result is
checked (10 classes of 32x32 RGB images, the expected counts, no constant channel, no test image
a copy of a training image by its pixels; copies within a split are a warning, and kept out of
the validation set) before anything is written, and the four files replace the folder together.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import tarfile
import time
import warnings
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import ClassVar

import numpy as np
from PIL import Image, UnidentifiedImageError

from cnnvit import paths
from cnnvit.cifar import IMG_SIZE, NUM_CLASSES, check_duplicates, validation_problem, validation_split
from cnnvit.config.types import Params
from cnnvit.errors import CnnvitError, first_line
from cnnvit.files import atomic_dir, cpu_name, provenance, write_failure, write_json
from cnnvit.stage import Out, Stage

STAGE = Stage(
    name="prepare",
    help="archive -> train/validation/test .npz + stats",
    cmd=f"cnnvit prepare --raw {paths.RAW} --out-dir {paths.PREPARED_DIR}",
    deps=(paths.RAW,),
    outs=tuple(Out(p) for p in paths.PREPARED),
    params=("data.format", "data.expect_train", "data.expect_test", "data.val_size", "data.val_seed"),
    priority=10,
)

IMAGE_EXTS = {".png", ".jpg", ".jpeg"}
BATCH_DIR = "cifar-10-batches-py"
TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
BATCH_FILES = {*TRAIN_BATCHES, "test_batch", "batches.meta"}
COMPRESSED_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")  # gzip, bzip2, xz


def _safe_member(name: str, member: tarfile.TarInfo | None, archive: Path) -> None:
    parts = PurePosixPath(name).parts
    why = None
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        why = "an absolute path"
    elif ".." in parts:
        why = "a '..' path"
    elif member is not None and not (member.isfile() or member.isdir()):
        why = "a link or special file"
    if why:
        raise CnnvitError(
            f"unsafe member {name!r} in {archive} ({why}): refusing to read it; this is not a genuine "
            "CIFAR-10 archive, fix data.url"
        )


def _too_big(name: str, size: int, limit: int, raw: Path) -> CnnvitError:
    return CnnvitError(
        f"{raw}: {name} is {size / 2**20:,.1f} MB, more than any file of a CIFAR-10 archive ({limit / 2**20:g} MB): "
        "not a genuine CIFAR-10 archive; fix data.url"
    )


def iter_members(
    raw: Path, wanted: Callable[[str], bool] = lambda name: True, max_bytes: int = 64 * 2**20
) -> Iterator[tuple[str, bytes | None]]:
    """(relative posix path, bytes) for each wanted file of an archive or directory; (path, None)
    for each directory. Files that are not wanted are skipped unread, and no file larger than
    ``max_bytes`` is read: an archive cannot make this hold more than one such file in memory."""
    if raw.is_dir():
        for path in sorted(raw.rglob("*")):
            rel = path.relative_to(raw).as_posix()
            if path.is_symlink():
                raise CnnvitError(f"unsafe member {rel!r} in {raw} (a link): remove it")
            if not path.is_file():
                yield rel, None
            elif wanted(rel):
                if (size := path.stat().st_size) > max_bytes:
                    raise _too_big(rel, size, max_bytes, raw)
                yield rel, path.read_bytes()
        return
    if not raw.exists():
        raise CnnvitError(f"no archive at {raw}: run `cnnvit download` first")
    with open(raw, "rb") as f:
        head = f.read(512)
    if head.startswith(b"PK"):
        raise CnnvitError(f"{raw} is a zip file, not a tar archive: repack it as .tar.gz (or point data.url at one)")
    if not (head.startswith(COMPRESSED_MAGIC) or head[257:262] == b"ustar"):
        raise CnnvitError(f"{raw} is not a tar archive (nor a gzip, bzip2 or xz one): data.url must point at a .tar.gz")
    try:
        with tarfile.open(raw, mode="r|*") as tar:
            for member in tar:
                name = member.name.removeprefix("./")
                _safe_member(name, member, raw)
                if member.isfile() and wanted(name):
                    if member.size > max_bytes:
                        raise _too_big(name, member.size, max_bytes, raw)
                    blob = tar.extractfile(member)
                    yield name, blob.read() if blob else b""
                elif member.isdir() and name:
                    yield name, None
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise CnnvitError(
            f"corrupt or truncated archive {raw} ({type(exc).__name__}: {exc}): delete it and run "
            "`cnnvit download` again, or fix data.url"
        ) from None


class _RestrictedUnpickler(pickle.Unpickler):
    """Allows only what the official batches need: numpy array reconstruction."""

    _reconstruct = np.zeros(1).__reduce__()[0]
    ALLOWED: ClassVar[dict] = {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }

    def find_class(self, module: str, name: str):
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"forbidden global {module}.{name}") from None


def load_batch(blob: bytes, name: str) -> dict:
    try:
        obj = _RestrictedUnpickler(io.BytesIO(blob), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError) as exc:
        raise CnnvitError(
            f"{name}: refusing to unpickle ({exc}): not a genuine CIFAR-10 batch; fix data.url to point at a "
            "trusted copy"
        ) from None
    if not isinstance(obj, dict):
        raise CnnvitError(f"{name}: expected a dict, got {type(obj).__name__}: fix data.url")
    return obj


def _read_cifar_python(members: dict[str, bytes | None], raw: Path) -> dict:
    by_base = {PurePosixPath(k).name: v for k, v in members.items() if f"{BATCH_DIR}/" in k and v is not None}
    for needed in [*TRAIN_BATCHES, "test_batch", "batches.meta"]:
        if needed not in by_base:
            raise CnnvitError(
                f"{raw}: missing {BATCH_DIR}/{needed}: the archive is incomplete or not cifar10-python; "
                "re-download it, fix data.url, or set data.format"
            )
    meta = load_batch(by_base["batches.meta"], "batches.meta")
    if b"label_names" not in meta:
        raise CnnvitError(f"{raw}: batches.meta has no label_names: fix data.url")
    classes = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[b"label_names"]]

    def split(names: list[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
        images, labels, rows = [], [], []
        for name in names:
            batch = load_batch(by_base[name], name)
            data, lab = batch.get(b"data"), batch.get(b"labels")
            if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != 3 * IMG_SIZE**2:
                raise CnnvitError(f"{name}: b'data' is not an N x 3072 array: fix data.url")
            if lab is None or len(lab) != len(data):
                raise CnnvitError(f"{name}: b'labels' does not match b'data' in length: fix data.url")
            images.append(data.astype(np.uint8).reshape(-1, 3, IMG_SIZE, IMG_SIZE).transpose(0, 2, 3, 1))
            labels.append(np.asarray(lab, dtype=np.int64))
            rows += [f"{name}[{i}]" for i in range(len(data))]
        return np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels), rows

    (xtr, ytr, ntr), (xte, yte, nte) = split(TRAIN_BATCHES), split(["test_batch"])
    return {"train": (xtr, ytr), "test": (xte, yte), "classes": classes, "names": {"train": ntr, "test": nte}}


def _decode(name_blob: tuple[str, bytes]) -> np.ndarray:
    name, blob = name_blob
    try:
        with Image.open(io.BytesIO(blob)) as im:
            if im.size != (IMG_SIZE, IMG_SIZE) or im.mode != "RGB":
                raise CnnvitError(
                    f"{name}: image is {im.size[0]}x{im.size[1]} {im.mode}, not 32x32 RGB: replace or remove the file"
                )
            return np.asarray(im, dtype=np.uint8)
    except UnidentifiedImageError:
        raise CnnvitError(f"{name}: not a readable image (PIL cannot identify it): replace or remove it") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise CnnvitError(
            f"{name}: a decompression bomb ({first_line(exc, 80)}), not a 32x32 CIFAR-10 image: "
            "remove it or fix data.url"
        ) from None
    except OSError as exc:
        raise CnnvitError(f"{name}: not a readable image ({exc}): replace or remove it") from None


def _read_imagefolder(members: dict[str, bytes | None], raw: Path) -> dict:
    folders: dict[str, dict[str, list[str]]] = {"train": {}, "test": {}}
    roots: dict[str, str] = {}  # the folder holding train/ and test/ -> an entry found under it
    for name, blob in members.items():
        parts = PurePosixPath(name).parts
        for i, part in enumerate(parts[:-1]):  # <...>/<split>/<class>[/<file>]
            if part in folders and len(parts) - i in (2, 3):
                roots.setdefault("/".join(parts[:i]), name)
                cls = folders[part].setdefault(parts[i + 1], [])
                if len(parts) - i == 3 and blob is not None and PurePosixPath(name).suffix.lower() in IMAGE_EXTS:
                    cls.append(name)
                break
    if len(roots) > 1:
        shown = ", ".join(f"{r}/" if r else "the top level" for r in sorted(roots)[:3])
        raise CnnvitError(
            f"{raw}: {len(roots)} dataset roots ({shown}), each with train/ or test/ class folders: an archive holds "
            "one; they would be merged, their images counted twice: remove all but one"
        )
    classes = sorted(folders["train"])
    if not classes:
        raise CnnvitError(
            f"{raw}: no train/<class>/*.png|jpg images: not an imagefolder archive; fix data.url "
            "or set data.format=cifar10-python"
        )
    for split in ("train", "test"):
        for name in sorted(set(classes) | set(folders[split])):
            if name not in folders[split] or name not in classes:
                missing = "train" if name not in classes else split
                raise CnnvitError(
                    f"{raw}: missing class folder {missing}/{name}: every class needs a folder in "
                    "both train/ and test/; fix the archive"
                )
            if not folders[split][name]:
                raise CnnvitError(
                    f"{raw}: class folder {split}/{name} has no images: add them or remove the folder from both splits"
                )
    out: dict = {"classes": classes, "names": {}}
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for split in ("train", "test"):
            items = [(full, label) for label, cls in enumerate(classes) for full in sorted(folders[split][cls])]
            images = list(pool.map(_decode, ((n, members[n]) for n, _ in items), chunksize=256))
            out[split] = (np.stack(images), np.array([label for _, label in items], dtype=np.int64))
            out["names"][split] = [n for n, _ in items]
    return out


READERS = {"cifar10-python": _read_cifar_python, "imagefolder": _read_imagefolder}
SPLITS = ("train", "val", "test")  # what write_prepared writes, one .npz each
PREPARED_FILES = {*(f"{s}.npz" for s in SPLITS), "stats.json"}


def prepare(raw: str | Path, fmt: str, expect_train: int = 0, expect_test: int = 0) -> dict:
    """Parse and check an archive or directory: ``{"train": (x, y), "test": (x, y), "classes": [...]}``."""
    raw = Path(raw)
    if fmt not in READERS:
        raise CnnvitError(f"unknown data.format {fmt!r}: use one of {', '.join(READERS)}")
    # An image over PIL's pixel limit is a decompression bomb, never a CIFAR-10 image: refuse it (the
    # decoder threads share this filter; it is set once, here, not per thread).
    warnings.simplefilter("error", Image.DecompressionBombWarning)
    if fmt == "cifar10-python":  # the batches are ~31 MB each; anything else in the archive is not read
        members = dict(iter_members(raw, lambda n: f"{BATCH_DIR}/" in n and PurePosixPath(n).name in BATCH_FILES))
    else:  # a 32x32 image is a few kB; only images are read
        members = dict(iter_members(raw, lambda n: PurePosixPath(n).suffix.lower() in IMAGE_EXTS, 2**20))
    result = READERS[fmt](members, raw)
    if len(result["classes"]) != NUM_CLASSES:
        raise CnnvitError(
            f"{raw}: {len(result['classes'])} classes ({', '.join(result['classes'][:12])}), but the models are "
            f"built for CIFAR-10's {NUM_CLASSES}: fix data.url (or the class folders)"
        )
    for split, expected, key in (("train", expect_train, "expect_train"), ("test", expect_test, "expect_test")):
        labels = result[split][1]
        if expected and len(labels) != expected:
            raise CnnvitError(
                f"{raw}: found {len(labels)} {split} images, expected {expected}: the archive is incomplete or "
                f"a different dataset; fix data.url, or set data.{key}=0 to skip this check"
            )
        if len(labels) and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
            raise CnnvitError(f"{raw}: {split} labels fall outside 0..{NUM_CLASSES - 1}: fix data.url")
        if not len(labels):
            raise CnnvitError(f"{raw}: the {split} split is empty: fix data.url")
    result["repeated"] = check_duplicates(result, raw)
    return result


def carve_validation(result: dict, val_size: int, val_seed: int) -> dict:
    """Split a stratified, seeded validation set off the official training split (``val``). It is
    the same for every run, and no run trains on it; the test split is left as it is."""
    x, y = result["train"]
    eligible = ~result["repeated"] if "repeated" in result else np.ones(len(y), dtype=bool)
    if lost := sorted(set(np.unique(y)) - set(np.unique(y[eligible]))):
        raise CnnvitError(
            f"data.val_size: class {result['classes'][lost[0]]!r} has no training image without a copy in the "
            "training split, and a copy cannot go to validation (it would also be trained on): remove the copies"
        )
    problem = validation_problem(y, val_size, result["classes"], eligible)
    if problem:
        raise CnnvitError(f"data.val_size: {problem}")
    keep, val = validation_split(y, val_size, val_seed, eligible)
    return {**result, "train": (x[keep], y[keep]), "val": (x[val], y[val])}


def channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Exact per-channel mean/std in [0, 1], from 256-bin histograms (no float copy of the data)."""
    values = np.arange(256, dtype=np.float64) / 255.0
    means, stds = [], []
    for c in range(images.shape[-1]):
        hist = np.bincount(images[..., c].ravel(), minlength=256).astype(np.float64)
        mean = float((hist * values).sum() / hist.sum())
        var = float((hist * (values - mean) ** 2).sum() / hist.sum())
        means.append(round(mean, 6))
        stds.append(round(var**0.5, 6))
    return means, stds


def write_prepared(result: dict, out_dir: str | Path, params: dict, val_seed: int = 0) -> dict:
    """The splits as .npz files and stats.json (mean and std of the images trained on, counts, the
    seed that draws the runs' validation and test subsets), all replaced together."""
    out_dir = Path(out_dir)
    mean, std = channel_stats(result["train"][0])
    if min(std) == 0:
        channel = "RGB"[std.index(0)]
        raise CnnvitError(
            f"every training image has the same {channel} value (std 0): a constant channel cannot be "
            "normalised or learned from; fix data.url"
        )
    prov = provenance(params, cpu_name())
    stats = {
        "mean": mean,
        "std": std,
        "classes": result["classes"],
        "counts": {s: len(result[s][1]) for s in SPLITS},
        "val_seed": val_seed,
        "provenance": prov,
    }
    classes = np.array(result["classes"])
    with atomic_dir(out_dir, owned=lambda name: name in PREPARED_FILES) as tmp:
        for split in SPLITS:
            x, y = result[split]
            try:
                with open(tmp / f"{split}.npz", "wb") as f:
                    np.savez(f, images=x, labels=y, classes=classes, provenance=np.array(json.dumps(prov)))
            except OSError as exc:  # name the file that failed, not the folder it was going into
                raise write_failure(out_dir / f"{split}.npz", exc) from None
        write_json(tmp / "stats.json", stats)
    return stats


def add_args(p) -> None:
    p.add_argument("--raw", default=paths.RAW, help="archive or directory")
    p.add_argument("--out-dir", default=paths.PREPARED_DIR)


def run(args, params: Params) -> None:
    d = params.data
    t0 = time.perf_counter()
    result = carve_validation(prepare(args.raw, d.format, d.expect_train, d.expect_test), d.val_size, d.val_seed)
    stats = write_prepared(result, args.out_dir, {"data": params.raw["data"]}, d.val_seed)
    n = stats["counts"]
    print(
        f"prepared {n['train']} train + {n['val']} validation (carved from the training split) + {n['test']} test "
        f"images in {time.perf_counter() - t0:.1f}s; mean {stats['mean']} std {stats['std']}"
    )
