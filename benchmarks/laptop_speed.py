"""Benchmark: what makes a training step fastest on this CPU, per model of a preset.

    uv run python benchmarks/laptop_speed.py --data-dir data/prepared [--preset laptop] [--steps 30]

For every model of ``--preset``'s runs, under the paper recipe, it times the trainer's own step
(cnnvit.training.engine.Trainer: data cut, normalisation, forward, backward, Adam) on the prepared
training images, in separate processes so that nothing one setting does (threads, compiled code)
leaks into the next:

- ``eager-1t``: one thread, eager (convnets in channels_last, as the trainer does): the baseline;
- ``nchw-1t``: one thread, convnets in the default NCHW layout instead;
- ``compile-1t``: one thread, ``torch.compile`` (inductor, C++ kernels), compile time apart;
- ``bf16-1t``: one thread, bfloat16 autocast (a CPU with AVX512-BF16 or AMX has it in hardware);
- ``eager-2t``: two threads, one run alone;
- ``eager-1t-x2``: two runs at once, one thread each (each run's images/s; the machine's is twice).

Run it alone: anything else running slows torch's threads several-fold. Prints a Markdown table
of images/s and each setting's speed relative to the baseline, per model and for the preset's
mix of models (weighted by their steps); ``--out`` keeps the JSON.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from pathlib import Path

SETTINGS = {
    "eager-1t": {"threads": 1},
    "nchw-1t": {"threads": 1, "nchw": True},
    "compile-1t": {"threads": 1, "compile": True},
    "bf16-1t": {"threads": 1, "precision": "bf16"},
    "eager-2t": {"threads": 2},
    "eager-1t-x2": {"threads": 1, "copies": 2},
}


def _step_rate(params_file: str, overrides: list[str], model: str, data_dir: str, steps: int, setting: dict) -> dict:
    """Images/s of ``steps`` trainer steps of ``model`` in this process (after warm-up)."""
    import torch

    torch.set_num_threads(setting["threads"])
    from cnnvit.config.load import load_params
    from cnnvit.config.runs import run_config
    from cnnvit.config.types import RunSpec
    from cnnvit.training import engine
    from cnnvit.training.inputs import load_prepared

    extra = ["runtime.compile=true"] if setting.get("compile") else []
    extra += [f"runtime.precision={setting['precision']}"] if setting.get("precision") else []
    params = load_params(params_file, overrides + extra)
    cfg = run_config(params, RunSpec(model, "paper", 0))
    if setting.get("nchw"):
        engine.channels_last = lambda spec, device: False  # type: ignore[assignment]  # what Trainer calls
    data = load_prepared(data_dir, cfg, torch.device("cpu"))
    trainer = engine.Trainer(cfg, data, torch.device("cpu"))
    start = time.perf_counter()
    trainer.train_epoch(1, max_steps=3)  # allocations; with compile, tracing and compiling
    warm = time.perf_counter() - start
    row = trainer.train_epoch(2, max_steps=steps)
    return {"images_per_s": row["train_images_per_s"], "warmup_s": warm}


def _child(args: tuple) -> dict:
    return _step_rate(*args)


def measure(params_file: str, overrides: list[str], model: str, data_dir: str, steps: int, setting: dict) -> dict:
    """One setting in fresh processes (``copies`` of them at once): the mean images/s of a run."""
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no thread pool or compiled code carried over
    copies = setting.get("copies", 1)
    with ctx.Pool(copies) as pool:
        rows = pool.map(_child, [(params_file, overrides, model, data_dir, steps, setting)] * copies)
    return {
        "images_per_s": sum(r["images_per_s"] for r in rows) / copies,
        "machine_images_per_s": sum(r["images_per_s"] for r in rows),
        "warmup_s": max(r["warmup_s"] for r in rows),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--preset", default="laptop")
    ap.add_argument("--data-dir", default="data/prepared")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    from cnnvit.config.load import load_params

    overrides = [f"preset={args.preset}"]
    params = load_params(args.params, overrides)
    models = list(params.runs.models)
    results: dict[str, dict] = {}
    for model in models:
        for name in args.settings:
            got = measure(args.params, overrides, model, args.data_dir, args.steps, SETTINGS[name])
            results.setdefault(model, {})[name] = got
            print(f"{model:<14} {name:<12} {got['images_per_s']:8.0f} img/s a run  (warm-up {got['warmup_s']:.1f} s)",
                  flush=True)  # fmt: skip
    base = "eager-1t" if "eager-1t" in args.settings else args.settings[0]
    print(f"\n| model | {' | '.join(args.settings)} |\n|---|{'---:|' * len(args.settings)}")
    for model, row in results.items():
        ratio = {s: row[s]["machine_images_per_s"] / row[base]["machine_images_per_s"] for s in args.settings}
        cells = [f"{row[s]['images_per_s']:.0f} ({ratio[s]:.2f}x)" for s in args.settings]
        print(f"| {model} | {' | '.join(cells)} |")
    # The preset's mix: every model trains the same images, so the time of the mix is the sum of 1/rate
    mix = {s: len(models) / sum(1 / results[m][s]["machine_images_per_s"] for m in models) for s in args.settings}
    cells = [f"{mix[s]:.0f} ({mix[s] / mix[base]:.2f}x)" for s in args.settings]
    print(f"| **mix** (machine img/s) | {' | '.join(cells)} |")
    if args.out:
        Path(args.out).write_text(json.dumps({"cpu": os.cpu_count(), "results": results, "mix": mix}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
