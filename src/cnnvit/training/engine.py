"""The training engine of one run: model, optimizer, LR schedule and on-device data.

    trainer = Trainer(cfg, data, device)        # data: cnnvit.training.data.Prepared, on the device
    row = trainer.train_epoch(epoch)            # train metrics of one epoch
    val = trainer.evaluate(data.val)            # loss, accuracy and logits: eval mode, no augmentation,
                                                # no label smoothing

The engine owns one optimizer step and one evaluation pass; the epoch loop, checkpoints and
outputs belong to the train stage (:mod:`cnnvit.stages.train`).

Numerics: on a CPU, the same run config and thread count give bit-identical numbers, resumed or
not. The run config holds the precision resolved for its device
(:func:`cnnvit.training.device.resolve_precision`): ``bf16`` autocasts forward passes to
bfloat16, ``fp16`` to float16 with a gradient scaler (as the paper's ViT, §2.2), ``tf32`` is fp32
with TF32 tensor-core matmuls on CUDA. ``runtime.compile`` wraps the model in ``torch.compile``
with that mode (``reduce-overhead`` adds CUDA graphs, which remove the launch overhead of small
steps). On a GPU, autocast, compile and cuDNN's algorithm choice make runs close but not
bit-identical unless deterministic algorithms are switched on
(``torch.use_deterministic_algorithms(True)``), which this engine does not do.
"""

from __future__ import annotations

import math
import random
import resource
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from cnnvit.config.types import RunConfig
from cnnvit.dataset import NUM_CLASSES
from cnnvit.errors import CnnvitError
from cnnvit.models import build_model
from cnnvit.training.data import Augment, Prepared, Split, epoch_generator
from cnnvit.training.device import resolve_precision

NAN_CHECK_EVERY = 25  # steps between host syncs that look for a non-finite loss
AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


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
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


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
    """Owns the model, optimizer, schedule and the on-device data of one run."""

    def __init__(self, cfg: RunConfig, data: Prepared, device: torch.device):
        import timm.optim

        self.cfg, self.recipe, self.device, self.data = cfg, cfg.recipe, device, data
        seed_everything(cfg.run.seed)
        r = self.recipe
        # channels_last speeds convnets up on CUDA and on oneDNN CPUs alike (1.4x for ResNet here).
        channels_last = cfg.model.convnet
        self.augment = Augment(data.mean, data.std, r.normalize, r.crop_padding, r.flip, device, channels_last)
        self.model = build_model(cfg.model).to(device)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        # What runs the batches: the model, or its torch.compile wrapper (same parameters).
        mode = compile_mode(cfg.runtime.compile)
        self.net = self.model if mode is None else torch.compile(self.model, mode=mode)
        extra: dict[str, Any] = {"momentum": r.momentum} if r.optimizer == "sgd" else {}
        if r.layer_decay is not None:
            extra["layer_decay"] = r.layer_decay
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
        self.amp = torch.autocast(
            device.type, dtype=AUTOCAST.get(precision, torch.bfloat16), enabled=precision in AUTOCAST
        )
        # fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none.
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        self.infer_images_per_s = float("nan")  # set by evaluate()

    def _oom(self, what: str, size: int, key: str) -> CnnvitError:
        return CnnvitError(
            f"out of memory on {self.device} during {what} at batch size {size}: lower {key} (try {max(1, size // 2)})"
        )

    def train_epoch(self, epoch: int, max_steps: int | None = None, progress: bool = False) -> dict:
        """Train one epoch (``max_steps`` caps it, for benchmarks); returns its train metrics."""
        self.model.train()
        gen = epoch_generator(self.cfg.run.seed, epoch)
        n = len(self.data.train)
        perm = torch.randperm(n, generator=gen).to(self.device)
        draws = self.augment.draws(n, gen)
        steps = min(self.steps_per_epoch, max_steps or self.steps_per_epoch)
        losses = torch.zeros(steps, device=self.device)
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        seen, checked = 0, 0
        clip = self.recipe.grad_clip
        bar = tqdm(total=steps, desc=f"epoch {epoch}", leave=False, disable=not progress)
        start = time.perf_counter()
        try:
            for step in range(steps):
                idx = perm[step * self.batch_size : (step + 1) * self.batch_size]
                x = self.augment(self.data.train.images[idx], {k: v[idx] for k, v in draws.items()})
                y = self.data.train.labels[idx]
                with self.amp:
                    logits = self.net(x)
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
                if (step + 1) % NAN_CHECK_EVERY == 0 or step + 1 == steps:
                    self._check_finite(losses[checked : step + 1], epoch, checked)
                    checked = step + 1
                bar.update()
        except torch.OutOfMemoryError:
            raise self._oom("training", self.batch_size, f"recipes.{self.cfg.run.recipe}.batch_size") from None
        finally:
            bar.close()
        sync(self.device)
        seconds = time.perf_counter() - start
        return {
            "train_loss": float(losses.sum()) / seen,
            "train_acc": 100.0 * float(correct) / seen,
            "lr": float(lr),
            "epoch_seconds": seconds,
            "train_images_per_s": seen / seconds,
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
                with self.amp:
                    logits[i : i + bs] = self.net(self.augment(split.images[i : i + bs])).float()
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
