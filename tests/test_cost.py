"""What each model costs to run (cnnvit cost): measured per input size, in the run's precision
and memory layout (checked on a CPU, where bf16 autocast runs), and the table records the precision."""

from __future__ import annotations

import math

import torch
from conftest import TINY_MODELS, forward_calls, tiny_params

from cnnvit.config.load import params_from_dict
from cnnvit.measure import cost as cost_measure
from cnnvit.measure.cost import measure
from cnnvit.models import spec_from_dict
from cnnvit.stages import cost


def test_cost_is_measured_per_input_size_and_grows_with_it():
    spec = spec_from_dict(TINY_MODELS["vit"])
    rows = measure(spec, torch.device("cpu"), sizes=(32, 64), batch=8, warmup=1, iters=3)
    small, large = rows
    assert (small["size"], large["size"]) == (32, 64)
    assert large["flops_per_image"] > 3.9 * small["flops_per_image"]  # 4x the tokens, more for attention
    assert small["latency_ms_p95"] >= small["latency_ms_median"] > 0 and small["throughput_images_per_s"] > 0
    assert small["training_step_mb"] >= 0 and "throughput_images_per_s" not in large
    assert math.isfinite(small["training_peak_mb"])


def test_cost_measures_in_the_runs_precision_and_memory_layout(monkeypatch):
    monkeypatch.setattr(cost_measure, "flops_per_image", lambda *a: 1)  # its own forward, counted, not timed
    spec = spec_from_dict(TINY_MODELS["resnet50"])
    with forward_calls() as seen:
        rows = measure(spec, torch.device("cpu"), sizes=(32,), batch=4, warmup=1, iters=2, precision="bf16")
    assert rows[0]["throughput_images_per_s"] > 0
    assert len(seen) >= 5 and set(seen) == {(True, torch.bfloat16, True, True)}
    with forward_calls() as seen:
        measure(spec_from_dict(TINY_MODELS["vit"]), torch.device("cpu"), sizes=(32,), batch=4, warmup=1, iters=2)
    assert {s[:2] for s in seen} == {(False, torch.bfloat16)}  # fp32: autocast off (its dtype is the default)


def test_the_cost_table_records_the_precision(tmp_path):
    raw = tiny_params("/nowhere.tar.gz", "0" * 32)
    raw["runtime"]["precision"] = "bf16"
    raw["cost"]["sizes"] = [32]
    rows = cost.cost_table(params_from_dict(raw))
    assert len(rows) == len(TINY_MODELS) and {r["precision"] for r in rows} == {"bf16"} and "precision" in cost.COLUMNS
