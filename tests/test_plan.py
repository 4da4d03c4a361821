"""`cnnvit plan`'s forecast of the whole DAG, itemised (optimizer steps, per-epoch and robustness
evaluation, checkpoint writes on the cadence, compilation, start-up and the light stages), its
budget warnings, and each epoch's line of the pipeline's progress: trainings left, and when it ends."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json

import pytest
from conftest import ROOT, tiny_params

from cnnvit import plan, progress
from cnnvit.config.load import params_from_dict


def params_with(**runtime):
    raw = tiny_params("/nowhere.tar.gz", "0" * 32, epochs=4, models=["vit", "resnet50"], seeds=[0, 1])
    raw["runtime"].update(runtime)
    return params_from_dict(raw)


M = plan.Measured(flops=10**7, batch=32, step_s=0.32, eval_image_s=0.002, checkpoint_s=0.5)


@pytest.mark.parametrize(
    ("evaluations", "train_s", "every_s", "writes"),
    [(1, 99.0, 300, 1), (20, 99.0, 0, 20), (20, 1000.0, 300, 5), (3, 10.0, 300, 2), (20, 10**6, 300, 20)],
)
def test_checkpoint_writes_follow_the_train_stages_cadence(evaluations, train_s, every_s, writes):
    assert plan.checkpoint_writes(evaluations, train_s, every_s) == writes


def test_the_forecast_itemises_the_whole_dag():
    params = params_with(checkpoint_every_s=0)
    runs = params.all_runs()  # 2 models x 2 recipes x 2 seeds, 4 epochs of 80 images
    measured = {"vit": M, "resnet50": M}
    got = plan.forecast(params, runs, measured, startup=5.0, jobs="snakemake", slots=2, device="cpu: x")
    parts = got["parts_s"]
    assert parts["optimizer steps"] == pytest.approx(8 * 80 * 4 * 0.01)  # 8 runs x 320 images x 10 ms
    assert parts["per-epoch evaluation"] == pytest.approx(8 * 4 * (20 + 20) * 0.002)  # val + test, every epoch
    assert parts["robustness evaluation"] == pytest.approx(8 * 10 * (1 + 2 * 2) * 0.002)  # 10 images x 5 sets
    assert got["checkpoint_writes"] == 8 * 4 and parts["checkpoints"] == pytest.approx(8 * 4 * 0.5)
    assert parts["compile"] == 0 and parts["start-up"] == 8 * 5.0  # 4 train + 4 evaluate jobs
    light = got["light_s"]
    assert set(light) == {"prepare", "corrupt", "cost", "collect", "figures", "report"}
    serial = light["prepare"] + light["collect"] + light["figures"] + light["report"]
    assert got["forecast_s"][0] > serial + (parts["optimizer steps"] + parts["per-epoch evaluation"]) / 2
    lines = plan.report_lines(got, params)
    assert any(ln.startswith("  job-seconds: optimizer steps 26, per-epoch evaluation 3,") for ln in lines), lines
    assert any("(8 snakemake jobs, 2 at once, 5 s start-up a job; the download not counted)" in ln for ln in lines)
    assert any("32 writes, every evaluated epoch" in ln and "compile none (eager)" in ln for ln in lines)


def test_compilation_is_in_the_forecast_when_it_is_on():
    params = params_with(compile="reduce-overhead")
    runs = params.all_runs()
    measured = {"vit": M, "resnet50": M}
    eager = plan.forecast(params_with(), runs, measured, 5.0, "snakemake", 2, "cpu: x")
    got = plan.forecast(params, runs, measured, 5.0, "snakemake", 2, "cpu: x")
    # 4 training jobs: each model's first compiles cold, its second finds inductor's cache warm
    assert got["parts_s"]["compile"] == 2 * plan.COMPILE_S["first"] + 2 * plan.COMPILE_S["warm"]
    assert got["forecast_s"][0] > eager["forecast_s"][0]
    dvc = plan.forecast(params, runs, measured, 5.0, "dvc", 2, "cpu: x")
    assert dvc["parts_s"]["compile"] == 2 * plan.COMPILE_S["first"] + 6 * plan.COMPILE_S["warm"]
    assert any(
        "compile 150 s (assumed, runtime.compile reduce-overhead)" in ln for ln in plan.report_lines(got, params)
    )


def test_measure_times_a_step_an_evaluation_and_a_checkpoint_eagerly(tmp_path):
    from torch._dynamo.utils import counters

    params = params_with(compile=True)
    before = counters["stats"]["unique_graphs"]
    m, device = plan.measure(params, "vit", "paper", where=tmp_path)
    assert m.step_s > 0 and m.eval_image_s > 0 and m.checkpoint_s > 0 and m.batch >= 2
    assert counters["stats"]["unique_graphs"] == before  # runtime.compile is not applied to the measurement
    assert device.startswith("cpu") and device.endswith(", fp32") and list(tmp_path.iterdir()) == []


def test_a_forecast_far_past_the_presets_budget_warns():
    """Issue 26: a laptop preset asked of a slow host warns with the forecast before starting; a
    GPU-sized preset on a CPU is told of the laptop preset."""

    from cnnvit.config.load import load_params

    laptop = load_params(ROOT / "params.yaml", ["preset=laptop"])
    assert plan.budget_warning(laptop, "cpu: x", 3000) == []
    (line,) = plan.budget_warning(laptop, "cpu: x", 3 * 3600)
    assert line.startswith("warning: that is 3.0 h here; preset laptop is sized for 1.0 h on its hardware (cpu)")
    (line,) = plan.budget_warning(load_params(ROOT / "params.yaml"), "cpu: x", 20 * 86400)
    assert "sized for a GPU" in line and "--config preset=laptop" in line
    assert plan.budget_warning(load_params(ROOT / "params.yaml"), "cuda: H100", 3 * 3600) == []


# ----------------------------------------------------------------------------- the pipeline's progress


def test_the_forecast_gives_every_trainings_seconds():
    """By hand: a run is 4 epochs of 80 images, its validation and test images (20 + 20) evaluated
    each epoch at 2 ms an image, and 4 checkpoints at 0.5 s; ResNet50's steps take twice the ViT's."""
    params = params_with(checkpoint_every_s=0)
    runs = params.all_runs()
    slower = dataclasses.replace(M, step_s=0.64)
    got = plan.forecast(params, runs, {"vit": M, "resnet50": slower}, 5.0, jobs="snakemake", slots=2, device="cpu")
    each = {m: 4 * 80 * step_s / 32 + 4 * 40 * 0.002 + 4 * 0.5 for m, step_s in (("vit", 0.32), ("resnet50", 0.64))}
    assert got["runs_s"] == pytest.approx({r.name: each[r.model] for r in runs}) and got["lanes"] == 2
    # then the 8 runs' robustness evaluations (10 images, clean and 2 x 2 corrupted) on 2 lanes, and the last stages
    light = got["light_s"]
    assert got["after_s"] == pytest.approx(
        8 * 10 * 5 * 0.002 / 2 + light["collect"] + light["figures"] + light["report"]
    )


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


def test_training_jobs_get_their_runs_forecast_seconds_as_priority_once_the_plan_is_kept(tmp_path, monkeypatch):
    """Snakemake computes its priorities with the DAG, before onstart's plan has measured: they are
    0 until then, and computed again from the forecast kept (the e2e test sees the order it makes)."""
    from types import SimpleNamespace

    from cnnvit.batch import batches
    from cnnvit.dag import snakemake as S

    monkeypatch.delenv(progress.ENV, raising=False)  # progress.start names the file it keeps
    params = params_with()
    groups = batches(params, lanes=2)
    monkeypatch.setattr(S, "FORECAST_S", {})
    assert [S.expected_s(b) for b in groups] == [0.0] * len(groups)
    kept = progress.start({"runs_s": {r.name: 10.0 * (i + 1) for i, r in enumerate(params.all_runs())},
                           "lanes": 2, "after_s": 0.0}, tmp_path)  # fmt: skip
    updated = []
    S.longest_first(SimpleNamespace(dag=SimpleNamespace(update_priority=lambda: updated.append(True))), kept)
    assert updated == [True]  # Snakemake asked to compute them again
    runs_s = json.loads(kept.read_text())["runs_s"]
    assert [S.expected_s(b) for b in groups] == [sum(runs_s[r.name] for r in b.runs) for b in groups]
    assert len({S.expected_s(b) for b in groups}) == len(groups) > 1
