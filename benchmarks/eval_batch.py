"""Benchmark: the evaluation batch that runs fastest on this CPU, per model of a preset.

    uv run python benchmarks/eval_batch.py [--preset laptop] [--batches 64 128 256 512 1000]

For every model of ``--preset``'s runs it times the forward passes that evaluation runs (eval mode,
no gradients, channels_last for convnets as the trainer does) over ``--images`` random 32x32
images, at each batch size, one thread, each model in a fresh process (no thread pool or cache
carried over). Prints a Markdown table of images/s per model and batch, and the preset's mix
(every model evaluates the same images, so the mix's time is the sum of 1/rate). This is what
chose the CPU's ``runtime.eval_batch_size: auto``. Run it alone: anything else running slows
torch's threads several-fold.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time


def _rates(entry: dict, batches: list[int], images: int, repeats: int) -> dict[int, float]:
    import torch

    torch.set_num_threads(1)
    from cnnvit.models import build_model, spec_from_dict
    from cnnvit.training.numerics import channels_last

    spec = spec_from_dict(entry)
    model = build_model(spec).eval()
    fmt = torch.channels_last if channels_last(spec, torch.device("cpu")) else torch.contiguous_format
    model = model.to(memory_format=fmt)
    x = torch.rand(images, 3, 32, 32).contiguous(memory_format=fmt)
    out: dict[int, float] = {}
    with torch.no_grad():
        for bs in batches:
            model(x[:bs])  # warm-up: allocations for this shape
            best = float("inf")
            for _ in range(repeats):  # the best of a few: the least disturbed
                start = time.perf_counter()
                for i in range(0, images, bs):
                    model(x[i : i + bs])
                best = min(best, time.perf_counter() - start)
            out[bs] = images / best
    return out


def _child(args: tuple) -> dict[int, float]:
    return _rates(*args)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--preset", default="laptop")
    ap.add_argument("--batches", type=int, nargs="+", default=[64, 128, 256, 512, 1000])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    from cnnvit.config.load import load_params

    params = load_params(args.params, [f"preset={args.preset}"])
    ctx = multiprocessing.get_context("spawn")
    rates = {}
    for model in params.runs.models:
        entry = params.active.models[model]
        with ctx.Pool(1) as pool:
            rates[model] = pool.map(_child, [(entry, args.batches, args.images, args.repeats)])[0]
        print(model, {bs: round(r) for bs, r in rates[model].items()}, flush=True)
    print(f"\n| model | {' | '.join(str(b) for b in args.batches)} |\n|---|{'---:|' * len(args.batches)}")
    for model, row in rates.items():
        print(f"| {model} | {' | '.join(f'{row[b]:.0f}' for b in args.batches)} |")
    mix = {b: len(rates) / sum(1 / rates[m][b] for m in rates) for b in args.batches}
    print(f"| **mix** | {' | '.join(f'{mix[b]:.0f}' for b in args.batches)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
