"""``cnnvit status``: which runs train and evaluate would (re)do, and why; the others are kept.

    cnnvit status [--set preset=quick]      # every run of params.yaml, for either tool

A training is done again when its checkpoint is missing, unfinished (it resumes), or made under
another identity (params, prepared data, the code that sets its numbers, library versions:
:mod:`cnnvit.training.checkpoint`), unless a checkpoint kept for exactly this identity is there; a
finished one is re-emitted from its checkpoint in about a second. An evaluation is done again when
its record does not name the run's current weights and settings
(:func:`cnnvit.stages.evaluate.evaluation_status`), and always after its run trains again. Both
tools run the same commands, which decide this the same way, so the list holds for Snakemake and
DVC alike: Snakemake may start more jobs (it also goes by file times), whose runs are then
re-emitted or kept. DVC's train and evaluate stages print their part of it before they start
(:func:`print_stage_status`, called by the CLI for ``--all-runs``).

Nothing is written, no GPU slot is claimed and no weights are loaded: a checkpoint is memory-mapped
for its identity alone. It runs in a child process, since the stage forks its workers next and
must not have started CUDA or torch's thread pools.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from cnnvit import paths
from cnnvit.config.types import Params, RunSpec
from cnnvit.errors import CnnvitError
from cnnvit.runfiles import SUMMARY_FILE, WEIGHTS_FILE

TRAIN, EVALUATE = "train", "evaluate"  # the two per-run stages this speaks of


def _device(setting: str):
    """The device a run would use, without claiming a slot of it."""
    import torch

    if setting != "cpu" and torch.cuda.is_available():
        return torch.device("cuda", 0)
    if setting in ("auto", "mps") and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _checkpoint(path: Path) -> dict | None:
    """A checkpoint's identity, epoch and summary, its tensors left on disk (None: there is none)."""
    import torch

    if not path.is_file():
        return None
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # unreadable: the training sets it aside and starts fresh
        return {"unreadable": True}
    return ckpt if isinstance(ckpt, dict) else {"unreadable": True}


def training_status(params: Params, run: RunSpec, data_dir: Path, ckpt_dir: Path) -> tuple[str | None, dict | None]:
    """Why ``run`` will be trained (or resumed), or None when its finished checkpoint is reused;
    and then the summary it re-emits."""
    from cnnvit.config.runs import run_config
    from cnnvit.training import checkpoint
    from cnnvit.training.device import resolve_precision
    from cnnvit.training.inputs import load_stats

    cfg = run_config(params, run)
    cfg = dataclasses.replace(cfg, precision=resolve_precision(cfg.runtime.precision, _device(cfg.runtime.device)))
    if not (data_dir / "stats.json").is_file():
        return "no prepared data yet", None
    ident = checkpoint.identity(cfg.identity(), load_stats(data_dir / "stats.json"), type(cfg.model).__module__)
    path = ckpt_dir / f"{cfg.name}.pt"
    saved = _checkpoint(path)
    kept = _checkpoint(checkpoint.kept_name(path, ident))
    if kept and not kept.get("unreadable") and not checkpoint.mismatch(kept["identity"], ident):
        saved = kept  # the training takes the one kept for exactly this identity
    if saved is None:
        return "not trained yet", None
    if saved.get("unreadable"):
        return "its checkpoint is unreadable", None
    if why := checkpoint.mismatch(saved["identity"], ident):
        if checkpoint.extends(saved["identity"], ident):
            return f"more epochs of a constant LR: continues after epoch {saved['epoch']}", None
        return f"its checkpoint {why}", None
    if not isinstance(summary := saved.get("summary"), dict):
        return f"unfinished: resumes after epoch {saved['epoch']}", None
    return None, summary


def evaluation_status(params: Params, run: RunSpec, corrupted: Path, runs_dir: Path, eval_dir: Path) -> str | None:
    from cnnvit.config.runs import run_config
    from cnnvit.files import file_sha256
    from cnnvit.stages import evaluate
    from cnnvit.training.device import resolve_precision

    cfg = run_config(params, run)
    precision = resolve_precision(cfg.runtime.precision, _device(cfg.runtime.device))
    sha = file_sha256(corrupted) if corrupted.is_file() else ""
    settings = evaluate.evaluation_settings(cfg, sha, params.active.attention_images, precision)
    weights = runs_dir / cfg.name / WEIGHTS_FILE
    return evaluate.evaluation_status(cfg.name, weights, eval_dir / cfg.name, settings)


def _emits_other_weights(summary: dict, run_dir: Path) -> bool:
    """Whether re-emitting a checkpoint with ``summary`` replaces the run's weights: its files are
    another training's (a checkpoint kept for these params, restored after a change was undone)."""
    from cnnvit.files import read_json

    try:
        current = read_json(run_dir / SUMMARY_FILE)
    except CnnvitError:
        return True

    def unhashed(d: dict) -> dict:  # as JSON has it (tuples are lists)
        return json.loads(json.dumps({k: v for k, v in d.items() if k != "weights_sha256"}, default=str))

    return not isinstance(current, dict) or unhashed(current) != unhashed(summary)


def stale(params: Params, stage: str, runs: list[RunSpec], args) -> dict[str, str]:
    """run name -> why ``stage`` (train or evaluate) will do it again, for the runs it would not
    keep. Before the training has run (``args`` names the checkpoints), an evaluation is judged
    against the weights the training will leave."""
    out: dict[str, str] = {}
    trained: dict[str, tuple[str | None, dict | None]] = {}
    if stage == TRAIN or getattr(args, "ckpt_dir", None):
        trained = {r.name: training_status(params, r, Path(args.data_dir), Path(args.ckpt_dir)) for r in runs}
    for run in runs:
        why, summary = trained.get(run.name, (None, None))
        if stage == EVALUATE and why:
            why = "its run trains again first"
        elif (
            stage == EVALUATE and summary is not None and _emits_other_weights(summary, Path(args.runs_dir) / run.name)
        ):
            why = "its run re-emits another training's weights (a kept checkpoint)"
        elif stage == EVALUATE:
            eval_dir = Path(getattr(args, "eval_dir", None) or args.out_dir)
            why = evaluation_status(params, run, Path(args.corrupted), Path(args.runs_dir), eval_dir)
        if why:
            out[run.name] = why
    return out


def status_lines(params: Params, stage: str, runs: list[RunSpec], args) -> list[str]:
    redo = stale(params, stage, runs, args)
    kept = "re-emitted from their checkpoints" if stage == TRAIN else "kept"
    head = f"{stage}: {len(redo)} of {len(runs)} runs to (re)do, {len(runs) - len(redo)} up to date ({kept})"
    return [head + (":" if redo else "")] + [f"  {name}: {why}" for name, why in redo.items()]


def print_stage_status(stage: str, args, params: Params) -> None:
    """What DVC's train or evaluate stage (every run) is about to (re)do and why, from a child process."""
    from cnnvit.batch import _context, checked_runs

    runs = checked_runs(args, params)
    with _context().Pool(1) as pool:
        lines = pool.apply(status_lines, (params, stage, runs, args))
    print("\n".join(lines), flush=True)


def add_args(p) -> None:
    p.add_argument("--data-dir", default=paths.PREPARED_DIR)
    p.add_argument("--corrupted", default=paths.CORRUPTED)
    p.add_argument("--runs-dir", default=paths.RUNS_DIR)
    p.add_argument("--ckpt-dir", default=paths.CHECKPOINT_DIR)
    p.add_argument("--eval-dir", default=paths.EVAL_DIR)


def run(args, params: Params) -> None:
    runs = params.all_runs()
    for stage in (TRAIN, EVALUATE):
        print("\n".join(status_lines(params, stage, runs, args)), flush=True)
