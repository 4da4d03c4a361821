"""Atomic file writes, careful reads, and the provenance block every result carries.

A stage writes to a temporary file beside the target and renames it into place, so a crash, a
full disk or a bad input never leaves a partial file where the DAG expects a finished one, and
never replaces a good file with a broken one. A write that fails for lack of space (or any other
OS error) ends in one :class:`CnnvitError` line naming the file.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import json
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

from cnnvit.errors import CnnvitError

PACKAGES = ("cnnvit", "torch", "torchvision", "timm", "numpy", "pandas", "seaborn", "snakemake", "dvc")


def write_failure(path: Path, exc: BaseException) -> CnnvitError:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        why = "no space left on the device" if exc.errno != errno.EFBIG else "the file size limit was hit"
        return CnnvitError(f"cannot write {path}: {why}: free some space (or write elsewhere) and run again")
    return CnnvitError(f"cannot write {path} ({type(exc).__name__}: {exc}): check the directory and run again")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise write_failure(path, exc) from None
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp's 0600 would leak into the final file
    try:
        try:
            yield tmp_path
        except OSError as exc:
            raise write_failure(path, exc) from None
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


CARRIED = (".gitignore",)  # what a tool keeps in an output folder: kept when the folder is replaced


@contextlib.contextmanager
def atomic_dir(path: str | Path, owned: Callable[[str], bool] | None = None) -> Iterator[Path]:
    """Yield a temp directory beside ``path``; it replaces ``path`` (whole) only on success, so
    the stage's outputs appear together or not at all. ``owned(name)`` says which entries of an
    existing ``path`` the stage wrote: anything else there is refused, never deleted, but for
    the ``.gitignore`` DVC writes beside its outputs, which is carried over."""
    path = Path(path)
    if owned is not None and path.is_dir():
        foreign = sorted(p.name for p in path.iterdir() if not owned(p.name) and p.name not in CARRIED)
        if foreign:
            raise CnnvitError(
                f"{path} holds files this stage did not write ({', '.join(foreign[:3])}"
                f"{', ...' if len(foreign) > 3 else ''}): move them, or give an empty or new directory"
            )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    except OSError as exc:
        raise write_failure(path, exc) from None
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's 0700 would leak into the final directory
    try:
        try:
            yield tmp
        except OSError as exc:
            raise write_failure(path, exc) from None
        old = path.with_name(f".{path.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        for name in CARRIED:
            if (path / name).is_file() and not (tmp / name).exists():
                shutil.copy2(path / name, tmp / name)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def read_json(path: str | Path, fix: str = "delete it and run the stage that writes it again") -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CnnvitError(f"{path} not found: {fix}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CnnvitError(f"{path} is corrupt ({exc}): {fix}") from None


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_commit(cwd: str | Path = ".") -> str:
    """HEAD's hash, with ``-dirty`` when tracked files differ; ``unknown`` outside a repo."""
    try:
        run = lambda *a: subprocess.run(a, cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()  # noqa: E731
        head = run("git", "rev-parse", "HEAD")
        dirty = run("git", "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head}-dirty" if dirty else head


def cpu_name() -> str:
    return f"cpu: {platform.processor() or platform.machine()} x{os.cpu_count()}"


def provenance(params: Any, device: str) -> dict[str, Any]:
    """``device`` is the name of the device the result was computed on (see ``cnnvit.training.device``)."""
    return {
        "params": params,
        "versions": package_versions(),
        "device": device,
        "host": platform.node(),
        "git_commit": git_commit(),
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
