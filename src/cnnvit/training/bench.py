"""Benchmark stage: the trainer's own step against a bare training loop, per model.

    cnnvit bench --out results/bench.json [--recipe modern] [--steps 10] [--threads 2]

For every model in ``runs.models`` under the active preset it records params, forward FLOPs per image,
``train_images_per_s`` (the trainer's step: data cut, augmentation, normalisation, forward,
backward, optimizer and schedule), ``bare_images_per_s`` (``model(x)``, loss, backward and
``optimizer.step`` on pre-made tensors of the same shape), their ratio, inference images/s (one
evaluation pass over the test split) and
peak memory. Output: ``{"device": ..., "models": {NAME: {...}}}``.
"""

from __future__ import annotations

import time

import torch

from cnnvit import paths
from cnnvit.cifar import IMG_SIZE, NUM_CLASSES
from cnnvit.config.runs import run_config
from cnnvit.config.types import Params, RunSpec
from cnnvit.errors import positive_int
from cnnvit.files import provenance, write_json
from cnnvit.models import count_params, flops_per_image
from cnnvit.training.device import select_device
from cnnvit.training.engine import Trainer
from cnnvit.training.inputs import load_prepared
from cnnvit.training.numerics import peak_mem_mb, sync


def bare_loop(trainer: Trainer, steps: int) -> float:
    """images/s of the minimal loop on tensors made once, outside the timed region."""
    device, bs = trainer.device, trainer.batch_size
    x = torch.randn(bs, 3, IMG_SIZE, IMG_SIZE, device=device).contiguous(memory_format=trainer.augment.memory_format)
    y = torch.randint(0, NUM_CLASSES, (bs,), device=device)
    model, opt = trainer.net, trainer.optimizer
    trainer.model.train()

    def step():
        with trainer.amp:
            loss = trainer.criterion(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return steps * bs / (time.perf_counter() - start)


def trainer_loop(trainer: Trainer, steps: int) -> float:
    trainer.train_epoch(epoch=1, max_steps=1)  # warm-up, as the bare loop gets
    stats = trainer.train_epoch(epoch=2, max_steps=steps)
    return stats["train_images_per_s"]


def bench_model(cfg, data_dir, device, steps: int, threads: int | None, repeats: int = 3) -> dict:
    if threads:
        torch.set_num_threads(threads)
    trainer = Trainer(cfg, load_prepared(data_dir, cfg, device), device)
    # Interleave the two loops and keep each one's best, so drift in machine load hits both.
    train_ips, bare_ips = [], []
    for _ in range(repeats):
        train_ips.append(trainer_loop(trainer, steps))
        bare_ips.append(bare_loop(trainer, steps))
    out = {
        "params": count_params(trainer.model),
        "flops_per_image": flops_per_image(trainer.model, trainer.device),
        "batch_size": trainer.batch_size,
        "train_images_per_s": max(train_ips),
        "bare_images_per_s": max(bare_ips),
    }
    out["trainer_vs_bare"] = out["train_images_per_s"] / out["bare_images_per_s"]
    trainer.evaluate()
    out["infer_images_per_s"] = trainer.infer_images_per_s
    out["peak_mem_mb"] = peak_mem_mb(trainer.device)
    return out


def bench(params: Params, data_dir, recipe: str, steps: int, threads: int | None) -> dict:
    device, device_name = select_device(params.runtime.device)
    models = {}
    for name in params.runs.models:
        cfg = run_config(params, RunSpec(name, recipe, 0))
        models[name] = bench_model(cfg, data_dir, device, steps, threads or params.runtime.threads)
        m = models[name]
        print(
            f"{name:>10}: trainer {m['train_images_per_s']:8.0f} img/s  bare "
            f"{m['bare_images_per_s']:8.0f} img/s  ratio {m['trainer_vs_bare']:.3f}  "
            f"infer {m['infer_images_per_s']:8.0f} img/s",
            flush=True,
        )
    return {
        "device": device_name,
        "recipe": recipe,
        "steps": steps,
        "models": models,
        "provenance": provenance(params.raw, device_name),
    }


def add_args(p) -> None:
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--data-dir", default=paths.PREPARED_DIR)
    p.add_argument("--recipe", default="modern", help="recipe whose batch size and augmentation to use")
    p.add_argument("--steps", type=positive_int, default=10, help="timed steps per repeat")
    p.add_argument("--threads", type=positive_int, default=None)


def run(args, params: Params) -> None:
    write_json(args.out, bench(params, args.data_dir, args.recipe, args.steps, args.threads))
