"""Snakemake and DVC keep out of each other's way in one project.

Snakemake's main process holds ``.snakemake/cnnvit.lock`` for its whole run (taken in the
Snakefile's ``onstart``); DVC holds ``.dvc/tmp/lock`` while it reproduces. So:

- ``snakemake`` refuses to start while DVC holds its lock;
- a ``cnnvit`` command that DVC started (``DVC_STAGE`` is in its environment) refuses while
  Snakemake holds its lock.

Both refusals are one line, and DVC's outputs are ``persist: true`` (DVC does not delete them
before running a stage), so a refused stage has removed nothing: not the prepared data, not a
verified archive. Both locks are ``flock``s, so a killed holder frees them.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from cnnvit.errors import CnnvitError

SNAKEMAKE_LOCK = ".snakemake/cnnvit.lock"
DVC_LOCK = ".dvc/tmp/lock"  # DVC's repo lock (zc.lockfile: an exclusive flock, the holder's pid inside)

_held_by_us: list[int] = []  # the Snakemake lock's descriptor, kept open for the life of the process


def holder(path: str | Path) -> str | None:
    """Who holds the flock on ``path`` (the pid written in it), or None if nobody does."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        text = os.pread(fd, 64, 0).decode(errors="replace").split()
        return text[0] if text else "unknown"
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def hold_for_snakemake(root: str | Path = ".") -> None:
    """In Snakemake's main process: refuse if DVC is running here, else hold the project's lock."""
    root = Path(root)
    if pid := holder(root / DVC_LOCK):
        raise CnnvitError(
            f"dvc is running in this project (pid {pid}, lock {DVC_LOCK}): wait for it to finish (or stop it), "
            "then run snakemake again"
        )
    path = root / SNAKEMAKE_LOCK
    from cnnvit.files import open_lock_file

    fd = open_lock_file(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise CnnvitError(f"another snakemake holds this project ({path}): wait for it to finish") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _held_by_us.append(fd)


def refuse_if_the_other_tool_runs() -> None:
    """In a cnnvit command: refuse to run a DVC stage while Snakemake holds the project."""
    if "DVC_STAGE" not in os.environ:
        return
    root = Path(os.environ.get("DVC_ROOT", "."))
    if pid := holder(root / SNAKEMAKE_LOCK):
        raise CnnvitError(
            f"snakemake is running in this project (pid {pid}): wait for it to finish (or stop it), then run "
            "`dvc repro` again; nothing was changed"
        )
