"""Fixtures: tiny CIFAR-10 archives in the real formats, a local HTTP server, tiny params.

No test touches the network: archives are built here and served from 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import io
import os
import pickle
import shutil
import struct
import subprocess
import sys
import tarfile
import threading
from functools import partial
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
PER_BATCH = 20  # images in each of data_batch_1..5 and test_batch


class Py2Pickler(pickle._Pickler):
    """Writes what Python 2's cPickle wrote for the official batches: str as BINSTRING and
    numpy's reconstructor under its old module name, so the real parser sees the real format."""

    dispatch: ClassVar[dict] = dict(pickle._Pickler.dispatch)
    OLD_MODULES: ClassVar[dict] = {"numpy._core.multiarray": "numpy.core.multiarray"}

    def save_py2_str(self, obj):
        data = obj.encode("latin-1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str
    dispatch[str] = save_py2_str

    def save_global(self, obj, name=None):
        module = self.OLD_MODULES.get(obj.__module__, obj.__module__)
        self.write(pickle.GLOBAL + f"{module}\n{name or obj.__qualname__}\n".encode())
        self.memoize(obj)


def py2_pickle(obj) -> bytes:
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def synthetic_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Learnable images: each class is a distinct colour plus noise (N x 32 x 32 x 3, labels)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    base = np.array([[(c * 73) % 256, (c * 151) % 256, (c * 211) % 256] for c in range(10)])
    noise = rng.integers(-40, 40, size=(n, 32, 32, 3))
    return np.clip(base[labels][:, None, None, :] + noise, 0, 255).astype(np.uint8), labels


def batch_dict(images: np.ndarray, labels: np.ndarray, name: str) -> dict:
    return {
        b"batch_label": f"{name} of 5".encode(),
        b"labels": [int(v) for v in labels],
        b"data": images.transpose(0, 3, 1, 2).reshape(len(images), 3072),
        b"filenames": [f"img_{i:05d}.png".encode() for i in range(len(images))],
    }


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def make_cifar_python(
    path: Path, per_batch: int = PER_BATCH, skip: str | None = None, extra: dict[str, bytes] | None = None
) -> Path:
    """A tar.gz laid out exactly like cifar-10-python.tar.gz, with ``per_batch`` images a batch."""
    files = {
        "batches.meta": py2_pickle(
            {b"label_names": [c.encode() for c in CLASSES], b"num_cases_per_batch": per_batch, b"num_vis": 3072}
        )
    }
    for i, name in enumerate([*(f"data_batch_{k}" for k in range(1, 6)), "test_batch"]):
        images, labels = synthetic_images(per_batch, seed=i)
        files[name] = py2_pickle(batch_dict(images, labels, name))
    files.update(extra or {})
    with tarfile.open(path, "w:gz") as tar:
        for name, blob in files.items():
            if name != skip:
                add_bytes(tar, f"cifar-10-batches-py/{name}", blob)
    return path


def png_bytes(image: np.ndarray, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).convert(mode).save(buf, format="PNG")
    return buf.getvalue()


def make_imagefolder(root: Path, per_class: int = 3, skip_class: str | None = None) -> Path:
    for s, split in enumerate(["train", "test"]):
        images, labels = synthetic_images(per_class * 10, seed=10 + s)
        for i, (img, lab) in enumerate(zip(images, labels, strict=True)):
            if CLASSES[lab] == skip_class and split == "test":
                continue
            d = root / split / CLASSES[lab]
            d.mkdir(parents=True, exist_ok=True)
            (d / f"{i:04d}.png").write_bytes(png_bytes(img))
    return root


def tar_directory(src: Path, dest: Path, prefix: str = "") -> Path:
    with tarfile.open(dest, "w:gz") as tar:
        tar.add(src, arcname=prefix or ".")
    return dest


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def http_server(tmp_path):
    """Serves tmp_path/www on 127.0.0.1; yields (www dir, base URL)."""
    www = tmp_path / "www"
    www.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietHandler, directory=str(www)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield www, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def cifar_archive(tmp_path) -> Path:
    return make_cifar_python(tmp_path / "cifar-10-python.tar.gz")


# The smallest working size of each registered arch; every other key (the ResNet stem) comes from
# the shipped model entry, so the tests train the models params.yaml lists.
TINY_BY_ARCH = {
    "resnet50": {"layers": [1, 1, 1, 1], "channels": [4, 8, 8, 8]},
    "vit": {"patch_size": 8, "embed_dim": 16, "depth": 1, "num_heads": 2, "mlp_ratio": 1.0},
    "cnn_vit": {
        "stem_channels": [4, 8, 8],
        "stem_strides": [2, 2, 2],
        "embed_dim": 16,
        "depth": 1,
        "num_heads": 2,
        "mlp_ratio": 1.0,
    },
    "convnext": {"patch_size": 4, "depths": [1, 1, 1, 1], "dims": [8, 8, 16, 16], "conv_mlp": True},
}
SHIPPED = yaml.safe_load((ROOT / "params.yaml").read_text())
MODELS = list(SHIPPED["runs"]["models"])  # the model list, as params.yaml gives it
TINY_MODELS = {
    name: {"arch": e["arch"], **({"stem": e["stem"]} if "stem" in e else {}), **TINY_BY_ARCH[e["arch"]]}
    for name, e in ((n, SHIPPED["presets"]["paper"]["models"][n]) for n in MODELS)
}


VAL_SIZE = 20  # carved out of the fixture's training split: 2 images a class


def prepare_dir(archive: Path, out_dir: Path, fmt: str = "cifar10-python", val_size: int = VAL_SIZE) -> Path:
    """`cnnvit prepare` of a fixture archive, with its validation carve, into ``out_dir``."""
    from cnnvit.stages.prepare import carve_validation, prepare, write_prepared

    write_prepared(carve_validation(prepare(archive, fmt), val_size, 0), out_dir, {}, 0)
    return out_dir


def tiny_params(
    url: str,
    checksum: str,
    *,
    fmt: str = "cifar10-python",
    epochs: int = 2,
    models: list[str] | None = None,
    recipes: list[str] | None = None,
    per_batch: int = PER_BATCH,
    seeds: list[int] | None = None,
) -> dict:
    """The project's params.yaml with a tiny `tiny` preset and the fixture archive as data."""
    cfg = yaml.safe_load((ROOT / "params.yaml").read_text())
    cfg["data"].update(url=url, md5=checksum, sha256=None, format=fmt)
    cfg["data"].update(expect_train=5 * per_batch, expect_test=per_batch, val_size=VAL_SIZE, val_seed=0)
    cfg["runs"].update(models=models or list(TINY_MODELS), recipes=recipes or ["paper", "modern"], seeds=seeds or [0])
    cfg["analysis"]["claims"] = claims_for(cfg["runs"]["models"])
    cfg["runtime"]["eval_batch_size"] = 64
    cfg["robustness"].update(corruptions=["gaussian_noise", "contrast"], severities=[1, 5])
    cfg["cost"].update(sizes=[32, 64], batch=8)
    for recipe in cfg["recipes"].values():
        recipe["batch_size"] = 32
    cfg["preset"] = "tiny"
    cfg["presets"]["tiny"] = {
        "hardware": "cpu",
        "train_size": 0,
        "val_size": 0,
        "test_size": 0,
        "robustness_images": 10,
        "attention_images": 4,
        "epochs": epochs,
        "minutes_per_epoch": 1,
        "mem_mb": 2000,
        "budget_minutes": None,
        "runs": {},
        "models": dict(TINY_MODELS),
    }
    return cfg


def claims_for(models) -> list[str]:
    """The paper's claims whose two models are both among ``models`` (the others cannot be tested)."""
    from cnnvit.paper import CLAIMS

    return [c.id for c in CLAIMS if all(m in models for m in c.models)]


def write_yaml(path: Path, obj) -> Path:
    path.write_text(yaml.safe_dump(obj, sort_keys=False))
    return path


def run_cli(tmp_path: Path, capsys, argv: list[str], params: dict) -> tuple[int, str]:
    """`cnnvit ARGV --params <params written to tmp_path>`: (exit code, stderr)."""
    from cnnvit.cli import main

    params_file = write_yaml(tmp_path / "params.yaml", params)
    code = main([*argv, "--params", str(params_file)])
    return code, capsys.readouterr().err.strip()


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code != 0
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def no_files(directory: Path) -> bool:
    return not directory.exists() or not any(p.is_file() for p in directory.rglob("*"))


BIN = str(Path(sys.executable).parent)
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PYTHONUNBUFFERED": "1"}


def sh(cmd: str, cwd: Path, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, shell=True, cwd=cwd, env=env or ENV, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def make_project(dest: Path, params: dict, git: bool = True) -> Path:
    """A copy of the project (the Snakefile, the workflow, dvc.yaml regenerated for ``params``, the
    source) with ``params`` as its params.yaml, committed to a fresh git repository."""
    from cnnvit.config.load import params_from_dict
    from cnnvit.dag.dvc import dvc_yaml

    dest.mkdir(parents=True)
    for name in ["Snakefile", "pyproject.toml"]:
        (dest / name).write_bytes((ROOT / name).read_bytes())
    for name in ["workflow", "report", "src"]:
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "index.html"))
    (dest / "profiles").symlink_to("workflow/profiles")  # where Snakemake looks, beside the Snakefile
    write_yaml(dest / "params.yaml", params)
    (dest / "dvc.yaml").write_text(dvc_yaml(params_from_dict(params)))
    if git:
        sh("git init -q && git add -A && git -c user.email=t@t -c user.name=t commit -qm init && dvc init -q", dest)
    return dest


PARAMS = ROOT / "params.yaml"


class RunsCode:
    """Unpickling this runs a shell command (it touches ``marker``): what a hostile file would
    plant in a pickle. A test passes when the file is refused and the marker never appears."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# ----------------------------------------------------------------------------- tiny runs on prepared data


@pytest.fixture(scope="session")
def prepared(tmp_path_factory) -> tuple[Path, Path]:
    """(the fixture archive, its prepared folder), shared by every test: none writes into them."""
    d = tmp_path_factory.mktemp("prepared")
    archive = make_cifar_python(d / "c.tar.gz")
    return archive, prepare_dir(archive, d / "prepared")


@pytest.fixture
def params(prepared):
    """The tiny params over the prepared fixture archive (2 epochs, every model, both recipes)."""
    from cnnvit.config.load import params_from_dict

    archive, _ = prepared
    return params_from_dict(tiny_params(str(archive), md5(archive)))


@pytest.fixture(scope="session")
def train_project(prepared, tmp_path_factory) -> Path:
    """A folder holding prepared/ (the shared prepared data) and the tiny params.yaml, for
    `cnnvit train` as a user runs it (see :func:`train_argv`)."""
    archive, data = prepared
    d = tmp_path_factory.mktemp("project")
    (d / "prepared").symlink_to(data)
    write_yaml(d / "params.yaml", tiny_params(str(archive), md5(archive)))
    return d


QUICK = ["--set", "presets.tiny.epochs=1"]


def train_argv(project: Path, tmp_path: Path, model: str = "vit") -> list[str]:
    """`cnnvit train` of model/paper/seed 0 for one epoch, in ``project``, into tmp_path/out and tmp_path/ckpt."""
    return [
        "train",
        "--params",
        str(project / "params.yaml"),
        "--model",
        model,
        "--recipe",
        "paper",
        "--data-dir",
        str(project / "prepared"),
        "--runs-dir",
        str(tmp_path / "out"),
        "--ckpt-dir",
        str(tmp_path / "ckpt"),
        *QUICK,
    ]


def cfg_for(params, model="vit", recipe="modern", seed=0, **profile):
    """One run's config from ``params``, with the tiny preset's keys in ``profile`` changed."""
    import json

    from cnnvit.config.load import params_from_dict
    from cnnvit.config.runs import run_config
    from cnnvit.config.types import RunSpec

    if profile:
        raw = json.loads(json.dumps(params.raw))
        raw["presets"]["tiny"].update(profile)
        params = params_from_dict(raw)
    return run_config(params, RunSpec(model, recipe, seed))


def paper_vit(archive: Path, epochs: int = 1, **recipe):
    """The ViT under the paper recipe (a constant LR) on the fixture archive, with the recipe's
    keys in ``recipe`` changed."""
    from cnnvit.config.load import params_from_dict
    from cnnvit.config.runs import run_config
    from cnnvit.config.types import RunSpec

    raw = tiny_params(str(archive), md5(archive), epochs=epochs)
    raw["recipes"]["paper"].update(recipe)
    return run_config(params_from_dict(raw), RunSpec("vit", "paper", 0))


def metrics(run_dir: Path):
    """A run's metrics.csv without its timings (which no two runs share)."""
    import pandas as pd

    from cnnvit.runfiles import TIMING_COLUMNS

    return pd.read_csv(run_dir / "metrics.csv").drop(columns=TIMING_COLUMNS)


@contextlib.contextmanager
def forward_calls(top=("ResNet", "VisionTransformer")):
    """(autocast on, its dtype, input channels_last, weights channels_last) of every forward of a
    whole model (a timm class in ``top``) while the block runs."""
    import torch

    seen: list[tuple] = []

    def hook(module, args):
        if type(module).__name__ in top:
            conv = next(p for p in module.parameters() if p.dim() == 4)
            x = args[0]
            seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"),
                         x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous(),
                         conv.is_contiguous(memory_format=torch.channels_last)))  # fmt: skip

    handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


def pytest_configure(config):
    """Under pytest-xdist (`-n 2`, the fast tier) each worker is one process of several on the
    machine's cores: one torch thread each, or their OpenMP threads oversubscribe the cores and
    slow down several-fold. The jobs the workflow tests start set their own threads."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)
