"""Several runs in one command: which runs, and how many at once.

    cnnvit train --model vit --recipe paper --seeds 0 1 2   # one Snakemake job: these seeds, in turn
    cnnvit train --all-runs --workers auto                   # DVC's one stage: every run, N at once

A per-run stage (train, evaluate) takes its runs from :func:`add_run_args`'s options and does
them with :func:`run_each`: one after another in this process (``--workers 1``), or in
``--workers`` worker processes forked from this one once it has imported torch and timm, so
that the start-up (~5 s of imports a process on a CPU; CUDA and compilation on a GPU) is paid
once per command, not once per run. ``auto`` is the slots of this machine: its cores over
``runtime.threads`` on a CPU, its GPUs times ``runtime.runs_per_gpu`` on CUDA. Each worker has
its own pipe (no shared queue or lock): a signal stops every worker well within SLURM's 30 s
grace (2-3 s measured; SIGKILL after :data:`STOP_GRACE_S`).

A run that fails with a :class:`~cnnvit.errors.CnnvitError` does not stop the others; the
command then fails with one line naming the failed runs and the first one's cause, and every
run that finished has its outputs.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing import connection as mp_connection
from pathlib import Path
from typing import Any, cast

from cnnvit.arguments import seed
from cnnvit.config.types import Params, RunSpec, group_name
from cnnvit.errors import CnnvitError, Interrupted


def add_run_args(p) -> None:
    p.add_argument("--model", help="the model (with --recipe: one group of runs)")
    p.add_argument("--recipe")
    p.add_argument("--seeds", "--seed", dest="seeds", type=seed, nargs="+", default=None, help="default: runs.seeds")
    p.add_argument("--fraction", type=float, default=1.0, help="of the preset's training set (default 1)")
    p.add_argument("--all-runs", action="store_true", help="every run params.yaml lists (runs.*)")
    p.add_argument(
        "--workers",
        default="1",
        help="runs done at once, each in a worker process: a number, or auto (this machine's slots)",
    )


def selected_runs(args, params: Params) -> list[RunSpec]:
    """The runs the options name: every run of params (--all-runs), or --model x --recipe x
    --fraction x --seeds. Any fraction in (0, 1] is a valid run, listed in runs.train_fractions
    or not: the list only says which runs the DAG holds."""
    if args.all_runs:
        if args.model or args.recipe:
            raise CnnvitError("--all-runs takes no --model or --recipe: give one or the other")
        return params.all_runs()
    if not (args.model and args.recipe):
        raise CnnvitError("give --model and --recipe (and --seeds), or --all-runs")
    if not 0 < args.fraction <= 1:
        raise CnnvitError(f"--fraction {args.fraction:.10g} is not in (0, 1]: give a fraction of the training set")
    seeds = args.seeds if args.seeds is not None else params.runs.seeds
    if twice := sorted({s for s in seeds if list(seeds).count(s) > 1}):
        raise CnnvitError(f"--seeds lists {', '.join(map(str, twice))} more than once: give each seed once")
    return [RunSpec(args.model, args.recipe, s, args.fraction) for s in seeds]


def checked_runs(args, params: Params) -> list[RunSpec]:
    """:func:`selected_runs`, each resolved once, so that an unknown model or recipe fails before
    any run starts; and not at all where the preset is sized for a GPU this machine lacks."""
    from cnnvit.config.runs import run_config
    from cnnvit.training.hardware import check_fits

    check_fits(params, "dvc" if args.all_runs else "snakemake")
    runs = selected_runs(args, params)
    for run in runs:
        run_config(params, run)
    if data_dir := getattr(args, "data_dir", None):
        check_fractions_with_data(params, runs, Path(data_dir))
    return runs


def check_fractions_with_data(params: Params, runs: list[RunSpec], data_dir: Path) -> None:
    """The fractions against the prepared training split, where params alone could not tell its
    size (``data.expect_train: 0``): each trains at least one image a class, no two the same images.
    Missing or damaged data is left to the stage, which names it."""
    from cnnvit.cifar import subset_size
    from cnnvit.config.load import check_fractions
    from cnnvit.files import read_json

    try:
        counts = read_json(data_dir / "stats.json").get("counts", {})
        pool = subset_size(int(counts["train"]), params.active.train_size)
    except (CnnvitError, AttributeError, KeyError, TypeError, ValueError):
        return
    asked = sorted({r.fraction for r in runs} - set(params.runs.train_fractions))
    what = "runs.train_fractions" + (f" with --fraction {asked[0]:.10g}" if asked else "")
    check_fractions([*params.runs.train_fractions, *asked], pool, f"the data in {data_dir}", what)


def worker_count(setting: str, params: Params, runs: int) -> int:
    """``--workers``: a number of at least 1, or ``auto``; never more than there are runs."""
    if setting == "auto":
        from cnnvit.training.device import slots

        n = slots(params.runtime)
    else:
        try:
            n = int(setting)
        except ValueError:
            n = 0
        if n < 1:
            raise CnnvitError(f"--workers {setting!r} is not a whole number of at least 1 or auto: give e.g. 2")
    return max(1, min(n, runs))


def _context():
    # fork shares the parent's imports; CUDA is never initialised before it (each worker claims
    # its own GPU slot), and torch's thread pools are started in the workers, not here.
    return multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")


_busy = False  # a worker is doing a run (and a signal must unwind it) or waiting for one
_stopping = False  # a signal has been taken: the unwinding must not be cut short by another
STOP_GRACE_S = 10.0  # how long stopped workers may unwind before they are killed (SLURM waits 30 s)


def _worker_signal(signum, frame):
    global _stopping
    if _stopping:
        return  # the process group's signal and the parent's forwarded one: unwind once
    _stopping = True
    if _busy:
        raise Interrupted(signal.Signals(signum).name)  # unwinds: no half-written outputs are left
    os._exit(128 + signum)  # an idle worker has nothing to clean up, and no traceback to print


def _init_worker() -> None:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _worker_signal)


class _Stopped(Exception):
    """A worker's run was interrupted: the parent stops the command."""


class _Crashed(Exception):
    """A worker's run raised what is not a CnnvitError (a bug): the parent raises it with its traceback."""


def _guarded(call: tuple[Callable[[RunSpec], Any], RunSpec]) -> tuple[RunSpec, Any, str | None]:
    fn, run = call
    try:
        return run, fn(run), None
    except CnnvitError as exc:
        return run, None, str(exc)


def _in_worker(call: tuple[Callable[[RunSpec], Any], RunSpec]) -> tuple[RunSpec, Any, str | None]:
    global _busy
    _busy = True
    try:
        return _guarded(call)
    except KeyboardInterrupt as exc:  # its run has unwound; the command is being stopped
        raise _Stopped(str(exc)) from None
    finally:
        _busy = False


def _worker_loop(conn) -> None:
    """A worker: runs sent one at a time over its own pipe, each answer sent back, until None.
    Nothing is shared with the other workers (no queue, no lock), so a worker killed at any
    moment can stop nobody else."""
    _init_worker()
    while (task := conn.recv()) is not None:
        i, call = task
        try:
            answer: Any = _in_worker(call)
        except _Stopped as exc:
            answer = exc
        except BaseException:
            answer = _Crashed(traceback.format_exc())
        conn.send((i, answer))
        if isinstance(answer, _Stopped):
            return


def _stop(procs: list) -> None:
    """Stop every worker: a signal (each busy one unwinds its run, each idle one exits), then,
    after STOP_GRACE_S, SIGKILL for any still there."""
    for p in procs:
        if p.exitcode is None:
            with contextlib.suppress(OSError):
                os.kill(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    while (alive := [p for p in procs if p.exitcode is None]) and time.monotonic() < deadline:
        for gone in mp_connection.wait([p.sentinel for p in alive], timeout=deadline - time.monotonic()):
            # its sentinel closes as it exits, before it can be reaped: wait for that (no user code
            # runs any more), rather than spin on the sentinel while the kernel frees its memory
            next(p for p in alive if p.sentinel == gone).join()
    for p in procs:
        if p.exitcode is None:
            p.kill()
        p.join()


def _in_workers(calls: list, workers: int) -> list:
    """Each call in a worker process, ``workers`` at once, each worker given the next call as it
    finishes one; the answers in the calls' order."""
    ctx = _context()
    todo = list(enumerate(calls))[::-1]
    done: list = [None] * len(calls)
    procs, busy = [], {}  # the workers; a busy worker's pipe -> its process
    try:
        for _ in range(min(workers, len(calls))):
            ours, theirs = ctx.Pipe()
            p = ctx.Process(target=_worker_loop, args=(theirs,), daemon=True)
            p.start()
            theirs.close()
            procs.append(p)
            busy[ours] = p
            ours.send(todo.pop())
        while busy:
            for ready in mp_connection.wait(list(busy)):
                conn = cast(mp_connection.Connection, ready)
                try:
                    i, answer = conn.recv()
                except EOFError:  # the worker died without an answer: killed (by a signal, or for memory)
                    busy[conn].join()
                    raise Interrupted(f"a worker stopped (exit {busy[conn].exitcode})") from None
                if isinstance(answer, _Stopped):
                    raise Interrupted(str(answer))
                if isinstance(answer, _Crashed):
                    raise RuntimeError(f"a run failed in a worker:\n{answer}")
                done[i] = answer
                if todo:
                    conn.send(todo.pop())
                else:
                    conn.send(None)  # nothing more: it exits
                    busy.pop(conn).join()
    except BaseException:
        _stop(procs)  # stopped or failed: each busy worker unwinds its run, the idle ones exit
        raise
    for p in procs:
        p.join()
    return done


def run_each(fn: Callable[[RunSpec], Any], runs: Sequence[RunSpec], workers: int = 1) -> list[Any]:
    """``fn(run)`` for every run, ``workers`` at a time; the results in the runs' order. ``fn``
    must be a module-level function (or a partial of one) when the platform cannot fork. A
    signal stops every worker within :data:`STOP_GRACE_S` and ends the command as interrupted."""
    calls = [(fn, run) for run in runs]
    # in turn, an interrupt stops the command, not just a run
    done = [_guarded(call) for call in calls] if workers <= 1 else _in_workers(calls, workers)
    failed = [(run, why) for run, _, why in done if why is not None]
    if len(failed) == 1 and len(runs) == 1:
        raise CnnvitError(failed[0][1])
    if failed:
        (run, why), others = failed[0], ", ".join(r.name for r, _ in failed[1:])
        also = f" ({others} failed too)" if others else ""
        raise CnnvitError(f"{len(failed)} of {len(runs)} runs failed{also}; {run.name}: {why}")
    return [result for _, result, _ in done]


@dataclass(frozen=True)
class Batch:
    """The runs one job of a per-run stage does, and the options that name them in its command."""

    name: str
    runs: tuple[RunSpec, ...]
    args: str


def group_batch(runs: list[RunSpec], grouped: bool = True) -> Batch:
    """Runs that differ only in their seed, as one job named by their group (or, not
    ``grouped``, one run named by itself): ``--model M --recipe R --seeds ...``."""
    first = runs[0]
    fraction = f" --fraction {first.fraction}" if first.fraction < 1 else ""
    seeds = " ".join(str(r.seed) for r in runs)
    name = group_name(first.model, first.recipe, first.fraction) if grouped else first.name
    return Batch(name, tuple(runs), f"--model {first.model} --recipe {first.recipe} --seeds {seeds}{fraction}")


def grouped(params: Params, lanes: int) -> bool:
    """Whether a Snakemake job trains every seed of a model x recipe x fraction
    (``runtime.group_seeds``). ``auto`` groups when the groups fill each of the ``lanes`` that run
    at once at least twice: a group pays the start-up (imports, CUDA, compiling) once for all its
    seeds, but a few long groups leave lanes idle at the end (the laptop preset's 3 groups of 5
    seeds on 2 cores: forecast 1.4 h, against 1.2 h as 15 jobs)."""
    setting = params.runtime.group_seeds
    if setting != "auto":
        return bool(setting)
    groups = {(run.model, run.recipe, run.fraction) for run in params.all_runs()}
    return len(groups) >= 2 * max(1, lanes)


def batches(params: Params, lanes: int = 1) -> list[Batch]:
    """Snakemake's jobs of a per-run stage when ``lanes`` training jobs run at once: the seeds of
    each model x recipe x fraction together (:func:`grouped`), or one run each."""
    if not grouped(params, lanes):
        return [group_batch([run], grouped=False) for run in params.all_runs()]
    groups: dict[tuple, list[RunSpec]] = {}
    for run in params.all_runs():
        groups.setdefault((run.model, run.recipe, run.fraction), []).append(run)
    return [group_batch(runs) for runs in groups.values()]
