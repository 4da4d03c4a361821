"""Training stage: one model x recipe x seed run, resumable and deterministic.

    cnnvit train --model vit --recipe paper --seed 0 --data-dir data/prepared \
        --out-dir results/runs/vit-paper-s0 --ckpt-dir results/checkpoints --threads 2

Writes ``metrics.csv`` (one row per epoch) and ``summary.json`` to ``--out-dir`` only when the
run finishes. A checkpoint is written atomically after every epoch to ``--ckpt-dir``, outside
the DAG's declared outputs (Snakemake and DVC delete those before a re-run): the same command
after a crash resumes from the last complete epoch, and a finished run is not retrained.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import resource
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

from cnnvit.artifacts import atomic_path, provenance, write_json
from cnnvit.config import run_config
from cnnvit.device_data import Augment, epoch_generator, load_split, load_stats
from cnnvit.errors import CnnvitError
from cnnvit.models import build_model, count_params, flops_per_image, is_convnet

METRIC_COLUMNS = [
    "epoch", "train_loss", "train_acc", "test_loss", "test_acc",
    "lr", "epoch_seconds", "train_images_per_s", "peak_mem_mb",
]  # fmt: skip
NAN_CHECK_EVERY = 25  # steps between host syncs that look for a non-finite loss


def pick_device(setting: str) -> torch.device:
    if setting == "cuda" and not torch.cuda.is_available():
        raise CnnvitError("train.device is cuda but no CUDA device is visible: set train.device=auto")
    return torch.device("cuda" if setting != "cpu" and torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def lr_factor(schedule: str, step: int, total: int, warmup: int) -> float:
    """Multiplier on the base LR at optimizer step ``step`` of ``total``."""
    if schedule == "constant":
        return 1.0
    if step < warmup:
        return (step + 1) / warmup
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


def digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


class Trainer:
    """Owns the model, optimizer, schedule and the on-device data of one run."""

    def __init__(self, rc: dict, data_dir: str | Path, threads: int | None = None):
        import timm.optim

        self.rc, self.recipe = rc, rc["recipe"]
        self.device = pick_device(rc["train"]["device"])
        if self.device.type == "cpu" and threads:
            torch.set_num_threads(threads)
        seed_everything(rc["seed"])
        data_dir = Path(data_dir)
        self.train, self.classes = load_split(
            data_dir / "train.npz", rc["train_size"], rc["seed"], self.device
        )
        self.test, _ = load_split(data_dir / "test.npz", rc["test_size"], rc["seed"], self.device)
        stats = load_stats(data_dir / "stats.json")
        # A checkpoint is only valid for the data it was trained on, not just the same params.
        self.data_id = digest(stats)
        mean, std = stats["mean"], stats["std"]
        # channels_last speeds convnets up on CUDA and on oneDNN CPUs alike (1.4x for ResNet here).
        channels_last = is_convnet(rc["model"])
        self.augment = Augment(
            mean, std, self.recipe.get("crop_padding", 0), self.recipe.get("flip", False),
            self.device, channels_last,
        )  # fmt: skip
        self.model = build_model(rc["model"]).to(self.device)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.forward = self.model
        if rc["train"]["compile"] and self.device.type == "cuda":
            self.forward = torch.compile(self.model)
        r = self.recipe
        self.optimizer = timm.optim.create_optimizer_v2(
            self.model, opt=r["optimizer"], lr=r["lr"], weight_decay=r.get("weight_decay", 0.0),
            **({"momentum": r.get("momentum", 0.9)} if r["optimizer"] == "sgd" else {}),
        )  # fmt: skip
        self.batch_size = r["batch_size"]
        self.steps_per_epoch = math.ceil(len(self.train) / self.batch_size)
        total = self.steps_per_epoch * rc["epochs"]
        warmup = round(r.get("warmup_epochs", 0) * self.steps_per_epoch)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(r["schedule"], s, total, warmup)
        )
        self.criterion = nn.CrossEntropyLoss(label_smoothing=r.get("label_smoothing", 0.0))
        self.amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda")

    # ------------------------------------------------------------------ one epoch

    def _oom(self, what: str, size: int, key: str) -> CnnvitError:
        return CnnvitError(
            f"out of memory on {self.device} during {what} at batch size {size}: lower {key} "
            f"(try {max(1, size // 2)})"
        )

    def train_epoch(self, epoch: int, max_steps: int | None = None, progress: bool = False) -> dict:
        """Train one epoch (``max_steps`` caps it, for benchmarks); returns its train metrics."""
        self.model.train()
        gen = epoch_generator(self.rc["seed"], epoch)
        n = len(self.train)
        perm = torch.randperm(n, generator=gen).to(self.device)
        draws = self.augment.draws(n, gen)
        steps = min(self.steps_per_epoch, max_steps or self.steps_per_epoch)
        losses = torch.zeros(steps, device=self.device)
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        seen, checked = 0, 0
        clip = self.recipe.get("grad_clip")
        bar = tqdm(total=steps, desc=f"epoch {epoch}", leave=False, disable=not progress)
        start = time.perf_counter()
        try:
            for step in range(steps):
                idx = perm[step * self.batch_size : (step + 1) * self.batch_size]
                x = self.augment(self.train.images[idx], {k: v[idx] for k, v in draws.items()})
                y = self.train.labels[idx]
                with self.amp:
                    logits = self.forward(x)
                    loss = self.criterion(logits, y)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if clip:
                    nn.utils.clip_grad_norm_(self.model.parameters(), clip, foreach=True)
                lr = self.optimizer.param_groups[0]["lr"]  # the LR this step used
                self.optimizer.step()
                self.scheduler.step()
                losses[step] = loss.detach() * len(idx)
                correct += (logits.argmax(1) == y).sum()
                seen += len(idx)
                if (step + 1) % NAN_CHECK_EVERY == 0 or step + 1 == steps:
                    self._check_finite(losses[checked : step + 1], epoch, checked)
                    checked = step + 1
                bar.update()
        except torch.OutOfMemoryError:
            raise self._oom(
                "training", self.batch_size, f"recipes.{self.rc['recipe_name']}.batch_size"
            ) from None
        finally:
            bar.close()
        sync(self.device)
        seconds = time.perf_counter() - start
        return {
            "train_loss": float(losses.sum()) / seen,
            "train_acc": 100.0 * float(correct) / seen,
            "lr": lr,  # of the epoch's last step
            "epoch_seconds": seconds,
            "train_images_per_s": seen / seconds,
        }

    def _check_finite(self, losses: torch.Tensor, epoch: int, first_step: int) -> None:
        bad = (~torch.isfinite(losses)).nonzero()
        if len(bad):
            step = first_step + int(bad[0]) + 1
            raise CnnvitError(
                f"loss is {float(losses[int(bad[0])])} at epoch {epoch} step {step} of run "
                f"{self.rc['run']}: training diverged; lower recipes.{self.rc['recipe_name']}.lr "
                "or set a grad_clip"
            )

    @torch.no_grad()
    def evaluate(self) -> tuple[float, float]:
        self.model.eval()
        bs = self.rc["train"]["eval_batch_size"]
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        try:
            for i in range(0, len(self.test), bs):
                x = self.augment(self.test.images[i : i + bs])
                y = self.test.labels[i : i + bs]
                with self.amp:
                    logits = self.forward(x)
                loss_sum += nn.functional.cross_entropy(logits.float(), y, reduction="sum")
                correct += (logits.argmax(1) == y).sum()
        except torch.OutOfMemoryError:
            raise self._oom("evaluation", bs, "train.eval_batch_size") from None
        n = len(self.test)
        return float(loss_sum) / n, 100.0 * float(correct) / n

    @torch.no_grad()
    def inference_speed(self, batch: int = 256, iters: int = 5) -> float:
        self.model.eval()
        x = self.augment(self.test.images[:batch])
        with self.amp:
            self.forward(x)  # warm-up
            sync(self.device)
            start = time.perf_counter()
            for _ in range(iters):
                self.forward(x)
            sync(self.device)
        return len(x) * iters / (time.perf_counter() - start)

    # ------------------------------------------------------------------ checkpoints

    def state(self, epoch: int, rows: list[dict], summary: dict | None = None) -> dict:
        return {
            "config_hash": digest(self.rc),
            "data_id": self.data_id,
            "epoch": epoch,
            "rows": rows,
            "summary": summary,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": {
                "python": random.getstate(),
                "numpy": np.random.get_state(),
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            },
        }

    def load_state(self, ckpt: dict) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        random.setstate(ckpt["rng"]["python"])
        np.random.set_state(ckpt["rng"]["numpy"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        if ckpt["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])


def save_checkpoint(path: Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path, rc: dict, data_id: str) -> dict | None:
    if not path.exists():
        return None
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a torn or foreign file: training from scratch is the safe answer
        print(f"ignoring unreadable checkpoint {path} ({type(exc).__name__}); starting fresh")
        return None
    if ckpt.get("config_hash") != digest(rc):
        print(f"checkpoint {path} was made with other params; starting fresh")
        return None
    if ckpt.get("data_id") != data_id:
        print(f"checkpoint {path} was made from other prepared data; starting fresh")
        return None
    return ckpt


def fmt_eta(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}h{m % 60:02d}m" if m >= 60 else f"{m}m{s:02d}s"


def train_run(rc: dict, data_dir, out_dir, ckpt_dir, threads: int | None = None) -> dict:
    """Train (or resume, or skip if finished) one run; writes metrics.csv and summary.json."""
    out_dir, ckpt_path = Path(out_dir), Path(ckpt_dir) / f"{rc['run']}.pt"
    trainer = Trainer(rc, data_dir, threads)
    ckpt = load_checkpoint(ckpt_path, rc, trainer.data_id)
    rows: list[dict] = []
    summary = None
    if ckpt is not None:
        trainer.load_state(ckpt)
        rows, summary = ckpt["rows"], ckpt["summary"]
        state = "finished; not retraining" if summary else f"resuming after epoch {ckpt['epoch']}"
        print(f"{rc['run']}: checkpoint found, {state}")
    progress = sys.stderr.isatty()
    total_epochs = rc["epochs"]
    for epoch in range(len(rows) + 1, total_epochs + 1):
        row = {"epoch": epoch, **trainer.train_epoch(epoch, progress=progress)}
        row["test_loss"], row["test_acc"] = trainer.evaluate()
        row["peak_mem_mb"] = peak_mem_mb(trainer.device)
        rows.append({k: row[k] for k in METRIC_COLUMNS})
        spent = sum(r["epoch_seconds"] for r in rows)
        eta = spent / len(rows) * (total_epochs - epoch)
        print(
            f"{rc['run']} epoch {epoch}/{total_epochs}  train_loss {row['train_loss']:.4f}  "
            f"train_acc {row['train_acc']:.2f}%  test_loss {row['test_loss']:.4f}  "
            f"test_acc {row['test_acc']:.2f}%  lr {row['lr']:.2e}  {row['epoch_seconds']:.1f}s "
            f"({row['train_images_per_s']:.0f} img/s)  ETA {fmt_eta(eta)}",
            flush=True,
        )
        save_checkpoint(ckpt_path, trainer.state(epoch, rows))
    if summary is None:
        summary = make_summary(trainer, rows)
        save_checkpoint(ckpt_path, trainer.state(total_epochs, rows, summary))
    metrics = pd.DataFrame(rows, columns=METRIC_COLUMNS)
    with atomic_path(out_dir / "metrics.csv") as tmp:
        metrics.to_csv(tmp, index=False)
    write_json(out_dir / "summary.json", summary)
    return summary


def make_summary(trainer: Trainer, rows: list[dict]) -> dict:
    rc = trainer.rc
    best = max(rows, key=lambda r: r["test_acc"])
    return {
        "run": rc["run"],
        "model": rc["model_name"],
        "recipe": rc["recipe_name"],
        "seed": rc["seed"],
        "profile": rc["profile"],
        "epochs": len(rows),
        "best_test_acc": best["test_acc"],
        "best_epoch": best["epoch"],
        "final_test_acc": rows[-1]["test_acc"],
        "train_seconds": sum(r["epoch_seconds"] for r in rows),
        "params": count_params(trainer.model),
        "flops_per_image": flops_per_image(trainer.model, trainer.device),
        "train_images_per_s": float(np.mean([r["train_images_per_s"] for r in rows])),
        "infer_images_per_s": trainer.inference_speed(),
        "peak_mem_mb": max(r["peak_mem_mb"] for r in rows),
        "n_train": len(trainer.train),
        "n_test": len(trainer.test),
        "device": str(trainer.device),
        "torch_version": torch.__version__,
        "timm_version": __import__("timm").__version__,
        "provenance": provenance(rc, str(trainer.device)),
    }


def add_args(p) -> None:
    p.add_argument("--model", required=True)
    p.add_argument("--recipe", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default="data/prepared")
    p.add_argument("--out-dir", default=None, help="default results/runs/{model}-{recipe}-s{seed}")
    p.add_argument("--ckpt-dir", default="results/checkpoints")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")


def run(args, cfg: dict) -> None:
    rc = run_config(cfg, args.model, args.recipe, args.seed)
    out_dir = args.out_dir or f"results/runs/{rc['run']}"
    s = train_run(rc, args.data_dir, out_dir, args.ckpt_dir, args.threads)
    print(
        f"{rc['run']}: best test acc {s['best_test_acc']:.2f}% at epoch {s['best_epoch']}, "
        f"final {s['final_test_acc']:.2f}%, {s['train_seconds']:.0f}s -> {out_dir}"
    )
