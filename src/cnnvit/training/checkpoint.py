"""Checkpoints of one run: what makes one reusable, reading one safely, and the run's lock.

A checkpoint is reused (to resume, or to re-emit a finished run) only when its identity matches:
the run config without runtime-only settings, the prepared data, the code that sets its numbers
(:mod:`cnnvit.code_identity`) and the torch and timm versions. Otherwise the run
starts fresh and says why. It is read with ``torch.load(weights_only=True)``: a file that does not load that way (a
pickle that would run code, a torn write, anything that is not our dict) is moved aside as
``<name>.rejected-<time>`` for inspection, named, and never executed. The device, thread count
and compile flag are recorded; a resume under other ones warns, since on a CPU the numbers of
the remaining epochs depend on them.

    with run_lock(ckpt_dir, name):          # a second process for the same run stops at once
        ckpt = load(path, identity)
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
import pickle
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from cnnvit.code_identity import digests, training_modules
from cnnvit.errors import CnnvitError, first_line, refused_pickle
from cnnvit.files import atomic_path, open_lock_file

RUNTIME_KEYS = ("device", "threads", "compile")  # recorded; a change warns but keeps the checkpoint


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def identity(config: dict, data_id: dict, arch_module: str) -> dict:
    """What makes a run's numbers: its config, its prepared data, the code that sets numbers for its
    arch (:mod:`cnnvit.code_identity`: comments, docstrings and messages do not count) and the
    torch and timm versions."""
    import timm

    return {
        "config": digest(config),
        "settings": json.loads(json.dumps(flat(config), default=str)),  # to name what changed
        "data": digest(data_id),
        "code": digests(training_modules(arch_module)),
        "versions": {"torch": str(torch.__version__), "timm": str(timm.__version__)},  # not TorchVersion objects
    }


def changed_settings(saved: dict, current: dict) -> list[str]:
    old, new = saved.get("settings") or {}, current["settings"]
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


def mismatch(saved: dict, current: dict) -> str | None:
    """Why a checkpoint with identity ``saved`` cannot serve a run with ``current``; None if it can."""
    if saved.get("config") != current["config"]:
        changed = changed_settings(saved, current)
        more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
        return (
            f"was made with other params ({'; '.join(changed[:3])}{more})" if changed else "was made with other params"
        )
    if saved.get("data") != current["data"]:
        return "was made from other prepared data"
    old_code = saved.get("code") or {}
    changed = sorted(f for f, h in current["code"].items() if old_code.get(f) != h)
    if changed:
        return f"was trained by other code ({', '.join(changed)} changed)"
    if saved.get("versions") != current["versions"]:
        return f"was trained with other libraries ({saved.get('versions')} -> {current['versions']})"
    return None


def extends(saved: dict, current: dict) -> bool:
    """True when ``current`` only asks for more epochs of a run whose LR does not depend on how many
    epochs there are (a constant schedule): its first epochs are exactly those ``saved`` trained."""
    old, new = saved.get("settings") or {}, current["settings"]
    if saved.get("data") != current["data"] or saved.get("code") != current["code"]:
        return False
    if saved.get("versions") != current["versions"] or {k for k in set(old) | set(new) if old.get(k) != new.get(k)} != {
        "epochs"
    }:
        return False
    same_evaluations = new.get("run.fraction", 1.0) == 1.0 or min(old["epochs"], new["epochs"]) > 1
    return new["epochs"] > old["epochs"] and new.get("recipe.schedule") == "constant" and same_evaluations


def save(path: Path, ckpt: dict) -> None:
    with atomic_path(path) as tmp:
        try:
            torch.save(ckpt, tmp)
        except RuntimeError as exc:  # torch reports a short write (a full disk, a quota) as a RuntimeError
            free = shutil.disk_usage(path.parent).free / 2**20
            raise CnnvitError(
                f"cannot write checkpoint {path}: the write stopped short ({first_line(exc, 80)}); is the "
                f"disk full? {free:,.0f} MB free there: free some space (or pass another --ckpt-dir) and run again"
            ) from None


def set_aside(path: Path, why: str) -> Path:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
    aside = path.with_name(f"{path.name}.rejected-{stamp}")
    os.replace(path, aside)
    print(f"checkpoint {path} {why}; moved it to {aside} (nothing in it was run) and starting fresh", flush=True)
    return aside


def kept_name(path: Path, ident: dict) -> Path:
    """Where a checkpoint made under another identity is kept: beside the run's, named by it."""
    return path.with_name(f"{path.stem}@{digest(ident)}{path.suffix}")


def _read(path: Path) -> dict | None:
    """The checkpoint at ``path`` if it is one (else set aside, and None)."""
    try:
        with warnings.catch_warnings():  # torch warns of the pickle protocol; the error line says it all
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        set_aside(path, f"holds more than tensors and plain data ({refused_pickle(exc)}, refused by weights_only)")
        return None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        set_aside(path, f"is unreadable ({type(exc).__name__}: {first_line(exc)})")
        return None
    if not isinstance(ckpt, dict) or not {"identity", "epoch", "rows", "state"} <= set(ckpt):
        set_aside(path, f"is not a cnnvit checkpoint (a {type(ckpt).__name__})")
        return None
    if "kept" not in ckpt:
        set_aside(path, "was written by an older cnnvit (before runs were selected on a validation split)")
        return None
    return ckpt


def load(path: Path, current: dict, runtime: dict) -> dict | None:
    """The checkpoint for ``current`` identity: the one at ``path``, or one kept earlier for exactly
    these params, data and code; None to start fresh (and it says why). A checkpoint made under
    another identity is never overwritten: it is kept beside, named by its identity, so that going
    back to those params finds it again. A finished run asked for more epochs of a constant LR
    continues from where it stopped (``ckpt["extended"]``)."""
    ckpt = _read(path) if path.exists() else None
    if ckpt is not None and (why := mismatch(ckpt["identity"], current)):
        if extends(ckpt["identity"], current):
            print(
                f"checkpoint {path} {why}: a constant LR does not depend on the number of epochs, so the run "
                f"continues after epoch {ckpt['epoch']} (its first epochs are exactly those it trained)",
                flush=True,
            )
            return ckpt | {"summary": None, "extended": True}
        kept = kept_name(path, ckpt["identity"])
        os.replace(path, kept)
        print(f"checkpoint {path} {why}; kept it as {kept} and starting fresh", flush=True)
        ckpt = None
    if ckpt is None:
        earlier = kept_name(path, current)
        if earlier.exists() and (found := _read(earlier)) is not None and not mismatch(found["identity"], current):
            os.replace(earlier, path)
            print(f"checkpoint {earlier} was kept for exactly these params, data and code: using it", flush=True)
            ckpt = found
    if ckpt is None:
        return None
    old = ckpt.get("runtime") or {}
    changed = [f"{k} {old.get(k)} -> {runtime[k]}" for k in RUNTIME_KEYS if old.get(k) != runtime[k]]
    if changed and ckpt.get("summary") is None:
        print(
            f"warning: resuming {path} under another runtime ({'; '.join(changed)}): the remaining "
            "epochs' numbers will differ from an uninterrupted run",
            flush=True,
        )
    return ckpt


@contextlib.contextmanager
def run_lock(ckpt_dir: Path, name: str) -> Iterator[None]:
    """Hold ``<ckpt_dir>/<name>.lock`` while the run trains; a second holder is refused at once."""
    path = ckpt_dir / f"{name}.lock"
    fd = open_lock_file(path)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            raise CnnvitError(
                f"run {name} is already training (pid {holder}, lock {path}): wait for it to finish, or stop it "
                "and run this command again"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # drops the lock; the kernel does the same for a killed process
