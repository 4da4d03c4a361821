"""The engine's small parts: LR schedule, autocast, memory layout, peak memory, seeding, and the
one line for an out-of-memory.

    lr_factor("cosine", step, total, warmup)     # multiplier on the base LR
    with autocast(device, "bf16"): ...            # a no-op for fp32 and tf32
    channels_last(spec, device)                   # the memory layout a model trains in
    eval_batch("auto", device)                    # runtime.eval_batch_size on this device
    reset_peak_memory(device); peak_mem_mb(device)
"""

from __future__ import annotations

import contextlib
import math
import random
import re
import resource
from pathlib import Path

import numpy as np
import torch

from cnnvit.errors import CnnvitError

AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}
STATUS, CLEAR_REFS = Path("/proc/self/status"), Path("/proc/self/clear_refs")


def compile_mode(setting) -> str | None:
    """The torch.compile mode of ``runtime.compile``, None when it is off."""
    if setting is False:
        return None
    return "default" if setting is True else str(setting)


def lr_factor(schedule: str, step: int, total: int, warmup: int) -> float:
    """Multiplier on the base LR at optimizer step ``step`` (0-based) of ``total``.

    Linear warm-up over ``warmup`` steps to the peak (factor 1 at step ``warmup - 1``), then
    ``constant``, ``cosine`` decay or ``linear`` decay, reaching 0 after the last step."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    t = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * t)) if schedule == "cosine" else max(0.0, 1 - t)


def sync(device: torch.device) -> None:
    """Wait for queued CUDA work, so a timer measures the work and not its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_mem_mb(device: torch.device) -> float:
    """Peak CUDA memory allocated, or the process's peak resident set on a CPU, since the last
    :func:`reset_peak_memory` (the run's start)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    try:
        match = re.search(r"^VmHWM:\s+(\d+) kB", STATUS.read_text(), flags=re.M)
    except OSError:
        match = None
    if match:
        return int(match.group(1)) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB, never reset


def reset_peak_memory(device: torch.device) -> None:
    """Start the peak of :func:`peak_mem_mb` afresh: once at each run's start, so that the second
    run of a batch or of a DVC worker does not report the first one's peak."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    else:
        with contextlib.suppress(OSError):  # "5" resets the peak resident set (VmHWM) to the current one
            CLEAR_REFS.write_text("5")


def channels_last(spec, device: torch.device) -> bool:
    """Whether ``spec``'s model takes channels_last tensors on ``device``: a convnet everywhere
    (1.4x for ResNet on CUDA and on oneDNN CPUs alike), the hybrid's conv stem on CUDA only."""
    return bool(spec.convnet) or (device.type == "cuda" and hasattr(spec, "stem_channels"))


# runtime.eval_batch_size: auto. On a CPU one thread evaluates small batches fastest (they stay in
# its caches): 128 a batch ran the laptop preset's models 1.4x faster than 1000, within 3% of the
# best size (benchmarks/eval_batch.py). A GPU wants large batches to fill it.
EVAL_BATCH_CPU, EVAL_BATCH_GPU = 128, 1000


def eval_batch(setting: int | str, device: torch.device) -> int:
    """The images a batch when evaluating on ``device``: ``runtime.eval_batch_size``, with auto
    resolved (it changes no number a run reports beyond the last bits of a logit)."""
    if setting != "auto":
        return int(setting)
    return EVAL_BATCH_CPU if device.type == "cpu" else EVAL_BATCH_GPU


def autocast(device: torch.device, precision: str):
    """The autocast context of ``precision`` (a no-op one for fp32 and tf32)."""
    return torch.autocast(device.type, dtype=AUTOCAST.get(precision, torch.bfloat16), enabled=precision in AUTOCAST)


def oom_error(device: torch.device, what: str, size: int, key: str, runs_per_gpu: int = 1) -> CnnvitError:
    """The one line for an out-of-memory: the batch's key, and runs_per_gpu where runs share a GPU."""
    where = f"out of memory on {device} during {what} at batch size {size}"
    if device.type == "cuda" and runs_per_gpu > 1:
        return CnnvitError(
            f"{where} with {runs_per_gpu} runs sharing this GPU: lower runtime.runs_per_gpu (try "
            f"{max(1, runs_per_gpu // 2)}) or {key} (try {max(1, size // 2)})"
        )
    return CnnvitError(f"{where}: lower {key} (try {max(1, size // 2)})")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
