"""Each epoch's line carries the whole pipeline's progress: trainings left, and when it ends."""

from __future__ import annotations

import datetime as dt
import json

from test_plan_forecast import M, params_with

from cnnvit import plan, progress


def test_the_pipeline_line_counts_what_is_left_and_scales_the_forecast(tmp_path, monkeypatch):
    monkeypatch.delenv(progress.ENV, raising=False)
    assert progress.pipeline_eta("a", 0.5, 10.0) == ""  # a run trained by hand: no pipeline line
    kept = {"runs_s": {"a": 100.0, "b": 100.0, "c": 200.0, "d": 100.0}, "lanes": 2, "after_s": 50.0}
    progress.start(kept, tmp_path / "runs")
    (tmp_path / "runs/b").mkdir()
    (tmp_path / "runs/b/summary.json").write_text("{}")  # b is finished
    # half of a took 100 s, twice its forecast: c, d and a's other half are 2 x (200 + 100 + 50) = 700 s of
    # work on 2 lanes, then 2 x 50 s after the trainings
    now = dt.datetime(2026, 12, 6, 12, 0).timestamp()
    line = progress.pipeline_eta("a", 0.5, 100.0, now=now)
    assert line == "  pipeline: 3 of 4 trainings left, ends ~12:07"  # 350 + 100 = 450 s after 12:00
    assert json.loads((tmp_path / "runs" / progress.FILE).read_text())["lanes"] == 2


def test_the_forecast_gives_every_trainings_seconds():
    params = params_with(checkpoint_every_s=0)
    runs = params.all_runs()
    got = plan.forecast(params, runs, {"vit": M, "resnet50": M}, startup=5.0, jobs="snakemake", slots=2, device="cpu")
    assert set(got["runs_s"]) == {r.name for r in runs} and got["lanes"] == 2
    assert sum(got["runs_s"].values()) == sum(got["parts_s"][k] for k in plan.TRAIN_PARTS)
    assert got["after_s"] > 0
