"""The training engine of one run: model, optimizer, LR schedule and on-device data.

    trainer = Trainer(cfg, data, device)        # data: cnnvit.training.inputs.Prepared, on the device
    row = trainer.train_epoch(epoch)            # train metrics of one epoch
    val = trainer.evaluate(data.val)            # loss, accuracy and logits: eval mode, no augmentation,
                                                # no label smoothing

The engine owns one optimizer step and one evaluation pass; the epoch loop, checkpoints and
outputs belong to the train stage (:mod:`cnnvit.stages.train`).

Numerics: on a CPU, the same run config and thread count give bit-identical numbers, resumed or
not. The run config holds the precision resolved for its device
(:func:`cnnvit.training.device.resolve_precision`): ``bf16`` autocasts forward passes to
bfloat16, ``fp16`` to float16 with a gradient scaler (as the paper's ViT, §2.2), ``tf32`` is fp32
with TF32 tensor-core matmuls on CUDA. On CUDA, Adam and AdamW run fused (one kernel for every
parameter); convnets, and the hybrid's conv stem, take channels_last tensors (the hybrid only
on CUDA, so that a CPU run computes what it always did).

``runtime.compile`` wraps the model in ``torch.compile`` with that mode (``reduce-overhead`` adds
CUDA graphs, which remove the launch overhead of small steps). Exactly one graph is compiled per
process: the full training batch. An epoch's last, smaller batch runs the same module eagerly
(one step an epoch; a second graph would be a second compile and, with CUDA graphs, a second
capture), and evaluation runs eagerly too (forward only, at the large ``eval_batch_size``, where
launch overhead is small; an eval-mode graph would cost another compile per process). Every
image is still trained on and scored: nothing is dropped or padded. The first compiled steps
(tracing, compiling, capturing the CUDA graph) are timed apart, recorded as
``compile_info["seconds"]`` and kept out of the epoch's seconds and images/s, with whether CUDA
graphs were used or skipped. On a GPU, autocast, compile and cuDNN's algorithm choice make runs
close but not bit-identical unless deterministic algorithms are switched on
(``torch.use_deterministic_algorithms(True)``), which this engine does not do.

Host-device syncs in the step loop: one every ``NAN_CHECK_EVERY`` steps (the non-finite loss
check), and the timing of the first compiled steps; the losses and accuracy stay on the device
until the epoch ends.
"""

from __future__ import annotations

import contextlib
import math
import random
import re
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from cnnvit.cifar import NUM_CLASSES
from cnnvit.config.types import RunConfig
from cnnvit.errors import CnnvitError
from cnnvit.models import build_model
from cnnvit.training.device import resolve_precision
from cnnvit.training.inputs import Augment, Prepared, Split, epoch_generator

NAN_CHECK_EVERY = 25  # steps between host syncs that look for a non-finite loss
AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}
STATUS, CLEAR_REFS = Path("/proc/self/status"), Path("/proc/self/clear_refs")
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")  # torch.compile's modes that capture CUDA graphs
_cuda_graphs = "off"  # what this process's last compilation did with CUDA graphs


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


@dataclass
class Evaluation:
    loss: float  # mean cross-entropy per image
    acc: float  # percent
    logits: torch.Tensor  # N x classes, float32, on the device


class Trainer:
    """Owns the model, optimizer, schedule and the on-device data of one run. ``backend`` is
    torch.compile's (tests compile with ``eager``, which generates no code)."""

    def __init__(self, cfg: RunConfig, data: Prepared, device: torch.device, backend: str = "inductor"):
        import timm.optim

        self.cfg, self.recipe, self.device, self.data = cfg, cfg.recipe, device, data
        seed_everything(cfg.run.seed)
        r = self.recipe
        layout = channels_last(cfg.model, device)
        self.augment = Augment(data.mean, data.std, r.normalize, r.crop_padding, r.flip, device, layout)
        self.model = build_model(cfg.model).to(device)
        if layout:
            self.model = self.model.to(memory_format=torch.channels_last)
        # What runs the full training batches: the model, or its torch.compile wrapper (same
        # parameters); everything else runs the model itself (see the module's docstring).
        mode = compile_mode(cfg.runtime.compile)
        # What compilation cost this run: mode, backend, seconds of the first compiled steps,
        # graphs compiled, and whether CUDA graphs were used.
        self.compile_info: dict[str, Any] = {"mode": False, "seconds": 0.0, "graphs": 0, "cuda_graphs": "off"}
        self._warm_left = 0  # first full-batch steps still to be timed as compilation
        self.net = self.model if mode is None else self._compiled(mode, backend)
        extra: dict[str, Any] = {"momentum": r.momentum} if r.optimizer == "sgd" else {}
        if r.layer_decay is not None:
            extra["layer_decay"] = r.layer_decay
        if device.type == "cuda" and r.optimizer in ("adam", "adamw"):
            extra["fused"] = True  # one kernel for every parameter instead of a few per tensor
        self.optimizer = timm.optim.create_optimizer_v2(
            self.model, opt=r.optimizer, lr=r.lr, weight_decay=r.weight_decay, **extra
        )
        for group in self.optimizer.param_groups:  # timm's schedulers apply layer decay; torch's do not
            group["lr"] *= group.get("lr_scale", 1.0)
        self.batch_size = r.batch_size
        self.steps_per_epoch = math.ceil(len(data.train) / self.batch_size)
        total = self.steps_per_epoch * cfg.epochs
        warmup = round(r.warmup_epochs * self.steps_per_epoch)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(r.schedule, s, total, warmup)
        )
        self.criterion = nn.CrossEntropyLoss(label_smoothing=r.label_smoothing)
        self.precision = precision = cfg.precision or resolve_precision(cfg.runtime.precision, device)
        self.amp = autocast(device, precision)
        # fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none.
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        self.infer_images_per_s = float("nan")  # set by evaluate()

    def _compiled(self, mode: str, backend: str):
        from torch._dynamo.utils import counters

        self.compile_info.update(mode=mode, backend=backend)
        # The first full-batch steps trace and compile (and, with CUDA graphs, warm up and capture).
        self._warm_left = 2 if mode in CUDA_GRAPH_MODES else 1
        self._counts = (counters["stats"]["unique_graphs"], counters["inductor"]["cudagraph_skips"])
        if backend == "inductor":
            return torch.compile(self.model, mode=mode)
        return torch.compile(self.model, backend=backend)  # another backend takes no inductor mode

    def _compiled_steps_done(self) -> None:
        """After the first compiled steps: how many graphs they compiled, and CUDA graphs' fate."""
        from torch._dynamo.utils import counters

        global _cuda_graphs
        info, (graphs, skips) = self.compile_info, self._counts
        info["graphs"] = counters["stats"]["unique_graphs"] - graphs
        if info["mode"] not in CUDA_GRAPH_MODES:
            return
        if self.device.type != "cuda":
            info["cuda_graphs"] = f"none on {self.device.type}"
        elif info["graphs"]:  # this run compiled: did inductor skip the capture?
            skipped = counters["inductor"]["cudagraph_skips"] - skips
            _cuda_graphs = "used" if not skipped else f"skipped in {skipped} graph(s) (TORCH_LOGS=cudagraphs says why)"
            info["cuda_graphs"] = _cuda_graphs
        else:  # an earlier run of this process compiled the graph this one reuses
            info["cuda_graphs"] = _cuda_graphs

    def _oom(self, what: str, size: int, key: str) -> CnnvitError:
        return oom_error(self.device, what, size, key, self.cfg.runtime.runs_per_gpu)

    def train_epoch(self, epoch: int, max_steps: int | None = None, progress: bool = False) -> dict:
        """Train one epoch (``max_steps`` caps it, for benchmarks); returns its train metrics.
        Seconds and images/s leave out the first compiled steps (:attr:`compile_info`)."""
        self.model.train()
        gen = epoch_generator(self.cfg.run.seed, epoch)
        n = len(self.data.train)
        perm = torch.randperm(n, generator=gen).to(self.device)
        draws = self.augment.draws(n, gen)
        steps = min(self.steps_per_epoch, max_steps or self.steps_per_epoch)
        losses = torch.zeros(steps, device=self.device)
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        seen, checked, compiling, compiled_images = 0, 0, 0.0, 0
        clip = self.recipe.grad_clip
        bar = tqdm(total=steps, desc=f"epoch {epoch}", leave=False, disable=not progress)
        start = time.perf_counter()
        try:
            for step in range(steps):
                idx = perm[step * self.batch_size : (step + 1) * self.batch_size]
                full = len(idx) == self.batch_size
                warm = full and self._warm_left > 0
                if warm:
                    sync(self.device)
                    began = time.perf_counter()
                x = self.augment(self.data.train.images[idx], {k: v[idx] for k, v in draws.items()})
                y = self.data.train.labels[idx]
                with self.amp:
                    logits = (self.net if full else self.model)(x)  # a short last batch: no second graph
                    loss = self.criterion(logits, y)
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                if clip:
                    self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
                    nn.utils.clip_grad_norm_(self.model.parameters(), clip, foreach=True)
                lr = max(g["lr"] for g in self.optimizer.param_groups)  # the LR this step used (the head's)
                self.scaler.step(self.optimizer)  # skipped (and the scale lowered) if fp16 overflowed
                self.scaler.update()
                self.scheduler.step()
                losses[step] = loss.detach() * len(idx)
                correct += (logits.argmax(1) == y).sum()
                seen += len(idx)
                if warm:
                    sync(self.device)
                    took = time.perf_counter() - began
                    compiling, compiled_images = compiling + took, compiled_images + len(idx)
                    self.compile_info["seconds"] += took
                    self._warm_left -= 1
                    if not self._warm_left:
                        self._compiled_steps_done()
                if (step + 1) % NAN_CHECK_EVERY == 0 or step + 1 == steps:
                    self._check_finite(losses[checked : step + 1], epoch, checked)
                    checked = step + 1
                bar.update()
        except torch.OutOfMemoryError:
            raise self._oom("training", self.batch_size, f"recipes.{self.cfg.run.recipe}.batch_size") from None
        finally:
            bar.close()
        sync(self.device)
        seconds = time.perf_counter() - start - compiling
        timed = seen - compiled_images
        return {
            "train_loss": float(losses.sum()) / seen,
            "train_acc": 100.0 * float(correct) / seen,
            "lr": float(lr),
            "epoch_seconds": seconds,
            "train_images_per_s": timed / seconds if timed else float("nan"),
        }

    def _check_finite(self, losses: torch.Tensor, epoch: int, first_step: int) -> None:
        bad = (~torch.isfinite(losses)).nonzero()
        if len(bad):
            step = first_step + int(bad[0]) + 1
            raise CnnvitError(
                f"loss is {float(losses[int(bad[0])])} at epoch {epoch} step {step} of run {self.cfg.name}: "
                f"training diverged; lower recipes.{self.cfg.run.recipe}.lr or set a grad_clip"
            )

    @torch.no_grad()
    def evaluate(self, split: Split | None = None, batch_size: int | None = None) -> Evaluation:
        """Loss, accuracy and logits on ``split`` (default: the test split): eval mode, no
        augmentation, no label smoothing."""
        split = self.data.test if split is None else split
        self.model.eval()
        bs = batch_size or self.cfg.runtime.eval_batch_size
        start = time.perf_counter()
        logits = torch.empty(len(split), NUM_CLASSES, device=self.device)
        try:
            for i in range(0, len(split), bs):
                with self.amp:  # eager, compiled or not: no eval-mode graph (see the module's docstring)
                    logits[i : i + bs] = self.model(self.augment(split.images[i : i + bs])).float()
        except torch.OutOfMemoryError:
            raise self._oom("evaluation", bs, "runtime.eval_batch_size") from None
        loss = float(nn.functional.cross_entropy(logits, split.labels))  # float() waits for the device
        acc = 100.0 * float((logits.argmax(1) == split.labels).sum()) / len(split)
        if split is self.data.test:  # inference throughput comes from the test pass, not extra passes
            self.infer_images_per_s = len(split) / (time.perf_counter() - start)
        return Evaluation(loss, acc, logits)

    def weights(self) -> dict[str, torch.Tensor]:
        """A copy of the model's weights on the CPU (what the selected epoch keeps)."""
        return {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}

    def state(self) -> dict:
        """Model, optimizer, schedule and RNG state: tensors and plain Python only, so that
        ``torch.load(weights_only=True)`` reads it back."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng_torch": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else [],
            "scaler": self.scaler.state_dict(),
        }

    def load_state(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng_torch"])
        if state["rng_cuda"] and self.device.type == "cuda":
            torch.cuda.set_rng_state_all(state["rng_cuda"])
