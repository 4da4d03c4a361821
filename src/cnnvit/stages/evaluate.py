"""Evaluate stage: trained runs' weights -> their accuracy under corruption, and where they attend.

    cnnvit evaluate --model vit --recipe paper --seeds 0 1 2 [--fraction 0.2] --data-dir data/prepared \
        --corrupted data/corrupted/test.npz --runs-dir results/runs --out-dir results/eval
    cnnvit evaluate --all-runs --workers auto ...   # every run of params.yaml, N at a time

For each run (chosen as :mod:`cnnvit.batch` says), loads its ``weights.safetensors`` (the epoch
chosen on the validation split) into the model its params describe (strictly: another shape is
refused) and writes, together, to ``--out-dir/<run>``:

- ``robustness.csv``: accuracy (%) on the clean robustness images (severity 0) and on every
  corruption and severity of ``--corrupted`` (cnnvit corrupt), inputs scaled as in training;
- ``attention.csv``: for a ViT or the hybrid, the mean attention distance in input pixels of every
  head of every layer over ``presets.<p>.attention_images`` clean test images
  (:mod:`cnnvit.measure.attention`); for a convnet, the header only;
- ``robustness_correct.npz``: per robustness image, was the run right, clean and on every corruption
  and severity (:func:`cnnvit.stats.robustness.read_per_image`), for comparisons paired by image;
- ``evaluation.json``: the run, the sha256 of the weights file these numbers are of, and the
  settings they were measured under (:func:`evaluation_settings`).

A change to the corruptions or their settings re-runs this stage, never the training. A run whose
``evaluation.json`` names its current weights and the current settings (the model entry, the
corrupted set's sha256, ``attention_images``, the run's resolved precision, test subset and input
scaling, and the code that sets the numbers, digested as :mod:`cnnvit.code_identity` does: a
changed message or comment does not count; :func:`evaluation_settings`) is kept, not evaluated
again (``vit-paper-s0: evaluation up to date, kept``): DVC's one evaluate stage over every run
re-does only the runs that changed.
"""

from __future__ import annotations

import csv
import functools
import json
import time
from pathlib import Path

import numpy as np
import torch

from cnnvit import paths
from cnnvit.batch import add_run_args, checked_runs, run_each, worker_count
from cnnvit.cifar import IMG_SIZE
from cnnvit.code_identity import digests, training_modules
from cnnvit.config.runs import run_config
from cnnvit.config.types import Params, RunConfig, RunSpec
from cnnvit.errors import CnnvitError
from cnnvit.files import atomic_dir, file_sha256, read_json, write_json
from cnnvit.measure.attention import attention_maps, mean_distance
from cnnvit.models.weights import load_weights
from cnnvit.runfiles import WEIGHTS_FILE
from cnnvit.stage import RUN, RUNS, Out, Stage
from cnnvit.stages.corrupt import read_corrupted, robustness_subset
from cnnvit.stats.robustness import write_per_image
from cnnvit.training.device import resolve_precision, select_device, use_precision
from cnnvit.training.inputs import Augment, load_stats
from cnnvit.training.numerics import autocast, channels_last, eval_batch

STAGE = Stage(
    name="evaluate",
    help="a trained run -> its accuracy under corruption, and where it attends",
    cmd=f"cnnvit evaluate {RUNS} --data-dir {paths.PREPARED_DIR} --corrupted {paths.CORRUPTED} "
    f"--runs-dir {paths.RUNS_DIR} --out-dir {paths.EVAL_DIR}",
    deps=(*paths.PREPARED, paths.CORRUPTED, f"{paths.RUNS_DIR}/{RUN}/{WEIGHTS_FILE}"),
    outs=tuple(Out(f"{paths.EVAL_DIR}/{RUN}/{f}") for f in paths.EVAL_FILES),
    # The run's config as training resolves it (the sizes and epochs too, which a change retrains
    # anyway), its precision, and what it measures on; the corruptions come in the corrupted set.
    params=(
        "preset",
        "presets.{preset}.train_size",
        "presets.{preset}.val_size",
        "presets.{preset}.test_size",
        "presets.{preset}.epochs",
        "presets.{preset}.attention_images",
        "presets.{preset}.models.{model}",
        "recipes.{recipe}.normalize",
        "runtime.precision",
    ),
    fraction_params=("runs.fraction_budget",),
    per_run=True,
    device=True,
    threads="runtime",
)

# The code that sets an evaluation's numbers beyond the model's own (code_identity.training_modules
# of its arch): this stage, the corrupted set's reader and the clean subset, the attention
# distances, the weights loader and the per-image file.
EVALUATION_CODE = (
    "cnnvit.stages.evaluate",
    "cnnvit.stages.corrupt",
    "cnnvit.measure.attention",
    "cnnvit.models.weights",
    "cnnvit.stats.robustness",
)
ROBUSTNESS_COLUMNS = ["corruption", "severity", "acc", "images"]
ATTENTION_COLUMNS = ["layer", "head", "distance_px"]


def _correct(model, augment: Augment, images: np.ndarray, labels: np.ndarray, device, batch: int) -> np.ndarray:
    right = [np.zeros(0, dtype=bool)]
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    with torch.no_grad():
        for i in range(0, len(x), batch):
            logits = model(augment(x[i : i + batch].to(device)))
            right.append(logits.argmax(1).cpu().numpy() == labels[i : i + batch])
    return np.concatenate(right)


def _pct(right: np.ndarray) -> float:
    return 100.0 * int(right.sum()) / len(right)


def evaluation_settings(cfg: RunConfig, corrupted_sha256: str, attention_images: int, precision: str) -> dict:
    """What an evaluation's numbers depend on besides the weights: recorded in evaluation.json."""
    return {
        "model": json.loads(json.dumps(cfg.model.to_dict())),  # the model the weights are loaded into
        "corrupted_sha256": corrupted_sha256,
        "attention_images": attention_images,
        "precision": precision,
        "test_size": cfg.test_size,
        "normalize": cfg.recipe.normalize,
        "code": digests((*training_modules(type(cfg.model).__module__), *EVALUATION_CODE)),
    }


def evaluation_status(name: str, weights: Path, dest: Path, settings: dict) -> str | None:
    """Why run ``name``'s evaluation in ``dest`` must be (re)done, or None when it is up to date:
    its files are there and its record names these weights and these settings."""
    record_path = dest / paths.EVAL_RECORD
    if not record_path.exists():
        return "not evaluated yet"
    if missing := [f for f in paths.EVAL_FILES if not (dest / f).is_file()]:
        return f"its {', '.join(missing)} missing"
    try:
        record = read_json(record_path)
    except CnnvitError:
        return f"its {paths.EVAL_RECORD} is unreadable"
    if not isinstance(record, dict) or record.get("run") != name:
        return f"its {paths.EVAL_RECORD} names another run"
    if not weights.is_file():
        return "its run has no weights yet"
    if record.get("weights_sha256") != file_sha256(weights):
        return "its weights changed (trained again)"
    old = record.get("settings")
    old = old if isinstance(old, dict) else {}
    if old != settings:
        changed = [k for k in settings if old.get(k) != settings[k] and k != "code"]
        code = old.get("code")
        code = code if isinstance(code, dict) else {}
        changed += [f"{m} changed" for m, h in settings["code"].items() if code.get(m) != h]
        return f"its settings changed ({', '.join(changed) or 'recorded by an older cnnvit'})"
    return None


def evaluate_run(
    cfg: RunConfig,
    data_dir,
    corrupted,
    weights: Path,
    out_dir,
    batch: int,
    attention_images: int,
    settings: dict | None = None,
) -> dict:
    if not weights.exists():
        run = cfg.run
        fraction = f" --fraction {run.fraction}" if run.fraction < 1 else ""
        raise CnnvitError(
            f"run {cfg.name} has no weights ({weights} not found): it has not finished training; train it first "
            f"(cnnvit train --model {run.model} --recipe {run.recipe} --seed {run.seed}{fraction})"
        )
    device, device_name = select_device(cfg.runtime.device, cfg.runtime.runs_per_gpu)
    model = cfg.model.build()
    meta = load_weights(model, weights)
    if meta.get("run") not in (None, cfg.name):
        raise CnnvitError(f"{weights} holds the weights of run {meta['run']}, not {cfg.name}: train {cfg.name} again")
    layout = channels_last(cfg.model, device)  # the memory layout the run trained in
    model = model.to(device).to(memory_format=torch.channels_last if layout else torch.preserve_format).eval()
    stats = load_stats(Path(data_dir) / "stats.json")
    augment = Augment(stats["mean"], stats["std"], cfg.recipe.normalize, 0, False, device, layout)
    sets = read_corrupted(Path(corrupted))
    labels = sets["labels"]
    clean, clean_labels, indices = robustness_subset(Path(data_dir), cfg.test_size, len(labels))
    if not np.array_equal(indices, sets["indices"]):
        raise CnnvitError(f"{corrupted} was made from other test images than this run's: run `cnnvit corrupt` again")
    clean_right = _correct(model, augment, clean, clean_labels, device, batch)
    rows = [{"corruption": "clean", "severity": 0, "acc": _pct(clean_right), "images": len(labels)}]
    right = np.zeros(sets["images"].shape[:3], dtype=bool)  # corruptions x severities x images
    for i, name in enumerate(sets["corruptions"]):
        for j, severity in enumerate(sets["severities"]):
            right[i, j] = _correct(model, augment, sets["images"][i, j], labels, device, batch)
            rows.append({"corruption": str(name), "severity": int(severity), "acc": _pct(right[i, j]),
                         "images": len(labels)})  # fmt: skip
    attention = []
    if hasattr(cfg.model, "token_pixels"):  # a ViT or the hybrid: both have the timm encoder's blocks
        n = min(attention_images, len(clean))
        x = augment(torch.from_numpy(np.ascontiguousarray(clean[:n].transpose(0, 3, 1, 2))).to(device))
        cell = cfg.model.token_pixels
        for layer, maps in enumerate(attention_maps(model, x)):
            for head, dist in enumerate(mean_distance(maps, IMG_SIZE // cell, cell)):
                attention.append({"layer": layer + 1, "head": head + 1, "distance_px": float(dist)})
    with atomic_dir(out_dir, owned=lambda name: name in paths.EVAL_FILES) as tmp:
        # which weights these numbers are of (collect refuses them beside a run retrained since), and
        # under which settings (the next evaluate keeps them while both are the same)
        record = {"run": cfg.name, "weights_sha256": file_sha256(weights), "settings": settings or {}}
        write_json(tmp / paths.EVAL_RECORD, record)
        write_rows(tmp / "robustness.csv", ROBUSTNESS_COLUMNS, rows)
        write_rows(tmp / "attention.csv", ATTENTION_COLUMNS, attention)
        write_per_image(
            tmp / paths.EVAL_PER_IMAGE, clean_right, right, indices, sets["corruptions"], sets["severities"]
        )
    return {"device": device_name, "clean": rows[0]["acc"], "mean": float(np.mean([r["acc"] for r in rows[1:]]))}


def write_rows(path: Path, columns: list[str], rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def add_args(p) -> None:
    add_run_args(p)
    p.add_argument("--data-dir", default=paths.PREPARED_DIR)
    p.add_argument("--corrupted", default=paths.CORRUPTED)
    p.add_argument("--runs-dir", default=paths.RUNS_DIR)
    p.add_argument("--out-dir", default=paths.EVAL_DIR, help="each run's files go to <out-dir>/<run name>")


def evaluate_one(
    run: RunSpec, params: Params, data_dir, corrupted, runs_dir, out_dir, corrupted_sha256: str | None = None
) -> dict:
    """Evaluate one run, or keep its evaluation when it is up to date, and say which (what each
    worker does). ``corrupted_sha256``: the corrupted set's, when the caller has it already."""
    cfg = run_config(params, run)
    torch.set_num_threads(params.runtime.threads)
    start = time.perf_counter()
    weights = Path(runs_dir) / cfg.name / WEIGHTS_FILE
    dest = Path(out_dir) / cfg.name
    # The run's precision, as training resolved it on this device: autocast, and TF32 on CUDA.
    device = select_device(cfg.runtime.device, cfg.runtime.runs_per_gpu)[0]  # evaluate_run's too: one claim
    precision = resolve_precision(cfg.runtime.precision, device)
    batch, attention = eval_batch(params.runtime.eval_batch_size, device), params.active.attention_images
    if corrupted_sha256 is None and Path(corrupted).is_file():
        corrupted_sha256 = file_sha256(Path(corrupted))
    settings = evaluation_settings(cfg, corrupted_sha256 or "", attention, precision)
    if evaluation_status(cfg.name, weights, dest, settings) is None:
        print(f"{cfg.name}: evaluation up to date, kept", flush=True)
        return {"kept": True}
    use_precision(precision, device)
    with autocast(device, precision):
        got = evaluate_run(cfg, data_dir, corrupted, weights, dest, batch, attention, settings)
    print(
        f"{cfg.name}: clean {got['clean']:.2f}%, corrupted {got['mean']:.2f}% on average, "
        f"{time.perf_counter() - start:.1f}s on {got['device']} ({precision}) -> {dest}",
        flush=True,
    )
    return got


def run(args, params: Params) -> None:
    runs = checked_runs(args, params)
    corrupted = Path(args.corrupted)
    fn = functools.partial(
        evaluate_one, params=params, data_dir=args.data_dir, corrupted=args.corrupted, runs_dir=args.runs_dir,
        out_dir=args.out_dir, corrupted_sha256=file_sha256(corrupted) if corrupted.is_file() else None,
    )  # fmt: skip
    run_each(fn, runs, worker_count(args.workers, params, len(runs)))
