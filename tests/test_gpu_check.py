"""benchmarks/gpu_check.sh reports whatever happens: a failing row, a hanging row, a budget that
runs out or a stop from outside each leave the JSON and Markdown of every row done, no child
running, and a non-zero exit. Run with --smoke on a CPU (the sections that need no Snakemake)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
from conftest import ENV, ROOT

SCRIPT = ["bash", str(ROOT / "benchmarks/gpu_check.sh"), "--smoke"]


def gpu_check(out, *args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*SCRIPT, "--out", str(out), *args], capture_output=True, text=True, env=ENV, timeout=300, **kw
    )


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow  # 19 s: a child per row, one of them left to hang until its timeout
def test_a_failing_and_a_hanging_row_are_reported_and_the_exit_is_non_zero(tmp_path):
    got = gpu_check(
        tmp_path, "--sections", "peak,models", "--force", "models/vit/bf16=fail", "--force", "models/cnn_vit/fp32=hang",
        "--row-timeout-s", "8",
    )  # fmt: skip
    assert got.returncode == 1, got.stderr[-2000:]
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    rows = {r["id"]: r for r in result["rows"]}
    assert list(rows) == ["device", "peak", "models/vit/fp32", "models/vit/bf16", "models/cnn_vit/fp32",
                          "models/cnn_vit/bf16"]  # fmt: skip  # the order the sections give
    assert [r["status"] for r in rows.values()] == ["ok", "ok", "ok", "failed", "timed out", "ok"]
    assert rows["models/vit/bf16"]["cause"] == "RuntimeError: forced failure (--force models/vit/bf16=fail)"
    assert rows["models/cnn_vit/fp32"]["cause"] == "no result after 8 s (its hard timeout)"
    for r in (rows["models/vit/fp32"], rows["models/cnn_vit/bf16"]):  # MFU against the peak of its own precision
        kind = "bf16" if r["precision"] == "bf16" else "fp32"
        mfu = 3 * r["gflop_per_image"] * 1e9 * r["images_per_s"] / (rows["peak"]["tflops"][kind] * 1e12)
        assert r["mfu_measured"] == mfu and r["mfu_datasheet"] is None  # a CPU has no datasheet figure here
    assert not any(alive(r["pid"]) for r in result["rows"] if "pid" in r)  # the hung child was ended
    assert result["torch_cuda"] and "driver" in result and result["uv_sync_s"] is not None
    md = (tmp_path / "gpu_check.md").read_text()
    assert "| models/vit/bf16 | **failed**: RuntimeError: forced failure" in md and "(exit 1)" in md
    assert (
        (tmp_path / "logs/models_vit_bf16.log")
        .read_text()
        .strip()
        .endswith("forced failure (--force models/vit/bf16=fail)")
    )


@pytest.mark.slow
def test_rows_the_budget_cannot_hold_are_skipped_by_name_and_fail_the_check(tmp_path):
    got = gpu_check(tmp_path, "--sections", "peak,compile", "--budget-s", "3")
    assert got.returncode == 1
    rows = json.loads((tmp_path / "gpu_check.json").read_text())["rows"]
    assert [(r["id"], r["status"]) for r in rows] == [("device", "skipped"), ("peak", "skipped"),
                                                       ("compile/vit", "skipped")]  # fmt: skip
    assert rows[0]["cause"].startswith("time budget (") and rows[1]["cause"] == "no usable device (see the device row)"


@pytest.mark.slow
def test_a_stopped_check_keeps_its_rows_and_ends_its_child(tmp_path):
    proc = subprocess.Popen([*SCRIPT, "--out", str(tmp_path), "--sections", "peak", "--force", "peak=hang"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # until the device row is written and the peak row hangs
            path = tmp_path / "gpu_check.json"
            if path.exists() and json.loads(path.read_text())["rows"]:
                break
            time.sleep(0.2)
        time.sleep(1)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130
    rows = json.loads((tmp_path / "gpu_check.json").read_text())["rows"]
    assert [(r["id"], r["status"]) for r in rows] == [("device", "ok"), ("peak", "interrupted")]
    assert not alive(rows[1]["pid"])
