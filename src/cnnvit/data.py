"""Data stages: ``cnnvit download`` fetches and verifies the archive; ``cnnvit prepare`` turns
it into ``train.npz``/``test.npz`` (uint8 NxHxWxC images, int64 labels, class names) plus
``stats.json`` (the train split's per-channel mean and std).

    cnnvit download --out data/raw/cifar10.tar.gz
    cnnvit prepare --raw data/raw/cifar10.tar.gz --out-dir data/prepared

``data.url`` may be http(s)://, file:// or a local path (an archive, or for ``imagefolder`` a
directory). Archives are read in memory, never extracted, and unsafe members are refused.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import pickle
import re
import socket
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import ClassVar

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from cnnvit.artifacts import atomic_path, provenance, write_json
from cnnvit.config import local_path
from cnnvit.errors import CnnvitError

CHUNK = 1 << 20
RETRIES = 3
BACKOFF_S = 1.0  # doubled after each failed attempt
TIMEOUT_S = 30
IMAGE_EXTS = {".png", ".jpg", ".jpeg"}
BATCH_DIR = "cifar-10-batches-py"
TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]


# ----------------------------------------------------------------------------- download


def _checksum(data_cfg: dict) -> tuple[str, str]:
    if data_cfg.get("sha256"):
        return "sha256", data_cfg["sha256"]
    return "md5", data_cfg["md5"]


def file_digest(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _stream(src: io.BufferedIOBase, dst: Path, algo: str, total: int | None, label: str) -> str:
    h = hashlib.new(algo)
    with (
        open(dst, "wb") as out,
        tqdm(total=total, unit="B", unit_scale=True, desc=label, disable=None) as bar,
    ):
        while chunk := src.read(CHUNK):
            h.update(chunk)
            out.write(chunk)
            bar.update(len(chunk))
    return h.hexdigest()


def _pack_directory(src: Path, dst: Path) -> None:
    """A byte-for-byte reproducible tar.gz of a directory (sorted, zeroed times and owners)."""
    with (
        open(dst, "wb") as raw,
        gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for path in sorted(p for p in src.rglob("*") if p.is_file()):
            info = tar.gettarinfo(str(path), arcname=path.relative_to(src).as_posix())
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            with open(path, "rb") as f:
                tar.addfile(info, f)


def _http_fetch(url: str, tmp: Path, algo: str) -> str:
    """Download with retries on transient failures; returns the digest of what was written."""
    host = urllib.parse.urlparse(url).netloc
    delay = BACKOFF_S
    for attempt in range(1, RETRIES + 1):
        try:
            with urllib.request.urlopen(url, timeout=TIMEOUT_S) as resp:
                total = int(resp.headers.get("Content-Length") or 0) or None
                digest = _stream(resp, tmp, algo, total, Path(url).name)
                if total is not None and tmp.stat().st_size != total:
                    raise ConnectionError(f"got {tmp.stat().st_size} of {total} bytes")
                return digest
        except urllib.error.HTTPError as exc:
            if exc.code < 500 or attempt == RETRIES:
                raise CnnvitError(
                    f"HTTP {exc.code} {exc.reason} for {url}: the archive is not at that address; "
                    "fix data.url or point it at a mirror or a local copy"
                ) from None
            reason = f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError, ConnectionError) as exc:
            reason = str(getattr(exc, "reason", exc))
            if attempt == RETRIES:
                raise CnnvitError(
                    f"cannot reach {host} ({reason}) after {RETRIES} attempts: no network? "
                    "point data.url at a mirror or a local copy of the archive"
                ) from None
        print(f"download attempt {attempt} failed ({reason}); retrying in {delay:.1f}s")
        time.sleep(delay)
        delay *= 2
    raise AssertionError("unreachable")


def download(data_cfg: dict, out: str | Path) -> Path:
    """Fetch ``data_cfg['url']`` to ``out`` and verify its checksum; skip if ``out`` verifies."""
    out, url = Path(out), data_cfg["url"]
    algo, expected = _checksum(data_cfg)
    local = local_path(url)
    if local is not None and local.is_dir():
        # A directory has no archive checksum of its own; pack it reproducibly instead.
        with atomic_path(out) as tmp:
            _pack_directory(local, tmp)
        print(f"packed directory {local} into {out} (directory sources are not checksummed)")
        return out
    if out.exists():
        if file_digest(out, algo) == expected:
            print(f"{out} already present and verified ({algo} {expected}); not fetching again")
            return out
        print(f"{out} exists but does not verify; removing it and fetching again")
        out.unlink()
    socket.setdefaulttimeout(TIMEOUT_S)
    with atomic_path(out) as tmp:
        if local is None:
            if not url.startswith(("http://", "https://")):
                raise CnnvitError(f"data.url {url!r}: unsupported scheme; use http(s)://, file:// or a path")
            actual = _http_fetch(url, tmp, algo)
        else:
            if not local.is_file():
                raise CnnvitError(f"data.url: no file at {local}: fix data.url or copy the archive there")
            with open(local, "rb") as src:
                actual = _stream(src, tmp, algo, local.stat().st_size, local.name)
        if actual != expected:
            raise CnnvitError(
                f"checksum mismatch for {url}: expected {algo} {expected}, got {actual}: the file "
                f"is corrupt or a different archive; fix data.url or data.{algo}"
            )
    print(f"downloaded {url} -> {out} ({algo} verified)")
    return out


# ----------------------------------------------------------------------------- reading


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
            f"unsafe member {name!r} in {archive} ({why}): refusing to read it; "
            "this is not a genuine CIFAR-10 archive, fix data.url"
        )


def iter_files(raw: Path) -> Iterator[tuple[str, bytes]]:
    """(relative posix path, bytes) for every regular file of an archive or directory."""
    if raw.is_dir():
        for path in sorted(p for p in raw.rglob("*") if p.is_file() or p.is_symlink()):
            rel = path.relative_to(raw).as_posix()
            if path.is_symlink():
                raise CnnvitError(f"unsafe member {rel!r} in {raw} (a link): remove it")
            yield rel, path.read_bytes()
        return
    if not raw.exists():
        raise CnnvitError(f"no archive at {raw}: run `cnnvit download` first")
    try:
        with tarfile.open(raw, mode="r|*") as tar:
            for member in tar:
                _safe_member(member.name, member, raw)
                if member.isfile():
                    f = tar.extractfile(member)
                    yield member.name, f.read() if f else b""
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise CnnvitError(
            f"corrupt or truncated archive {raw} ({type(exc).__name__}: {exc}): delete it and "
            "run `cnnvit download` again, or fix data.url"
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
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        raise CnnvitError(
            f"{name}: refusing to unpickle ({exc}): not a genuine CIFAR-10 batch; "
            "fix data.url to point at a trusted copy"
        ) from None
    if not isinstance(obj, dict):
        raise CnnvitError(f"{name}: expected a dict, got {type(obj).__name__}: fix data.url")
    return obj


def _read_cifar_python(files: dict[str, bytes], raw: Path) -> dict:
    by_base = {PurePosixPath(k).name: v for k, v in files.items() if f"{BATCH_DIR}/" in k}
    for needed in [*TRAIN_BATCHES, "test_batch", "batches.meta"]:
        if needed not in by_base:
            raise CnnvitError(
                f"{raw}: missing {BATCH_DIR}/{needed}: the archive is incomplete or not "
                "cifar10-python; re-download it, fix data.url, or set data.format"
            )
    meta = load_batch(by_base["batches.meta"], "batches.meta")
    if b"label_names" not in meta:
        raise CnnvitError(f"{raw}: batches.meta has no label_names: fix data.url")
    classes = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[b"label_names"]]

    def split(names: list[str]) -> tuple[np.ndarray, np.ndarray]:
        images, labels = [], []
        for name in names:
            batch = load_batch(by_base[name], name)
            data, lab = batch.get(b"data"), batch.get(b"labels")
            if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != 3072:
                raise CnnvitError(f"{name}: b'data' is not an N x 3072 array: fix data.url")
            if lab is None or len(lab) != len(data):
                raise CnnvitError(f"{name}: b'labels' does not match b'data' in length")
            images.append(data.astype(np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            labels.append(np.asarray(lab, dtype=np.int64))
        return np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels)

    (xtr, ytr), (xte, yte) = split(TRAIN_BATCHES), split(["test_batch"])
    return {"train": (xtr, ytr), "test": (xte, yte), "classes": classes}


def _decode(name_blob: tuple[str, bytes]) -> np.ndarray:
    name, blob = name_blob
    try:
        with Image.open(io.BytesIO(blob)) as im:
            if im.size != (32, 32) or im.mode != "RGB":
                raise CnnvitError(
                    f"{name}: image is {im.size[0]}x{im.size[1]} {im.mode}, not 32x32 RGB: "
                    "replace or remove the file"
                )
            return np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as exc:
        raise CnnvitError(f"{name}: not a readable image ({exc}): replace or remove it") from None


def _read_imagefolder(files: dict[str, bytes], raw: Path) -> dict:
    found: dict[str, dict[str, list[tuple[str, str]]]] = {"train": {}, "test": {}}
    for name in files:
        parts = PurePosixPath(name).parts
        if len(parts) < 3 or PurePosixPath(name).suffix.lower() not in IMAGE_EXTS:
            continue
        split, cls = parts[-3], parts[-2]
        if split in found:
            found[split].setdefault(cls, []).append((parts[-1], name))
    classes = sorted(found["train"])
    if not classes:
        raise CnnvitError(
            f"{raw}: no train/<class>/*.png|jpg images: not an imagefolder archive; "
            "fix data.url or set data.format=cifar10-python"
        )
    for split in ("train", "test"):
        for cls in sorted(set(classes) | set(found[split])):
            if cls not in found[split] or cls not in classes:
                raise CnnvitError(
                    f"{raw}: missing class folder {'train' if cls not in classes else split}/{cls}: "
                    "every class needs a folder in both train/ and test/; fix the archive"
                )
    out: dict = {"classes": classes}
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for split in ("train", "test"):
            items = [
                (full, files[full], label)
                for label, cls in enumerate(classes)
                for _, full in sorted(found[split][cls])
            ]
            images = list(pool.map(_decode, ((n, b) for n, b, _ in items), chunksize=256))
            labels = np.array([label for *_, label in items], dtype=np.int64)
            out[split] = (np.stack(images), labels)
    return out


READERS = {"cifar10-python": _read_cifar_python, "imagefolder": _read_imagefolder}


def prepare(raw: str | Path, fmt: str, expect_train: int = 0, expect_test: int = 0) -> dict:
    """Parse and check an archive or directory; returns ``{"train": (x, y), "test": ..., "classes"}``."""
    raw = Path(raw)
    if fmt not in READERS:
        raise CnnvitError(f"unknown data.format {fmt!r}: use one of {', '.join(READERS)}")
    wanted = (lambda n: f"{BATCH_DIR}/" in n) if fmt == "cifar10-python" else (lambda n: True)
    files = {name: blob for name, blob in iter_files(raw) if wanted(name)}
    result = READERS[fmt](files, raw)
    for split, expected, key in (
        ("train", expect_train, "expect_train"),
        ("test", expect_test, "expect_test"),
    ):
        n = len(result[split][1])
        if expected and n != expected:
            raise CnnvitError(
                f"{raw}: found {n} {split} images, expected {expected}: the archive is incomplete "
                f"or a different dataset; fix data.url, or set data.{key}=0 to skip this check"
            )
        labels = result[split][1]
        if n and (labels.min() < 0 or labels.max() >= len(result["classes"])):
            raise CnnvitError(f"{raw}: {split} labels fall outside 0..{len(result['classes']) - 1}")
    return result


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


def write_prepared(result: dict, out_dir: str | Path, params: dict) -> dict:
    out_dir = Path(out_dir)
    mean, std = channel_stats(result["train"][0])
    prov = provenance(params, device="cpu")
    stats = {
        "mean": mean,
        "std": std,
        "classes": result["classes"],
        "counts": {s: len(result[s][1]) for s in ("train", "test")},
        "provenance": prov,
    }
    classes = np.array(result["classes"])
    with atomic_path(out_dir / "train.npz") as tr, atomic_path(out_dir / "test.npz") as te:
        for tmp, split in ((tr, "train"), (te, "test")):
            x, y = result[split]
            with open(tmp, "wb") as f:
                np.savez(f, images=x, labels=y, classes=classes, provenance=np.array(json.dumps(prov)))
        write_json(out_dir / "stats.json", stats)
    return stats


# ----------------------------------------------------------------------------- CLI


def add_download_args(p) -> None:
    p.add_argument("--out", default="data/raw/cifar10.tar.gz", help="where to write the archive")


def run_download(args, cfg: dict) -> None:
    download(cfg["data"], args.out)


def add_prepare_args(p) -> None:
    p.add_argument("--raw", default="data/raw/cifar10.tar.gz", help="archive or directory")
    p.add_argument("--out-dir", default="data/prepared")


def run_prepare(args, cfg: dict) -> None:
    d = cfg["data"]
    t0 = time.perf_counter()
    result = prepare(args.raw, d["format"], d.get("expect_train", 0), d.get("expect_test", 0))
    stats = write_prepared(result, args.out_dir, {"data": d})
    print(
        f"prepared {stats['counts']['train']} train + {stats['counts']['test']} test images "
        f"in {time.perf_counter() - t0:.1f}s; mean {stats['mean']} std {stats['std']}"
    )
