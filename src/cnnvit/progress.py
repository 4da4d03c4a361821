"""The whole pipeline's progress, for each epoch's log line: trainings left, and when it ends.

    start(plan, "results/runs")                 # before the trainings: where the forecast is kept
    kept(path)["runs_s"]                        # each run's forecast seconds (Snakemake's priorities)
    pipeline_eta("vit-paper-s0", 0.5, 120.0)    # "pipeline: 7 of 15 trainings left, ends ~14:05"

``cnnvit plan`` forecasts each training's seconds, the lanes that run at once and what follows the
trainings (evaluations, collect, figures, report). Snakemake (at its start) and DVC's train stage
keep that forecast in a file beside the runs and name it in ``$CNNVIT_PROGRESS``, which every
training job inherits. At each epoch a run counts the trainings not yet finished (a run is
finished when its summary.json exists) and scales the forecast by how its own epochs compared
with theirs: the end is now + (what is left of the trainings, spread over the lanes) + the rest.
Without the file (a run trained by hand) there is no pipeline line.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from pathlib import Path

from cnnvit.files import write_json

ENV = "CNNVIT_PROGRESS"
FILE = ".progress.json"  # beside the runs' folders


def start(plan: dict, runs_dir: str | Path) -> Path:
    """Keep ``plan``'s per-run forecast beside the runs and name it for the jobs started from here."""
    path = Path(runs_dir) / FILE
    keep = {k: plan[k] for k in ("runs_s", "lanes", "after_s")} | {"runs_dir": str(Path(runs_dir).resolve())}
    write_json(path, keep)
    os.environ[ENV] = str(path.resolve())
    return path


def kept(path: str | Path) -> dict:
    """The forecast :func:`start` kept: runs_s (run -> seconds), lanes, after_s, runs_dir."""
    return json.loads(Path(path).read_text())


def pipeline_eta(run: str, done: float, spent: float, now: float | None = None) -> str:
    """The pipeline's part of ``run``'s epoch line, after ``done`` (0-1) of it took ``spent`` s."""
    path = os.environ.get(ENV)
    if not path:
        return ""
    try:
        got = kept(path)
        forecast, lanes, after = got["runs_s"], max(1, int(got["lanes"])), float(got["after_s"])
        runs_dir = Path(got["runs_dir"])
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    if run not in forecast or done <= 0 or forecast[run] <= 0:
        return ""
    speed = spent / (done * forecast[run])  # this machine against the forecast, as this run sees it
    left = [r for r in forecast if r != run and not (runs_dir / r / "summary.json").exists()]
    remaining = speed * (sum(forecast[r] for r in left) + (1 - done) * forecast[run])
    ends = (now or time.time()) + remaining / lanes + speed * after
    when = dt.datetime.fromtimestamp(ends).strftime("%H:%M")
    return f"  pipeline: {len(left) + 1} of {len(forecast)} trainings left, ends ~{when}"
