"""One run, end to end: the optimizer step, the evaluation pass, the epoch loop and the checkpoint
format, in one place (as nanoGPT's train.py keeps them).

    summary = train_run(cfg, "data/prepared", "results/runs/vit-paper-s0", "results/checkpoints")
    trainer = Trainer(cfg, data, device)        # data: cnnvit.training.inputs.Prepared, on the device
    row = trainer.train_epoch(epoch)            # train metrics of one epoch
    val = trainer.evaluate(data.val)            # loss, accuracy and logits: eval mode, no augmentation,
                                                # no label smoothing

:func:`train_run` trains (or resumes, or re-emits when finished) a run: it evaluates the
validation and test splits after every evaluated epoch, keeps the epoch with the best validation
accuracy, and checkpoints (the dict of :func:`_checkpoint`; reading and writing it safely, the
identity that makes one reusable and the run's lock are :mod:`cnnvit.training.checkpoint`'s):
after the first evaluated epoch (a full disk or an unwritable folder shows in the first minutes),
then after the first evaluated epoch that ends ``runtime.checkpoint_every_s`` or more after the
last one (0: every one), and when the run finishes. An epoch-boundary checkpoint holds the whole
state, so a crashed run resumes from the last one bit-identically on a CPU. The files a finished
run writes are :mod:`cnnvit.training.outputs`'s; the small parts (schedule, autocast, layouts,
peak memory) :mod:`cnnvit.training.numerics`'.

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
capture), and evaluation runs eagerly too (forward only, at ``eval_batch_size``, large on a GPU,
where launch overhead is then small; an eval-mode graph would cost another compile per process). Every
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

import dataclasses
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from cnnvit.cifar import NUM_CLASSES
from cnnvit.config.types import RunConfig
from cnnvit.errors import CnnvitError
from cnnvit.models import build_model
from cnnvit.progress import pipeline_eta
from cnnvit.runfiles import METRIC_COLUMNS, RunSummary
from cnnvit.training import checkpoint
from cnnvit.training.device import held_slot, resolve_precision, select_device, use_precision
from cnnvit.training.inputs import Augment, Prepared, Split, epoch_generator, load_prepared
from cnnvit.training.numerics import (
    autocast,
    channels_last,
    compile_mode,
    eval_batch,
    lr_factor,
    oom_error,
    peak_mem_mb,
    reset_peak_memory,
    seed_everything,
    sync,
)
from cnnvit.training.outputs import make_summary, selected_row, write_outputs

NAN_CHECK_EVERY = 25  # steps between host syncs that look for a non-finite loss
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")  # torch.compile's modes that capture CUDA graphs
_cuda_graphs = "off"  # what this process's last compilation did with CUDA graphs


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
        bs = batch_size or eval_batch(self.cfg.runtime.eval_batch_size, self.device)
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


# ----------------------------------------------------------------------------- a run: the epoch loop


def fmt_eta(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}h{m % 60:02d}m" if m >= 60 else f"{m}m{s:02d}s"


def _checkpoint(trainer, ident, runtime, epoch, rows, summary, wall, kept) -> dict:
    return {
        "identity": ident,
        "runtime": runtime,
        "epoch": epoch,
        "rows": rows,
        "summary": summary.to_json() if summary else None,
        "wall_seconds": wall,
        "kept": kept,  # test logits of the last and the selected epoch, and the selected epoch's weights
        "state": trainer.state(),
    }


def train_run(cfg: RunConfig, data_dir, out_dir, ckpt_dir, threads: int | None = None) -> RunSummary:
    """Train (or resume, or re-emit if finished) one run; writes its files (cnnvit.runfiles.RUN_FILES)."""
    start = time.perf_counter()
    out_dir, ckpt_dir = Path(out_dir), Path(ckpt_dir)
    ckpt_path = ckpt_dir / f"{cfg.name}.pt"
    threads = threads or cfg.runtime.threads
    with checkpoint.run_lock(ckpt_dir, cfg.name):
        device, device_name = select_device(cfg.runtime.device, cfg.runtime.runs_per_gpu)
        reset_peak_memory(device)  # this run's peak, not an earlier run's of this process
        precision = resolve_precision(cfg.runtime.precision, device)
        cfg = dataclasses.replace(cfg, precision=precision)
        use_precision(precision, device)
        runtime = {"device": device_name, "threads": threads, "compile": compile_mode(cfg.runtime.compile) or False}
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        gpus = f", CUDA_VISIBLE_DEVICES={visible}" if visible is not None else ""
        slot = f" ({s})" if (s := held_slot(cfg.runtime.runs_per_gpu)) else ""
        print(f"{cfg.name}: on {device_name}{slot}, {cfg.precision}, {threads} CPU thread(s){gpus}", flush=True)
        torch.set_num_threads(threads)
        data = load_prepared(data_dir, cfg, device)
        trainer = Trainer(cfg, data, device)
        ident = checkpoint.identity(cfg.identity(), data.stats, type(cfg.model).__module__)
        ckpt = checkpoint.load(ckpt_path, ident, runtime)
        done, rows, summary, wall, kept = 0, [], None, 0.0, {}
        if ckpt is not None:
            trainer.load_state(ckpt["state"])
            done, rows, wall, kept = ckpt["epoch"], ckpt["rows"], ckpt["wall_seconds"], ckpt["kept"]
            summary = RunSummary.from_json(ckpt["summary"], str(ckpt_path)) if ckpt["summary"] else None
            state = "finished; not retraining" if summary else f"resuming after epoch {done}"
            print(f"{cfg.name}: checkpoint found, {state}", flush=True)
        progress = sys.stderr.isatty()
        unrecorded = 0.0  # seconds of the epochs since the last recorded row
        saves: dict = {"every_s": cfg.runtime.checkpoint_every_s, "written": 0, "seconds": 0.0}
        saved_at = None  # when this process last wrote the run's checkpoint
        for epoch in range(done + 1, cfg.epochs + 1):
            row = {"epoch": epoch, **trainer.train_epoch(epoch, progress=progress)}
            unrecorded += row["epoch_seconds"]
            if epoch % cfg.eval_every and epoch != cfg.epochs:
                continue  # a small fraction's many short epochs are evaluated every eval_every
            row["epoch_seconds"], unrecorded = unrecorded, 0.0
            val, test = trainer.evaluate(data.val), trainer.evaluate(data.test)
            row |= {"val_loss": val.loss, "val_acc": val.acc, "test_loss": test.loss, "test_acc": test.acc}
            row["peak_mem_mb"] = peak_mem_mb(device)
            rows.append({k: row[k] for k in METRIC_COLUMNS})
            kept["final_logits"] = test.logits.cpu()  # float32: the argmax the accuracy was counted from
            if selected_row(rows) is rows[-1]:  # the validation accuracy improved: keep this epoch
                kept |= {"selected_logits": kept["final_logits"], "selected_model": trainer.weights()}
            saved = ""
            due = saved_at is None or time.monotonic() - saved_at >= cfg.runtime.checkpoint_every_s
            if due and epoch != cfg.epochs:  # the last epoch's is the finished run's, below
                began = time.perf_counter()
                wall_now = wall + began - start
                checkpoint.save(ckpt_path, _checkpoint(trainer, ident, runtime, epoch, rows, None, wall_now, kept))
                saved_at, took = time.monotonic(), time.perf_counter() - began
                saves["written"], saves["seconds"] = saves["written"] + 1, saves["seconds"] + took
                saved = f"  checkpoint {took:.1f}s"
            spent = sum(r["epoch_seconds"] for r in rows)
            print(
                f"{cfg.name} epoch {epoch}/{cfg.epochs}  train_loss {row['train_loss']:.4f}  "
                f"train_acc {row['train_acc']:.2f}%  val_acc {row['val_acc']:.2f}%  test_acc {row['test_acc']:.2f}%  "
                f"lr {row['lr']:.2e}  {row['epoch_seconds']:.1f}s ({row['train_images_per_s']:.0f} img/s)  "
                f"ETA {fmt_eta(spent / len(rows) * (cfg.epochs - epoch) / cfg.eval_every)}{saved}"
                + pipeline_eta(cfg.name, epoch / cfg.epochs, wall + time.perf_counter() - start),
                flush=True,
            )
        if summary is None:
            summary = make_summary(cfg, trainer, rows, runtime, wall + time.perf_counter() - start, saves)
            checkpoint.save(
                ckpt_path, _checkpoint(trainer, ident, runtime, cfg.epochs, rows, summary, summary.wall_seconds, kept)
            )
    write_outputs(out_dir, cfg, rows, summary, data, kept)
    return summary
