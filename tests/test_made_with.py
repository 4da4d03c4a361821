"""Issue 28.15: outputs made under other params (a stage run by hand, or with .snakemake gone) are
stale to Snakemake too. Each stage's records are read against the current params, and each job's
stamp, an input of its rule, is dated now when they differ and 1970 when they agree."""

from __future__ import annotations

import csv
import json
import os
import shutil

import numpy as np
import pytest
from conftest import tiny_params

from cnnvit.batch import batches
from cnnvit.config.load import params_from_dict
from cnnvit.config.runs import run_config
from cnnvit.config.values import values
from cnnvit.dag import made_with
from cnnvit.dag.made_with import stale_jobs, stamp_path, write_stamps
from cnnvit.dag.stages import STAGES


def params_with(**preset):
    cfg = tiny_params("data/raw.tar.gz", "0" * 32, models=["vit", "resnet50"], recipes=["paper"], seeds=[0, 1])
    cfg["presets"]["tiny"].update(preset)
    return params_from_dict(cfg, "test")


def write_records(root, params) -> None:
    """Every record a pipeline run under ``params`` leaves, as the stages write them."""
    (root / "data/prepared").mkdir(parents=True)
    stats = {"provenance": {"params": {"data": params.raw["data"]}}}
    (root / "data/prepared/stats.json").write_text(json.dumps(stats))
    (root / "data/corrupted").mkdir(parents=True)
    record = json.dumps({"values": values(params.raw, STAGES["corrupt"].params)}, sort_keys=True)
    np.savez(root / "data/corrupted/test.npz", images=np.zeros(1, np.uint8), provenance=np.array(record))
    for run in params.all_runs():
        cfg = run_config(params, run)
        (root / "results/runs" / run.name).mkdir(parents=True)
        config = {**cfg.identity(), "precision": "fp32"}  # as the run's device resolved "auto"
        (root / "results/runs" / run.name / "summary.json").write_text(json.dumps({"config": config}))
        (root / "results/eval" / run.name).mkdir(parents=True)
        settings = {"model": cfg.model.to_dict(), "test_size": cfg.test_size, "precision": "fp32",
                    "attention_images": params.active.attention_images, "normalize": cfg.recipe.normalize}  # fmt: skip
        (root / "results/eval" / run.name / "evaluation.json").write_text(json.dumps({"settings": settings}))
    (root / "results/tables").mkdir(parents=True)
    (root / "results/tables/provenance.json").write_text(json.dumps({"params": params.raw}))
    (root / "results/cost").mkdir(parents=True)
    with (root / "results/cost/cost.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["model", "arch", "size", "spec"])
        for m in params.runs.models:
            spec = params.active.models[m]
            w.writerows([m, spec["arch"], s, json.dumps(spec, sort_keys=True)] for s in params.cost.sizes)


def test_outputs_made_under_these_params_are_not_stale_and_none_yet_is_not_either(tmp_path):
    params = params_with()
    assert stale_jobs(params, batches(params, 1), tmp_path) == {}
    write_records(tmp_path, params)
    assert stale_jobs(params, batches(params, 1), tmp_path) == {}
    assert write_stamps(params, batches(params, 1), tmp_path) == {}
    stamps = list((tmp_path / made_with.STAMPS_DIR).rglob("*.txt"))
    assert len(stamps) == 4 + 2 * len(batches(params, 1))  # prepare, corrupt, cost, collect; train, evaluate
    assert all(p.read_text() == "agree\n" and p.stat().st_mtime == 0 for p in stamps)


@pytest.mark.parametrize(
    ("change", "stale"),
    [
        # the stages whose own records hold the key: the DAG re-runs those after them by their times
        ({"test_size": 20}, {"corrupt", "train", "evaluate", "collect"}),  # the two cases
        ({"val_size": 8}, {"train", "collect"}),
        ({"attention_images": 2}, {"evaluate"}),
        ({"epochs": 3}, {"train", "collect"}),
    ],
)
def test_outputs_made_under_other_params_are_stale_where_their_records_say_so(tmp_path, change, stale):
    made, now = params_with(**change), params_with()
    write_records(tmp_path, made)
    found = stale_jobs(now, batches(now, 1), tmp_path)
    assert {stage for stage, _ in found} == stale, found
    key = next(iter(change))
    assert all(key in why or "models" in why for why in found.values()), found


def test_a_cost_table_of_other_model_sizes_or_of_an_older_cnnvit_is_stale(tmp_path):
    """collect refuses a cost table measured for other model sizes: Snakemake must re-run cost."""
    now = params_with()
    made = params_from_dict(
        {**now.raw, "presets": {**now.raw["presets"], "tiny": {**now.raw["presets"]["tiny"], "models": {
            **now.active.models, "vit": {**now.active.models["vit"], "embed_dim": 32}}}}}, "test")  # fmt: skip
    write_records(tmp_path, made)
    found = stale_jobs(now, batches(now, 1), tmp_path)
    assert "presets.tiny.models.vit:" in found[("cost", None)] and "'embed_dim': 32" in found[("cost", None)]
    write_records(tmp_path / "b", now)
    assert ("cost", None) not in stale_jobs(now, batches(now, 1), tmp_path / "b")
    cost = tmp_path / "b/results/cost/cost.csv"
    cost.write_text("model,arch,size\nvit,vit,32\n")  # an older cnnvit's: no spec column
    assert "records no params" in stale_jobs(now, batches(now, 1), tmp_path / "b")[("cost", None)]


def test_a_stamp_is_dated_when_first_seen_kept_while_the_same_and_new_after_an_agreement(tmp_path):
    made, now = params_with(test_size=20), params_with()
    write_records(tmp_path, made)
    out = write_stamps(now, batches(now, 1), tmp_path)
    corrupt = tmp_path / stamp_path("corrupt")
    assert str(corrupt) in out and "presets.tiny.test_size: 20 -> 0" in out[str(corrupt)]
    first = corrupt.read_text()
    assert first.startswith("stale: ") and corrupt.stat().st_mtime > 1e9
    os.utime(corrupt, (5, 5))  # the job ran since and still disagrees: the same text is no new change
    write_stamps(now, batches(now, 1), tmp_path)
    assert corrupt.read_text() == first and corrupt.stat().st_mtime == 5
    for d in ("data", "results"):
        shutil.rmtree(tmp_path / d)
    write_records(tmp_path, now)  # made again under these params: agreed, dated 1970
    write_stamps(now, batches(now, 1), tmp_path)
    assert corrupt.read_text() == "agree\n" and corrupt.stat().st_mtime == 0
    for d in ("data", "results"):
        shutil.rmtree(tmp_path / d)
    write_records(tmp_path, made)  # and under the other params again: new text, whatever Snakemake recorded
    write_stamps(now, batches(now, 1), tmp_path)
    assert corrupt.read_text().startswith("stale: ") and corrupt.read_text() != first


def test_records_missing_or_unreadable_are_stale_and_say_so(tmp_path):
    params = params_with()
    write_records(tmp_path, params)
    np.savez(tmp_path / "data/corrupted/test.npz", images=np.zeros(1, np.uint8))  # an older cnnvit's: no record
    run = params.all_runs()[0]
    (tmp_path / "results/runs" / run.name / "summary.json").write_text("{not json")
    found = stale_jobs(params, batches(params, 1), tmp_path)
    assert "records no params" in found[("corrupt", None)]
    assert any(stage == "train" and "records no params" in why for (stage, _), why in found.items())
