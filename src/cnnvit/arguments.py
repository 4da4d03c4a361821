"""One guard for every command-line argument that names a path, and one argparse type for every seed.

    check_paths(args)          # after parsing: each path argument, by its role, or one error line
    p.add_argument("--seeds", type=seed, nargs="+")

A path argument has a role (:data:`ROLES`, by the argument's name, per command where it differs):
an input file or folder is checked for its kind (a folder where a file is read, a file where a
folder is) and that it can be read; an output file or folder for its kind, for a parent that is a
file, and for a place it can be written (permissions, a read-only file system). A missing input
is left to the stage, whose line names the stage that makes it. Every argument of every command
has a role or is listed as not a path; a test holds that, so that a new path argument cannot miss
the guard.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from cnnvit.errors import CnnvitError

IN_FILE, IN_DIR, IN_ANY, OUT_FILE, OUT_DIR = "input file", "input folder", "input", "output file", "output folder"

# argument dest -> role; (command, dest) where a command uses the name otherwise
ROLES: dict[str | tuple[str, str], str] = {
    "params": IN_FILE,
    "template": IN_FILE,
    "corrupted": IN_FILE,
    "cost": IN_FILE,  # collect's --cost reads the cost table; the cost stage writes with --out
    "raw": IN_ANY,  # an archive, or a directory of images
    "data_dir": IN_DIR,
    "runs_dir": IN_DIR,
    "eval_dir": IN_DIR,
    "tables_dir": IN_DIR,
    "figures_dir": IN_DIR,
    ("train", "runs_dir"): OUT_DIR,
    "out": OUT_FILE,
    "out_dir": OUT_DIR,
    "ckpt_dir": OUT_DIR,
    "cache": OUT_DIR,
    "progress": OUT_DIR,  # plan: where the runs go, to keep the forecast beside them
}
NOT_PATHS = {
    "help", "command", "overrides", "model", "recipe", "seeds", "fraction", "all_runs", "workers", "threads",
    "check", "steps", "jobs", "slots",
}  # fmt: skip

SEED_MAX = 2**32 - 1  # numpy's legacy seeds and every generator the runs use take 0..2**32-1


def seed(text: str) -> int:
    """An argparse type for seeds: a whole number from 0 to 2**32 - 1, as runs.seeds allows."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"{value} is outside 0..{SEED_MAX:,}: give a seed in that range")
    return value


def role(command: str, dest: str) -> str | None:
    return ROLES.get((command, dest), ROLES.get(dest))


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _nearest_existing(path: Path) -> Path:
    for parent in [path, *path.parents]:
        if parent.exists():
            return parent
    return Path(".")


def check_path(flag: str, value: str, kind: str) -> None:
    """One argument's path, for its role; raises a one-line :class:`CnnvitError`."""
    if not value or "\0" in value:
        raise CnnvitError(f"{flag} {value!r}: not a path: give a file or folder name")
    path = Path(value).expanduser()
    try:
        exists, is_dir = path.exists(), path.is_dir()
    except OSError as exc:  # a name too long, a loop of links
        raise CnnvitError(f"{flag} {value}: {exc.strerror or exc}: give another path") from None
    if kind in (IN_FILE, IN_DIR, IN_ANY):
        if not exists:
            return  # the stage names what makes it
        if kind == IN_FILE and is_dir:
            raise CnnvitError(f"{flag} {value} is a folder, not a file: give the file")
        if kind == IN_DIR and not is_dir:
            raise CnnvitError(f"{flag} {value} is a file, not a folder: give the folder")
        if not os.access(path, os.R_OK | (os.X_OK if is_dir else 0)):
            raise CnnvitError(f"{flag} {value} cannot be read (permission denied): fix its permissions")
        return
    if exists and kind == OUT_FILE and is_dir:
        raise CnnvitError(f"{flag} {value} is a folder: give a file name to write")
    if exists and kind == OUT_DIR and not is_dir:
        raise CnnvitError(f"{flag} {value} is a file, not a folder: give a folder (or move the file)")
    real = Path(os.path.realpath(path))  # a linked output is written where the link points
    base = _nearest_existing(real.parent)  # where the output, or its temporary twin, is made
    if not base.is_dir():
        raise CnnvitError(f"{flag} {value} cannot be created: {base} is a file, not a folder: give another path")
    for target in [base, *([real] if exists and kind == OUT_DIR else [])]:
        if not os.access(target, os.W_OK | os.X_OK):
            why = "a read-only file system" if _read_only_fs(target) else "permission denied"
            raise CnnvitError(f"{flag} {value}: cannot write in {target} ({why}): give a folder you can write to")


def _read_only_fs(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def check_paths(command: str, args: argparse.Namespace) -> None:
    """Every path argument of ``args`` (parsed for ``command``), by its role."""
    for dest, value in vars(args).items():
        kind = role(command, dest)
        if kind is not None and value is not None:
            check_path(_flag(dest), str(value), kind)
