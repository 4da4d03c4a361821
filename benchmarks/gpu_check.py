"""This project's GPU figures in one run (under eight minutes on one H100-class GPU).

    bash benchmarks/gpu_check.sh [--smoke] [--archive PATH] [--out DIR] [--budget-s 460]

1. The device's bf16 matmul peak, measured: the denominator of every MFU below.
2. Per model of the paper preset: training images/s of the trainer's own step (augmentation,
   forward, backward, optimizer) in fp32 (TF32 on CUDA), bf16, and bf16 with ``torch.compile``
   (``--compile-mode``, default reduce-overhead: CUDA graphs); MFU = 3 x forward FLOPs x images/s
   over the peak; peak memory; and, in bf16, the trainer against a bare loop on ready tensors.
3. 1, 2 and 4 trainings sharing the GPU, one process each (what ``runtime.runs_per_gpu`` allows):
   the images/s of all of them together, started behind a barrier.
4. Through Snakemake, in a copy of this checkout: the quick profile end to end, then the paper
   profile for one epoch of seed 0, with ``--runs-per-gpu`` runs sharing the GPU, on ARCHIVE (the
   shared CIFAR-10 JPEGs when they are beside the checkout, else a CIFAR-10 of random images:
   its timings are real, its accuracies meaningless). Snakemake's own forecast is kept beside the
   measured wall time.

Writes ``gpu_check.json`` and ``gpu_check.md`` (and the two Snakemake logs) into ``--out``, else
``$OUT`` when set, else ``benchmarks/results/gpu_check-<host>-<time>``. A time budget skips, and
names, what would not fit. ``--smoke`` runs the same code on a CPU with the quick preset's models
and tiny sizes in about a minute (two models, the Snakemake step once); CI runs it so that this
script cannot rot.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared/data/cifar10-imagefolder-jpeg.tar.gz"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
# --smoke: small enough for a CPU in about a minute (three models, one recipe, one seed), through
# the same code and the whole DAG, collect and report included
SMOKE_CONFIG = {
    "data": {"expect_train": 0, "expect_test": 0, "val_size": 100},
    "presets": {"quick": {"train_size": 300, "val_size": 100, "test_size": 200, "robustness_images": 20,
                          "attention_images": 8}},
    "cost": {"sizes": [32], "batch": 16},
    "runs": {"models": ["resnet50", "vit", "cnn_vit"], "recipes": ["paper"], "seeds": [0]},
}  # fmt: skip


def synthetic_archive(path: Path, per_batch: int) -> Path:
    """A tar.gz laid out like cifar-10-python.tar.gz (5 training batches and a test batch of
    ``per_batch`` random images each), for a machine without the real data."""
    rng = np.random.default_rng(0)
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:

        def add(name: str, obj) -> None:
            blob = __import__("pickle").dumps(obj, protocol=4)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))

        add("batches.meta", {b"label_names": [c.encode() for c in CLASSES], b"num_cases_per_batch": per_batch})
        for name in [*(f"data_batch_{k}" for k in range(1, 6)), "test_batch"]:
            data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
            add(name, {b"batch_label": name.encode(), b"labels": [i % 10 for i in range(per_batch)], b"data": data})
    return path


def data_config(archive: Path) -> dict:
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    with tarfile.open(archive) as tar:
        first = tar.next()
    fmt = "cifar10-python" if first and first.name.startswith("cifar-10-batches-py") else "imagefolder"
    return {"data": {"url": str(archive), "format": fmt, "md5": None, "sha256": digest}}


def merged(*configs: dict) -> dict:
    """Nested dicts, later ones winning key by key (as Snakemake merges --config over params.yaml)."""
    out: dict = {}
    for config in configs:
        for key, value in config.items():
            both = isinstance(value, dict) and isinstance(out.get(key), dict)
            out[key] = merged(out[key], value) if both else value
    return out


class Budget:
    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


def matmul_peak(device, smoke: bool) -> dict:
    """TFLOP/s of a large bf16 matmul (fp32 on a CPU), the best of several timed rounds."""
    import torch

    n, dtype = (512, torch.float32) if device.type == "cpu" else (8192, torch.bfloat16)
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    best = float("inf")
    for _ in range(5):
        sync(device)
        t = time.perf_counter()
        for _ in range(10):
            a @ b
        sync(device)
        best = min(best, (time.perf_counter() - t) / 10)
    return {"dtype": str(dtype).removeprefix("torch."), "n": n, "tflops": 2 * n**3 / best / 1e12}


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def load(args, extra: list[str]):
    from cnnvit.config.load import load_params

    preset = "quick" if args.smoke else "paper"
    return load_params(ROOT / "params.yaml", [f"preset={preset}", "runtime.device=auto", *extra])


def make_trainer(params, model: str, device, steps: int, batch: int | None = None):
    """The trainer of ``model``'s paper-recipe run on random images, ``steps`` steps an epoch."""
    import torch

    from cnnvit.config.runs import run_config
    from cnnvit.config.types import RunSpec
    from cnnvit.training.data import Prepared, Split
    from cnnvit.training.device import resolve_precision, use_precision
    from cnnvit.training.engine import Trainer

    cfg = run_config(params, RunSpec(model, "paper", 0))
    use_precision(resolve_precision(params.runtime.precision, device), device)
    batch = batch or cfg.recipe.batch_size
    images = torch.randint(0, 256, (batch * steps, 3, 32, 32), dtype=torch.uint8, device=device)
    split = Split(images, torch.randint(0, 10, (batch * steps,), device=device))
    stats = {"mean": [0.5] * 3, "std": [0.25] * 3}
    trainer = Trainer(cfg, Prepared(split, split, split, stats, CLASSES), device)
    trainer.batch_size, trainer.steps_per_epoch = batch, steps
    return trainer


def timed(trainer, steps: int, warm: int) -> float:
    trainer.train_epoch(1, max_steps=warm)  # allocations, cuDNN's search, compilation, graph capture
    return trainer.train_epoch(2, max_steps=steps)["train_images_per_s"]


def models_section(args, device, peak: float, budget: Budget) -> list[dict]:
    import torch

    from cnnvit.models import flops_per_image
    from cnnvit.training.bench import bare_loop
    from cnnvit.training.engine import peak_mem_mb

    modes = [("fp32", "false"), ("bf16", "false")] + ([] if args.smoke else [("bf16", args.compile_mode)])
    steps, batch = (3, 8) if args.smoke else (args.steps, None)
    from cnnvit.config.runs import run_config
    from cnnvit.config.types import RunSpec

    rows = []
    for model in load(args, []).runs.models[: 2 if args.smoke else None]:
        flops = flops_per_image(run_config(load(args, []), RunSpec(model, "paper", 0)).model.build(), "cpu")
        for precision, compile_mode in modes:
            label = precision + ("+compile" if compile_mode != "false" else "")
            if budget.left() < (60 if compile_mode != "false" else 10):
                rows.append({"model": model, "mode": label, "skipped": "time budget"})
                continue
            params = load(args, [f"runtime.precision={precision}", f"runtime.compile={compile_mode}"])
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            trainer = make_trainer(params, model, device, steps, batch)
            ips = max(timed(trainer, steps, warm=3) for _ in range(2))
            row = {"model": model, "mode": label, "precision": trainer.precision, "images_per_s": ips,
                   "gflop_per_image": flops / 1e9, "mfu": 3 * flops * ips / (peak * 1e12),
                   "peak_mem_mb": peak_mem_mb(device)}  # fmt: skip
            if label == "bf16":
                row["trainer_vs_bare"] = ips / max(bare_loop(trainer, steps) for _ in range(2))
            row["seconds"] = time.perf_counter() - start
            rows.append(row)
            print(f"{model:>15} {label:>13}: {ips:9.0f} img/s  MFU {row['mfu']:6.1%}", flush=True)
            del trainer
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            torch._dynamo.reset()
    return rows


def share_worker(args) -> None:
    """One of k trainings sharing the device: warm up, wait for the others, time ``steps`` steps."""
    import torch

    from cnnvit.training.device import select_device

    params = load(args, ["runtime.precision=auto", f"runtime.threads={args.threads}"])
    torch.set_num_threads(args.threads)
    device, _ = select_device("auto", runs_per_gpu=args.k) if not args.smoke else (torch.device("cpu"), "cpu")
    trainer = make_trainer(params, args.share_model, device, args.steps, 8 if args.smoke else None)
    trainer.train_epoch(1, max_steps=3)
    barrier = Path(args.barrier)
    (barrier / f"ready-{args.index}").touch()
    deadline = time.monotonic() + 300
    while len(list(barrier.glob("ready-*"))) < args.k and time.monotonic() < deadline:
        time.sleep(0.05)
    start = time.time()
    trainer.train_epoch(2, max_steps=args.steps)
    sync(device)
    images = args.steps * trainer.batch_size
    print(json.dumps({"images": images, "start": start, "end": time.time()}), flush=True)


def sharing_section(args, budget: Budget, work: Path) -> list[dict]:
    rows, alone = [], None
    env = {**os.environ, "CNNVIT_GPU_LOCK_DIR": str(work / "locks")}
    model = args.share_model or load(args, []).runs.models[0]
    for k in [1, 2] if args.smoke else [1, 2, 4]:
        if budget.left() < 45:
            rows.append({"runs": k, "skipped": "time budget"})
            continue
        barrier = work / f"barrier-{k}"
        barrier.mkdir()
        cmd = [sys.executable, __file__, "--share-worker", "--k", str(k), "--barrier", str(barrier),
               "--share-model", model, "--steps", str(args.steps), "--threads", str(args.threads)]  # fmt: skip
        cmd += ["--smoke"] if args.smoke else []
        procs = [subprocess.Popen([*cmd, "--index", str(i)], stdout=subprocess.PIPE, text=True, env=env)
                 for i in range(k)]  # fmt: skip
        outs = [json.loads(p.communicate(timeout=max(60, budget.left()))[0].strip().splitlines()[-1]) for p in procs]
        span = max(o["end"] for o in outs) - min(o["start"] for o in outs)
        together = sum(o["images"] for o in outs) / span
        alone = alone or together
        rows.append({"runs": k, "model": model, "images_per_s": together, "gain": together / alone})
        print(f"{k} run(s) sharing: {together:9.0f} img/s together, x{together / alone:.2f}", flush=True)
    return rows


def project_copy(dest: Path) -> Path:
    """This checkout's tracked and untracked-but-not-ignored files, without results or data."""
    out = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True)
    for name in filter(None, out.stdout.decode().split("\0")):
        src = ROOT / name
        if src.is_file() and not name.startswith(("results/", "data/", "benchmarks/results/")):
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def pipeline_section(args, budget: Budget, work: Path, out_dir: Path, archive: Path) -> list[dict]:
    project = project_copy(work / "project")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env["CNNVIT_GPU_LOCK_DIR"] = str(work / "locks")
    base = merged(data_config(archive), {"runtime": {"runs_per_gpu": args.runs_per_gpu}})
    paper = "quick" if args.smoke else "paper"  # --smoke: the quick models stand in for the paper's
    one_epoch = {"preset": paper, "runs": {"seeds": [0]}, "presets": {paper: {"epochs": 1}}}
    steps = [
        ("quick profile", "quick", {"preset": "quick"}),
        ("paper profile, 1 epoch, seed 0", "paper_1epoch", one_epoch),
    ]
    if args.smoke:  # the second step is the same code with another config: CI's minutes go elsewhere
        steps = steps[:1]
    rows = []
    for label, name, step in steps:
        if budget.left() < 30:
            rows.append({"step": label, "skipped": "time budget"})
            continue
        config = merged(base, SMOKE_CONFIG if args.smoke else {}, step)
        gpus = ["--resources", f"gpu={args.runs_per_gpu}"]
        cmd = ["snakemake", "--cores", "all", *gpus, "--config", *(f"{k}={json.dumps(v)}" for k, v in config.items())]
        start = time.perf_counter()
        with open(out_dir / f"snakemake_{name}.log", "w") as log:
            proc = subprocess.Popen(cmd, cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT)
            try:
                code = proc.wait(timeout=max(1, budget.left()))
            except subprocess.TimeoutExpired:
                proc.terminate()
                code = proc.wait()
                code = "timed out"
        wall = time.perf_counter() - start
        text = (out_dir / f"snakemake_{name}.log").read_text()
        forecast = [ln for ln in text.splitlines() if ln.startswith("plan:") or "forecast" in ln]
        rows.append({"step": label, "wall_s": wall, "exit": code, "forecast": forecast[-1] if forecast else None})
        print(f"{label}: {wall:.0f} s wall (exit {code})", flush=True)
        if code != 0:
            print(text[-3000:], file=sys.stderr)
    return rows


def markdown(result: dict) -> str:
    lines = [f"# gpu_check: {result['device']} ({result['when']})", "",
             f"matmul peak (measured, {result['peak']['dtype']}): {result['peak']['tflops']:.3g} TFLOP/s", "",
             "| model | mode | precision | img/s | GFLOP/img | MFU | peak MB | trainer/bare |",
             "|---|---|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in result["models"]:
        if "skipped" in r:
            lines.append(f"| {r['model']} | {r['mode']} | skipped: {r['skipped']} | | | | | |")
            continue
        bare = f"{r['trainer_vs_bare']:.2f}" if "trainer_vs_bare" in r else ""
        lines.append(f"| {r['model']} | {r['mode']} | {r['precision']} | {r['images_per_s']:.0f} | "
                     f"{r['gflop_per_image']:.2f} | {r['mfu']:.1%} | {r['peak_mem_mb']:.0f} | {bare} |")  # fmt: skip
    lines += ["", "| runs sharing the device | model | img/s together | gain |", "|---:|---|---:|---:|"]
    for r in result["sharing"]:
        cells = f"{r['images_per_s']:.0f} | x{r['gain']:.2f}" if "gain" in r else f"skipped: {r['skipped']} |"
        lines.append(f"| {r['runs']} | {r.get('model', '')} | {cells} |")
    lines += ["", "| Snakemake | wall | exit | forecast printed at its start |", "|---|---:|---|---|"]
    for r in result["pipeline"]:
        if "skipped" in r:
            lines.append(f"| {r['step']} | | skipped: {r['skipped']} | |")
        else:
            lines.append(f"| {r['step']} | {r['wall_s']:.0f} s | {r['exit']} | {r['forecast'] or ''} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="a CPU, the quick models, tiny sizes: about a minute")
    ap.add_argument("--archive", type=Path, default=None, help="CIFAR-10 (default: the shared JPEGs, else random)")
    ap.add_argument("--out", type=Path, default=None, help="default: $OUT, else benchmarks/results/gpu_check-...")
    ap.add_argument("--budget-s", type=float, default=460)
    ap.add_argument("--steps", type=int, default=30, help="timed steps per measurement")
    ap.add_argument("--compile-mode", default="reduce-overhead")
    ap.add_argument("--runs-per-gpu", type=int, default=4, help="for the Snakemake runs")
    ap.add_argument("--threads", type=int, default=1)
    for flag in ("--share-worker", "--k", "--index", "--barrier", "--share-model"):  # the sharing workers'
        ap.add_argument(flag, **({"action": "store_true"} if flag == "--share-worker" else {}), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.share_worker:
        args.k, args.index = int(args.k), int(args.index)
        share_worker(args)
        return 0
    budget = Budget(args.budget_s)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    named = ROOT / f"benchmarks/results/gpu_check-{platform.node()}-{stamp}"
    out_dir = args.out or Path(os.environ.get("OUT") or named)
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.smoke:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the CPU, even on a machine with a GPU
    import tempfile

    import torch

    from cnnvit.training.device import select_device

    device, device_name = select_device("auto")
    if not args.smoke and device.type != "cuda":
        print("error: no CUDA GPU here: run this on a machine with one, or pass --smoke", file=sys.stderr)
        return 1
    torch.set_num_threads(args.threads if device.type == "cpu" else torch.get_num_threads())
    result = {"device": device_name, "when": stamp, "smoke": args.smoke, "torch": torch.__version__}
    result["peak"] = matmul_peak(device, args.smoke)
    print(f"{device_name}: matmul peak {result['peak']['tflops']:.1f} TFLOP/s", flush=True)
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        work = Path(tmp)
        result["models"] = models_section(args, device, result["peak"]["tflops"], budget)
        result["sharing"] = sharing_section(args, budget, work)
        archive = args.archive or (SHARED if SHARED.exists() and not args.smoke else None)
        archive = archive or synthetic_archive(work / "cifar10-random.tar.gz", 200 if args.smoke else 10000)
        result["archive"] = str(archive)
        result["pipeline"] = pipeline_section(args, budget, work, out_dir, archive.resolve())
    (out_dir / "gpu_check.json").write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / "gpu_check.md").write_text(markdown(result))
    print(markdown(result))
    print(f"wrote {out_dir}/gpu_check.json and gpu_check.md")
    failed = [r["step"] for r in result["pipeline"] if r.get("exit") not in (0, None)]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
