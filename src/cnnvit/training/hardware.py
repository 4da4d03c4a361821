"""Whether the active preset fits this machine, decided in a moment, before any work starts.

    check_fits(params)      # raises one line when a GPU-sized preset meets a machine without a GPU

Each preset says what it is sized for (``presets.<p>.hardware``): the paper, data-size and transfer
presets a GPU (20 epochs of 45,000 images for each of their runs: days on a CPU), the quick and
laptop presets a 2-core CPU. With ``runtime.device: auto`` on a machine where no NVIDIA driver
lists a GPU (and that is not an Apple-silicon Mac, which has MPS), a GPU-sized preset stops with
one line naming the laptop preset, the one sized to answer the paper's question on a CPU. It does
not switch presets by itself: the same params.yaml means the same runs on every machine (DVC
tracks params.yaml, not the machine), so the choice stays the user's, and ``runtime.device:
cpu`` is how to insist. The check reads the driver's GPU list without importing torch, so the
Snakefile runs it at its start. A machine with GPUs that torch cannot use is
:mod:`cnnvit.training.device`'s to refuse (the driver, torch's CUDA and the fix).
"""

from __future__ import annotations

import platform
import sys

from cnnvit.config.types import Params
from cnnvit.errors import CnnvitError
from cnnvit.training.device import gpu_count

CPU_PRESET = "laptop"  # sized for a 2-core CPU in about an hour, on all of CIFAR-10


def has_accelerator() -> bool:
    """An NVIDIA GPU the driver lists, or Apple silicon (MPS)."""
    return gpu_count() > 0 or (sys.platform == "darwin" and platform.machine() == "arm64")


def check_fits(params: Params, tool: str = "snakemake") -> None:
    preset = params.active
    if preset.hardware != "gpu" or params.runtime.device != "auto" or has_accelerator():
        return
    runs = len(params.all_runs())
    images = "all of CIFAR-10" if not preset.train_size else f"{preset.train_size:,} training images"
    how = "snakemake --cores all --config preset=laptop" if tool == "snakemake" else "dvc exp run -S preset=laptop"
    raise CnnvitError(
        f"preset {params.preset!r} is sized for a GPU ({runs} trainings of {preset.epochs} epochs on {images}: days "
        f"on a CPU) and this machine has none: run the {CPU_PRESET} preset, sized for a CPU (`{how}`, about an hour "
        "on 2 cores), or set runtime.device: cpu to train this one on the CPU anyway"
    )
