"""Atomic file writes, careful reads, and the provenance block every result carries.

A stage writes to a temporary file beside the target and renames it into place, so a crash, a
full disk or a bad input never leaves a partial file where the DAG expects a finished one, and
never replaces a good file with a broken one. A write that fails for lack of space (or any other
OS error) ends in one :class:`CnnvitError` line naming the file. Temporary names carry the
writing process's pid and host: what a killed process left (SIGKILL, a power cut) is swept by
the next write of the same output. An output folder reached through a link is replaced where
the link points. :func:`read_json` reads what a stage wrote, in one line when it cannot; tables
are read by :mod:`cnnvit.tables`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

from cnnvit.errors import CnnvitError, first_line

PACKAGES = ("cnnvit", "torch", "torchvision", "timm", "numpy", "pandas", "seaborn", "snakemake", "dvc")


def write_failure(path: Path, exc: BaseException) -> CnnvitError:
    """One line for a write that failed: the cause in the user's terms where it is one they can
    fix (a full disk, a file where a folder belongs or the reverse, no permission)."""
    path = Path(path)
    code = exc.errno if isinstance(exc, OSError) else None
    if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        why = "no space left on the device" if code != errno.EFBIG else "the file size limit was hit"
        return CnnvitError(f"cannot write {path}: {why}: free some space (or write elsewhere) and run again")
    if code in (errno.ENOTDIR, errno.EEXIST) and (blocker := not_a_folder(path.parent)):
        why = f"{blocker} is a file, where a folder belongs"
        return CnnvitError(f"cannot write {path}: {why}: move it away and run again")
    if code == errno.EISDIR or (code is not None and path.is_dir() and not path.is_symlink()):
        return CnnvitError(f"cannot write {path}: it is a folder, where a file belongs: move it away and run again")
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        where = getattr(exc, "filename", None) or path
        return CnnvitError(f"cannot write {path}: no permission to write {where}: make it writable and run again")
    return CnnvitError(f"cannot write {path} ({type(exc).__name__}: {exc}): check the directory and run again")


def open_lock_file(path: Path) -> int:
    """A descriptor of the lock file ``path`` (made, and its folder, if missing), for ``flock``; what
    stands in the way (a file where its folder belongs, a folder where it does) is one line."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise write_failure(path, exc) from None


def not_a_folder(path: Path) -> Path | None:
    """The first of ``path`` and the folders above it, from the top, that exists but is not a folder."""
    for p in [*reversed(path.parents), path]:
        if os.path.lexists(p) and not p.is_dir():
            return p
    return None


def through_links(path: Path) -> Path:
    """Where the folder ``path`` really is: an output folder reached through a link (results/tables
    on another disk, a run's folder) is replaced where the link points, and the link is kept."""
    return Path(os.path.realpath(path)) if any(p.is_symlink() for p in [path, *path.parents]) else path


_HOST = re.sub(r"[^A-Za-z0-9_-]", "-", platform.node()) or "host"


def _owner_tag() -> str:
    """Names a temporary file or folder by the process that made it, so that one left by a killed
    process (SIGKILL, a power cut) can be told from one still being written, and swept."""
    return f"{os.getpid()}@{_HOST}"


def _gone(tag: str) -> bool:
    pid, _, host = tag.partition("@")
    if host != _HOST or not pid.isdigit():
        return False  # another machine's (a shared disk): it cannot be checked from here
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, another user's
    return False


def sweep_stale(path: Path) -> list[Path]:
    """Remove what an interrupted write of ``path`` left beside it (temporary files and folders,
    the previous version kept during the swap) when the process that made them is gone; a
    previous version is put back when ``path`` itself went missing in the swap."""
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.(\d+@[^.]+)\.(?:old|[A-Za-z0-9_]+(?:\.tmp)?)$")
    swept: list[Path] = []
    try:
        siblings = list(path.parent.iterdir())
    except OSError:
        return swept
    for p in siblings:
        m = pattern.match(p.name)
        if not m or not _gone(m.group(1)):
            continue
        if p.name.endswith(".old") and not os.path.lexists(path):
            os.replace(p, path)  # killed between the two renames: the previous version is the output
            continue
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)
        swept.append(p)
    return swept


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside ``path``; rename it onto ``path`` only if the block succeeds. A
    link at ``path`` itself is replaced by the file, not written through: DVC links outputs into
    its cache (cache.type symlink or hardlink), which writing through would corrupt."""
    shown = path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        sweep_stale(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_owner_tag()}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise write_failure(shown, exc) from None
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp's 0600 would leak into the final file
    try:
        try:
            yield tmp_path
        except OSError as exc:
            raise write_failure(shown, exc) from None
        try:
            os.replace(tmp_path, path)
        except OSError as exc:  # a folder in the file's place: refused, never removed
            raise write_failure(shown, exc) from None
    finally:
        tmp_path.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


CARRIED = (".gitignore",)  # what a tool keeps in an output folder: kept when the folder is replaced
# What a tool leaves in an output folder for itself: neither refused nor carried into the new folder.
# Snakemake dates a directory() output by this file; the next Snakemake run writes it again.
TOOL_MARKERS = (".snakemake_timestamp",)


@contextlib.contextmanager
def atomic_dir(path: str | Path, owned: Callable[[str], bool] | None = None) -> Iterator[Path]:
    """Yield a temp directory beside ``path``; it replaces ``path`` (whole) only on success, so
    the stage's outputs appear together or not at all. ``owned(name)`` says which entries of an
    existing ``path`` the stage wrote: anything else there is refused, never deleted, but for
    the ``.gitignore`` DVC writes beside its outputs, which is carried over."""
    shown = Path(path)
    path = through_links(shown)
    if os.path.lexists(path) and not path.is_dir():  # never ours: refused, not moved aside and swept
        raise CnnvitError(f"cannot write {shown}: it is a file, where a folder belongs: move it away and run again")
    if owned is not None and path.is_dir():
        foreign = sorted(p.name for p in path.iterdir() if not owned(p.name) and p.name not in CARRIED + TOOL_MARKERS)
        if foreign:
            raise CnnvitError(
                f"{shown} holds files this stage did not write ({', '.join(foreign[:3])}"
                f"{', ...' if len(foreign) > 3 else ''}): move them, or give an empty or new directory"
            )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        sweep_stale(path)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{_owner_tag()}.", dir=path.parent))
    except OSError as exc:
        raise write_failure(shown, exc) from None
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's 0700 would leak into the final directory
    try:
        try:
            yield tmp
        except OSError as exc:
            raise write_failure(shown, exc) from None
        old = path.with_name(f".{path.name}.{_owner_tag()}.old")
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
        raise CnnvitError(f"{path} is corrupt ({first_line(exc, 100)}): {fix}") from None
    except RecursionError:
        raise CnnvitError(f"{path} is nested too deeply to be ours (a damaged or foreign file): {fix}") from None
    except OSError as exc:  # a folder in its place, no permission
        raise CnnvitError(f"cannot read {path} ({exc.strerror or type(exc).__name__}): {fix}") from None


_HASHED: dict[tuple, str] = {}


def file_sha256(path: str | Path) -> str:
    """A file's sha256, hashed once per process for each (path, size, modification time)."""
    import hashlib

    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
    if key not in _HASHED:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        _HASHED[key] = h.hexdigest()
    return _HASHED[key]


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
    """The CPU a result was computed on: its model, the instruction set torch's kernels use on it
    (where torch is loaded) and its cores. Runs of the same code and seed agree bit for bit on one
    CPU, not necessarily across CPUs (the laptop benchmark's ResNet and ViT means moved by 0.13 and
    0.18 pp between two VMs with the same code, data and packages), so the CPU is part of a result's
    provenance."""
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:  # not Linux
        pass
    torch = sys.modules.get("torch")
    isa = getattr(getattr(getattr(torch, "backends", None), "cpu", None), "get_cpu_capability", lambda: "")()
    what = ", ".join(x for x in (model or platform.processor() or platform.machine(), isa) if x)
    return f"cpu: {what} x{os.cpu_count()}"


def provenance(params: Any, device: str, cuda: dict[str, Any] | None = None) -> dict[str, Any]:
    """``device`` is the name of the device the result was computed on (see ``cnnvit.training.device``);
    ``cuda`` (``cnnvit.training.device.cuda_facts()``, from the stages that use a device) adds the
    CUDA version torch was built for, the NVIDIA driver and the GPU the result was computed on."""
    out = {
        "params": params,
        "versions": package_versions(),
        "device": device,
        "host": platform.node(),
        "git_commit": git_commit(),
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    if cuda is not None:
        gpu = device.removeprefix("cuda: ") if device.startswith("cuda: ") else None
        out["cuda"] = {"torch_cuda": cuda.get("torch_cuda"), "driver": cuda.get("driver"), "gpu": gpu,
                       "gpus_on_machine": cuda.get("gpus", [])}  # fmt: skip
    return out


# ----------------------------------------------------------------------------- made with which params


def flat(d: Any, prefix: str = "") -> dict[str, Any]:
    """A nested mapping as dotted keys: {"a": {"b": 1}} -> {"a.b": 1}."""
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def params_differ(made_with: Any, now: Any, first: tuple[str, ...] = (), ignore: tuple[str, ...] = ()) -> list[str]:
    """``key: recorded -> now`` for every dotted key on which two params trees differ, the keys of
    ``first`` leading; keys under a prefix of ``ignore`` are left out."""
    got, want = flat(json.loads(json.dumps(made_with))), flat(json.loads(json.dumps(now)))
    keys = [k for k in set(got) | set(want) if not any(k == i or k.startswith(f"{i}.") for i in ignore)]
    keys.sort(key=lambda k: (next((n for n, f in enumerate(first) if k == f or k.endswith(f".{f}")), len(first)), k))
    return [f"{k}: {got.get(k)!r} -> {want.get(k)!r}" for k in keys if got.get(k) != want.get(k)]


def made_with_hint(made_with: Any) -> str:
    """How to use outputs made under another preset: name it, when it is not the current one."""
    preset = made_with.get("preset") if isinstance(made_with, dict) else None
    return f" (or pass the params they were made with, e.g. --set preset={preset})" if preset else ""


# What tables made under other settings may differ in: how the jobs ran, not what they computed.
HOW_IT_RAN = ("runtime.device", "runtime.threads", "runtime.compile", "runtime.eval_batch_size",
              "runtime.runs_per_gpu", "runtime.group_seeds", "runtime.checkpoint_every_s", "data.url")  # fmt: skip


def check_tables_made_with(tables_dir: Path, params_raw: dict, stage: str) -> dict:
    """The provenance of ``cnnvit collect``'s tables, refused in one line naming the first keys
    that differ when they were collected under other params than ``params_raw``."""
    path = Path(tables_dir) / "provenance.json"
    prov = read_json(path, "run `cnnvit collect` again")
    made = prov.get("params") if isinstance(prov, dict) else None
    if not isinstance(made, dict):
        raise CnnvitError(f"{path} records no params: run `cnnvit collect` again")
    diff = params_differ(made, params_raw, first=("preset", "runs", "epochs"), ignore=HOW_IT_RAN)
    if diff:
        more = f" and {len(diff) - 3} more" if len(diff) > 3 else ""
        hint = made_with_hint(made) if made.get("preset") != params_raw.get("preset") else ""
        raise CnnvitError(
            f"{Path(tables_dir)} was collected under other params than `cnnvit {stage}` was given "
            f"({'; '.join(diff[:3])}{more}): run `cnnvit collect` again{hint}"
        )
    return prov
