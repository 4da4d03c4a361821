"""What a model costs to run: latency, throughput, memory and FLOPs, at several input sizes.

    rows = measure(spec, device, sizes=(32, 64, 128), batch=256, precision="bf16")

Per input size (images upsampled; a ViT then has (size / patch)^2 tokens, which is where
attention's quadratic term shows): forward FLOPs of one image (``torch.utils.flop_counter``) and
the batch-1 latency, median and 95th percentile after a warm-up. At the training size: throughput
at a large batch, and the peak memory of one inference pass and of one training step, measured
apart. On CUDA the allocator's peak is reset once the data is on the device; on a CPU the
process's peak resident set is reset through ``/proc/self/clear_refs`` before the step and read
after it, and the step's own part is the peak less the resident set before it.

Every figure is taken as a run computes: in its precision (bf16 or fp16 autocast; TF32 on CUDA,
set by the caller with :func:`cnnvit.training.device.use_precision`) and with its memory layout
(channels_last for convnets, and the hybrid's stem on CUDA; :func:`cnnvit.training.numerics.channels_last`),
inputs included.
"""

from __future__ import annotations

import contextlib
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from cnnvit.cifar import IMG_SIZE, NUM_CLASSES
from cnnvit.models import count_params, flops_per_image
from cnnvit.training.numerics import autocast, channels_last, sync

if TYPE_CHECKING:
    from cnnvit.models import ArchSpec

STATUS = Path("/proc/self/status")


def _rss_mb(field: str) -> float:
    match = re.search(rf"^{field}:\s+(\d+) kB", STATUS.read_text(), flags=re.M)
    return int(match.group(1)) / 1024 if match else float("nan")


class PeakMemory:
    """The peak memory (MB) of what runs inside the block, on ``device``."""

    def __init__(self, device: torch.device):
        self.device, self.peak_mb, self.before_mb = device, float("nan"), float("nan")

    def __enter__(self) -> PeakMemory:
        sync(self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.before_mb = torch.cuda.memory_allocated(self.device) / 2**20
        else:
            with contextlib.suppress(OSError):  # "5" resets the peak resident set (VmHWM) to the current one
                Path("/proc/self/clear_refs").write_text("5")
            self.before_mb = _rss_mb("VmRSS")
        return self

    def __exit__(self, *exc) -> None:
        sync(self.device)
        if self.device.type == "cuda":
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self.peak_mb = _rss_mb("VmHWM")

    @property
    def step_mb(self) -> float:
        return self.peak_mb - self.before_mb


def _latency_ms(model, x: torch.Tensor, device: torch.device, warmup: int, iters: int) -> tuple[float, float]:
    times = []
    with torch.no_grad():
        for i in range(warmup + iters):
            sync(device)
            start = time.perf_counter()
            model(x)
            sync(device)
            if i >= warmup:
                times.append(1000 * (time.perf_counter() - start))
    return float(np.median(times)), float(np.percentile(times, 95))


def measure(
    spec: ArchSpec,
    device: torch.device,
    sizes: tuple[int, ...] = (32, 64, 128),
    batch: int = 256,
    warmup: int = 5,
    iters: int = 30,
    precision: str = "fp32",
) -> list[dict]:
    """One row per input size; throughput and memory only at the training size (``IMG_SIZE``)."""
    rows = []
    layout = torch.channels_last if channels_last(spec, device) else torch.contiguous_format
    for size in sizes:
        torch.manual_seed(0)
        model = spec.build(img_size=size).to(device).to(memory_format=layout).eval()
        one = torch.randn(1, 3, size, size, device=device).contiguous(memory_format=layout)
        with autocast(device, precision):
            median, p95 = _latency_ms(model, one, device, warmup, iters)
        row = {
            "size": size,
            "params": count_params(model),
            "flops_per_image": flops_per_image(model, device, size),
            "latency_ms_median": median,
            "latency_ms_p95": p95,
        }
        if size == IMG_SIZE:
            with autocast(device, precision):
                row |= _throughput_and_memory(model, device, batch, warmup, layout)
        rows.append(row)
    return rows


def _throughput_and_memory(model, device: torch.device, batch: int, warmup: int, layout) -> dict:
    x = torch.randn(batch, 3, IMG_SIZE, IMG_SIZE, device=device).contiguous(memory_format=layout)
    y = torch.randint(0, NUM_CLASSES, (batch,), device=device)
    with torch.no_grad():
        for _ in range(max(1, warmup // 2)):
            model(x)
        sync(device)
        start = time.perf_counter()
        reps = 3
        for _ in range(reps):
            model(x)
        sync(device)
        throughput = reps * batch / (time.perf_counter() - start)
    with torch.no_grad(), PeakMemory(device) as infer:
        model(x)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with PeakMemory(device) as step:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    model.eval()
    return {
        "throughput_images_per_s": throughput,
        "batch": batch,
        "inference_peak_mb": infer.peak_mb,
        "inference_step_mb": infer.step_mb,
        "training_peak_mb": step.peak_mb,
        "training_step_mb": step.step_mb,
    }
