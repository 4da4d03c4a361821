"""The rows of ``benchmarks/gpu_check.py``: what each measures, run in a child forked from the
check (which has imported torch but never initialised CUDA), and the helpers they share."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared/data/cifar10-imagefolder-jpeg.tar.gz"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def synthetic_archive(path: Path, per_batch: int) -> Path:
    """A tar.gz laid out like cifar-10-python.tar.gz (5 training batches and a test batch of
    ``per_batch`` random images each), for a machine without the real data."""
    rng = np.random.default_rng(0)
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:

        def add(name: str, obj) -> None:
            blob = pickle.dumps(obj, protocol=4)
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


def die_with_parent() -> None:
    """Linux: this process is killed when its parent dies, even by SIGKILL (nothing is left on
    the GPU by a killed gpu_check); elsewhere a no-op."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def kill_tree(pid: int) -> None:
    """End ``pid``, its process group and every process it started (Snakemake's jobs may sit in
    groups of their own)."""
    try:
        import psutil

        family = [*psutil.Process(pid).children(recursive=True)]
    except Exception:  # no psutil, or the process is gone: its group is what is left to end
        family = []
    for end in [lambda: os.killpg(pid, signal.SIGKILL), *(lambda p=p: p.kill() for p in family)]:
        with contextlib.suppress(Exception):  # already gone
            end()


def merged(*configs: dict) -> dict:
    """Nested dicts, later ones winning key by key (as Snakemake merges --config over params.yaml)."""
    out: dict = {}
    for config in configs:
        for key, value in config.items():
            both = isinstance(value, dict) and isinstance(out.get(key), dict)
            out[key] = merged(out[key], value) if both else value
    return out


# ----------------------------------------------------------------------------- in the row's child


def load(check, extra: list[str]):
    from cnnvit.config.load import load_params

    return load_params(ROOT / "params.yaml", [f"preset={'quick' if check.args.smoke else 'paper'}", *extra])


def child_device(check, runs_per_gpu: int = 1):
    import torch

    from cnnvit.training.device import select_device

    device, _ = select_device("auto", runs_per_gpu)
    if device.type == "cpu":
        torch.set_num_threads(check.args.threads)
    return device


def one_gpu() -> None:
    """This row's processes see only the first visible GPU (the check measures one GPU)."""
    from cnnvit.training.device import visible_gpus

    if gpus := visible_gpus():
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus[0]


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def device_row(check) -> dict:
    import torch

    from cnnvit.training.device import resolve_precision, select_device

    device, name = select_device("auto")
    out: dict = {"device": name, "type": device.type, "fp32": resolve_precision("fp32", device)}
    out["bf16"] = resolve_precision("auto", device) == "bf16" or device.type == "cpu"
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(0)
        out |= {"capability": f"{props.major}.{props.minor}", "memory_gb": props.total_memory / 2**30}
    return out


def peak_row(check) -> dict:
    """TFLOP/s of a large matmul in fp32 (TF32 on CUDA) and in bf16, the best of several rounds."""
    import torch

    from cnnvit.training.device import use_precision

    device = child_device(check)
    use_precision("tf32", device)
    n = 512 if device.type == "cpu" else 8192
    out = {}
    for kind, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
        best = float("inf")
        for _ in range(5):
            sync(device)
            t = time.perf_counter()
            for _ in range(10):
                a @ b
            sync(device)
            best = min(best, (time.perf_counter() - t) / 10)
        out[kind] = 2 * n**3 / best / 1e12
    return {"n": n, "tflops": out, "fp32_is": "tf32" if device.type == "cuda" else "fp32"}


def make_trainer(check, params, model: str, device, steps: int, backend: str = "inductor"):
    """The trainer of ``model``'s paper-recipe run on random images, ``steps`` steps an epoch."""
    import torch

    from cnnvit.config.runs import run_config
    from cnnvit.config.types import RunSpec
    from cnnvit.training.device import resolve_precision, use_precision
    from cnnvit.training.engine import Trainer
    from cnnvit.training.inputs import Prepared, Split

    cfg = run_config(params, RunSpec(model, "paper", 0))
    use_precision(resolve_precision(params.runtime.precision, device), device)
    batch = 8 if check.args.smoke else cfg.recipe.batch_size
    images = torch.randint(0, 256, (batch * steps, 3, 32, 32), dtype=torch.uint8, device=device)
    split = Split(images, torch.randint(0, 10, (batch * steps,), device=device))
    data = Prepared(split, split, split, {"mean": [0.5] * 3, "std": [0.25] * 3}, list("abcdefghij"))
    trainer = Trainer(cfg, data, device, backend)
    trainer.batch_size, trainer.steps_per_epoch = batch, steps
    return trainer


def model_row(check, model: str, precision: str, compile_mode: str, backend: str = "inductor") -> dict:
    from cnnvit.models import flops_per_image
    from cnnvit.training.bench import bare_loop
    from cnnvit.training.numerics import peak_mem_mb, reset_peak_memory

    device = child_device(check)
    steps = 3 if check.args.smoke else check.args.steps
    params = load(check, [f"runtime.precision={precision}", f"runtime.compile={compile_mode}"])
    reset_peak_memory(device)
    trainer = make_trainer(check, params, model, device, steps, backend)
    trainer.train_epoch(1, max_steps=3)  # allocations, cuDNN's search, compilation, graph capture
    ips = trainer.train_epoch(2, max_steps=steps)["train_images_per_s"]
    info = trainer.compile_info
    row = {"model": model, "precision": trainer.precision, "compile": compile_mode, "backend": backend,
           "images_per_s": ips, "gflop_per_image": flops_per_image(trainer.model, "cpu") / 1e9,
           "peak_mem_mb": peak_mem_mb(device), "compile_s": info["seconds"], "graphs": info["graphs"],
           "cuda_graphs": info["cuda_graphs"]}  # fmt: skip
    if precision == "bf16" and compile_mode == "false":
        row["trainer_vs_bare"] = ips / bare_loop(trainer, steps)
    return row


def share_worker(check, model: str, k: int, index: int, barrier: Path, compile_mode: str) -> dict:
    """One of ``k`` trainings sharing the device: warm up, wait for the others, time the steps."""
    from cnnvit.models import flops_per_image

    device = child_device(check, runs_per_gpu=k)
    steps = 3 if check.args.smoke else check.args.steps
    params = load(check, ["runtime.precision=auto", f"runtime.compile={compile_mode}"])
    trainer = make_trainer(check, params, model, device, steps)
    trainer.train_epoch(1, max_steps=3)
    (barrier / f"ready-{index}").touch()
    while len(list(barrier.glob("ready-*"))) < k:  # the row's hard timeout ends a barrier that never fills
        time.sleep(0.02)
    start = time.time()
    trainer.train_epoch(2, max_steps=steps)
    sync(device)
    info = trainer.compile_info
    return {"images": steps * trainer.batch_size, "start": start, "end": time.time(), "compile_s": info["seconds"],
            "cuda_graphs": info["cuda_graphs"], "precision": trainer.precision,
            "gflop_per_image": flops_per_image(trainer.model, "cpu") / 1e9}  # fmt: skip


def sharing_row(check, model: str, k: int, compile_mode: str) -> dict:
    barrier = Path(check.work) / f"barrier-{model}-{k}"
    barrier.mkdir()
    os.environ["CNNVIT_GPU_LOCK_DIR"] = str(barrier / "locks")
    one_gpu()  # k runs on one GPU, not one run on each of k
    pids = {}
    for i in range(k):
        pid = os.fork()
        if pid == 0:  # in this row's process group: the row's timeout ends them too
            code = 1
            try:
                die_with_parent()
                out = share_worker(check, model, k, i, barrier, compile_mode)
                (barrier / f"out-{i}.json").write_text(json.dumps(out))
                code = 0
            except BaseException:
                import traceback

                traceback.print_exc()
            finally:
                sys.stdout.flush(), sys.stderr.flush()
                os._exit(code)
        pids[i] = pid
    failed = [i for i, pid in pids.items() if os.waitpid(pid, 0)[1] != 0]
    if failed:
        raise RuntimeError(f"{len(failed)} of {k} sharing workers failed (their tracebacks are in this row's log)")
    outs = [json.loads((barrier / f"out-{i}.json").read_text()) for i in range(k)]
    span = max(o["end"] for o in outs) - min(o["start"] for o in outs)
    return {"runs": k, "model": model, "compile": compile_mode, "images_per_s": sum(o["images"] for o in outs) / span,
            "compile_s": max(o["compile_s"] for o in outs), "cuda_graphs": outs[0]["cuda_graphs"],
            "precision": outs[0]["precision"], "gflop_per_image": outs[0]["gflop_per_image"]}  # fmt: skip


def project_copy(dest: Path) -> Path:
    """This checkout's tracked and untracked-but-not-ignored files, without results or data."""
    out = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True)
    for name in filter(None, out.stdout.decode().split("\0")):
        src = ROOT / name
        if src.is_file() and not name.startswith(("results/", "data/", "benchmarks/results/")):
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def pipeline_row(check, archive: Path, config: dict) -> dict:
    project = project_copy(Path(check.work) / "project")
    one_gpu()  # the forecast and the wall time of one GPU, whatever the machine has
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env["CNNVIT_GPU_LOCK_DIR"] = str(Path(check.work) / "locks")
    config = merged(data_config(archive), config)
    gpus = ["--resources", f"gpu={check.args.runs_per_gpu}"]
    cmd = ["snakemake", "--cores", "all", *gpus, "--config", *(f"{k}={json.dumps(v)}" for k, v in config.items())]
    # --smoke: up to the trainings (the whole config is still validated at the start, and the
    # forecast printed); the stages after them are test_e2e's, and cost CI ~25 s more here
    cmd += ["--until", "train"] if check.args.smoke else []
    log = check.out_dir / "snakemake.log"
    start = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(
            cmd, cwd=project, env=env, stdout=f, stderr=subprocess.STDOUT, preexec_fn=die_with_parent
        )
        try:
            code = proc.wait()
        finally:
            kill_tree(proc.pid)  # Snakemake's jobs with it, however this ends
    wall = time.perf_counter() - start
    text = log.read_text()
    forecast = [ln.strip() for ln in text.splitlines() if ln.strip().startswith(("forecast:", "job-seconds:"))]
    if code != 0:
        raise RuntimeError(f"snakemake exited {code}; see {log}")
    return {"wall_s": wall, "forecast": forecast, "config": config}
