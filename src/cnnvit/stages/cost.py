"""Cost stage: what each model of the preset costs to run, measured on this machine.

    cnnvit cost --out results/cost/cost.csv

One row per model and input size (``cost.sizes``, upsampled): parameters, forward FLOPs per
image, batch-1 latency (median and 95th percentile after a warm-up) and, at CIFAR-10's 32 pixels,
throughput at ``cost.batch`` and the peak memory of an inference pass and of a training step,
measured apart (:mod:`cnnvit.measure.cost`), in the precision ``runtime.precision`` resolves to
on this device and the models' training memory layout, as a run computes. The device, precision
and thread count are in every row. The numbers are this machine's: they are measured, not
derived, and differ from machine to machine. Each row also holds the model's params entry as measured
(``spec``, JSON), which :mod:`cnnvit.dag.made_with` compares with the current one.
"""

from __future__ import annotations

import csv
import json
import time

import torch

from cnnvit import paths
from cnnvit.cifar import IMG_SIZE
from cnnvit.config.types import Params
from cnnvit.errors import CnnvitError
from cnnvit.files import atomic_path
from cnnvit.measure.cost import measure
from cnnvit.models import spec_from_dict
from cnnvit.stage import Out, Stage
from cnnvit.training.device import resolve_precision, select_device, use_precision

STAGE = Stage(
    name="cost",
    help="latency, throughput, memory and FLOPs of each model, by input size",
    cmd=f"cnnvit cost --out {paths.COST}",
    outs=(Out(paths.COST, report="Tables"),),
    params=(
        "preset",
        "runs.models",
        "presets.{preset}.models",
        "cost",
        "runtime.device",
        "runtime.threads",
        "runtime.precision",
    ),
    device=True,
    threads="all",
    priority=-10,
)

COLUMNS = ["model", "arch", "size", "params", "flops_per_image", "latency_ms_median", "latency_ms_p95",
           "throughput_images_per_s", "batch", "inference_peak_mb", "inference_step_mb", "training_peak_mb",
           "training_step_mb", "device", "precision", "threads", "spec"]  # fmt: skip


def cost_table(params: Params) -> list[dict]:
    if IMG_SIZE not in params.cost.sizes:
        raise CnnvitError(f"cost.sizes: {list(params.cost.sizes)} leaves out {IMG_SIZE}, the training size: add it")
    device, device_name = select_device(params.runtime.device)
    precision = resolve_precision(params.runtime.precision, device)
    use_precision(precision, device)
    rows = []
    for name in params.runs.models:
        spec = spec_from_dict(params.active.models[name])
        for row in measure(spec, device, tuple(params.cost.sizes), params.cost.batch, precision=precision):
            # spec: the model's entry as measured, which cnnvit.dag.made_with compares with the params
            rows.append({"model": name, "arch": spec.arch, **row, "device": device_name, "precision": precision,
                         "threads": torch.get_num_threads(),
                         "spec": json.dumps(params.active.models[name], sort_keys=True)})  # fmt: skip
        print(f"{name}: {rows[-len(params.cost.sizes)]['latency_ms_median']:.2f} ms at batch 1", flush=True)
    return rows


def add_args(p) -> None:
    p.add_argument("--out", default=paths.COST)


def run(args, params: Params) -> None:
    torch.set_num_threads(params.runtime.threads)
    start = time.perf_counter()
    rows = cost_table(params)
    with atomic_path(args.out) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, lineterminator="\n", restval="")
        writer.writeheader()
        writer.writerows(rows)
    print(f"measured {len(rows)} model x size cells in {time.perf_counter() - start:.0f}s -> {args.out}")
