"""The sections of ``benchmarks/gpu_check.py``, in their order: which rows each runs (each in a
forked child, see gpu_check_rows.py), what the parent adds to them (MFU, gains) and the report."""

from __future__ import annotations

from pathlib import Path

from gpu_check_rows import (
    SHARED,
    device_row,
    load,
    merged,
    model_row,
    peak_row,
    pipeline_row,
    sharing_row,
    synthetic_archive,
)

SECTIONS = ("device", "peak", "models", "sharing", "pipeline", "compile")
FLOP_MODELS = ("vit", "cnn_vit")  # the models that carry the paper preset's FLOPs
# Dense tensor-core TFLOP/s from NVIDIA's datasheets (their headline figures are with sparsity,
# twice these): (a substring of torch's device name, first match wins; TF32; BF16).
DATASHEET = [("H100 PCIe", 378, 756), ("H100 NVL", 418, 835), ("H200 NVL", 418, 835), ("H100", 495, 989),
             ("H200", 495, 989), ("A100", 156, 312), ("L40S", 183, 362), ("L4", 60, 121),
             ("A10", 62.5, 125)]  # fmt: skip
# --smoke: small enough for a CPU (two models, one recipe, one seed), through the same code and the
# whole DAG, collect and report included
SMOKE_CONFIG = {
    "data": {"expect_train": 0, "expect_test": 0, "val_size": 100},
    "presets": {"quick": {"train_size": 300, "val_size": 100, "test_size": 200, "robustness_images": 20,
                          "attention_images": 8, "epochs": 1}},
    "cost": {"sizes": [32], "batch": 16},
}  # fmt: skip


def datasheet_tflops(name: str) -> dict | None:
    for key, tf32, bf16 in DATASHEET:
        if key in name:
            return {"gpu": key, "tf32": tf32, "bf16": bf16, "source": "NVIDIA datasheet, dense"}
    return None


def _models(check) -> list[str]:
    """Every model of the paper preset; --smoke: the two that carry its FLOPs, quick-sized."""
    return list(FLOP_MODELS) if check.args.smoke else list(load(check, []).runs.models)


def _mfu(check, row: dict) -> None:
    """MFU against the measured peak of the row's precision, and against the datasheet's."""
    peak = check.peak or {}
    kind = "bf16" if row["precision"] in ("bf16", "fp16") else "fp32"
    achieved = 3 * row["gflop_per_image"] * 1e9 * row["images_per_s"]
    if kind in peak.get("tflops", {}):
        row["mfu_measured"] = achieved / (peak["tflops"][kind] * 1e12)
    sheet = check.meta.get("datasheet")
    sheet_kind = "bf16" if kind == "bf16" else ("tf32" if row["precision"] == "tf32" else None)
    row["mfu_datasheet"] = achieved / (sheet[sheet_kind] * 1e12) if sheet and sheet_kind else None
    check.write()


def run_device(check) -> None:
    check.device = check.run("device", "device", device_row, timeout=60)
    usable = check.device and (check.args.smoke or check.device["type"] == "cuda")
    if check.device and not usable:
        no_gpu = f"no CUDA GPU: {check.device['device']} (pass --smoke on a CPU)"
        check.rows[-1] |= {"status": "failed", "cause": no_gpu}
        check.write()
    check.usable = bool(usable)


def _needs_device(fn):
    def run(check) -> None:
        if getattr(check, "usable", False):
            return fn(check)
        for row_id in IDS[fn.__name__](check):
            check.skip(fn.__name__.removeprefix("run_"), row_id, "no usable device (see the device row)")
        return None

    run.__name__ = fn.__name__
    return run


@_needs_device
def run_peak(check) -> None:
    check.peak = check.run("peak", "peak", peak_row, timeout=60)


@_needs_device
def run_models(check) -> None:
    for model in _models(check):
        for precision in ("fp32", "bf16"):
            if row := check.run("models", f"models/{model}/{precision}", model_row, model, precision, "false",
                                timeout=90):  # fmt: skip
                _mfu(check, row)


def _sharing_plan(check) -> list[tuple[str, int]]:
    models = FLOP_MODELS[:1] if check.args.smoke else FLOP_MODELS
    return [(m, k) for m in models for k in ((1, 2) if check.args.smoke else (1, 4))]  # 4: runs_per_gpu's forecast


def _compile_setting(check) -> str:
    return "false" if check.args.smoke else check.args.compile_mode  # inductor on a CPU: the compile row's


@_needs_device
def run_sharing(check) -> None:
    alone: dict[str, float] = {}
    for model, k in _sharing_plan(check):
        row = check.run("sharing", f"sharing/{model}/{k}", sharing_row, model, k, _compile_setting(check),
                        timeout=60 if check.args.smoke else 150)  # fmt: skip
        if row:
            alone.setdefault(model, row["images_per_s"])
            row["gain"] = row["images_per_s"] / alone[model] if k > 1 and model in alone else 1.0
            _mfu(check, row)  # of the GPU, all k runs together


@_needs_device
def run_pipeline(check) -> None:
    archive = check.args.archive or (SHARED if SHARED.exists() and not check.args.smoke else None)
    per_batch = 200 if check.args.smoke else 10000
    archive = archive or synthetic_archive(Path(check.work) / "cifar10-random.tar.gz", per_batch)
    preset = "quick" if check.args.smoke else "paper"
    runs = {"models": ["resnet50", *FLOP_MODELS], "recipes": ["paper"], "seeds": [0]}  # the paper's three claims
    sizes = {"epochs": 1, "robustness_images": 500}  # one epoch, a quarter of the corruption benchmark
    config = {"preset": preset, "runs": runs, "presets": {preset: sizes}, "cost": {"sizes": [32]},
              "runtime": {"compile": _compile_setting(check), "runs_per_gpu": check.args.runs_per_gpu}}  # fmt: skip
    config = merged(config, SMOKE_CONFIG) if check.args.smoke else config
    check.run("pipeline", "pipeline", pipeline_row, archive.resolve(), config, timeout=150 if check.args.smoke else 240)


def _compiled_models(check) -> list[str]:
    """The models whose compile no row before measured (ViT's and the hybrid's: sharing/*/1)."""
    return list(FLOP_MODELS[:1]) if check.args.smoke else [m for m in _models(check) if m not in FLOP_MODELS]


@_needs_device
def run_compile(check) -> None:
    # --smoke: dynamo and AOTAutograd without inductor's C++ (~50 s a model on a CPU): the same rows, fast
    mode, backend = ("default", "aot_eager") if check.args.smoke else (check.args.compile_mode, "inductor")
    for model in _compiled_models(check):
        if row := check.run("compile", f"compile/{model}", model_row, model, "bf16", mode, backend, timeout=150):
            _mfu(check, row)


IDS = {
    "run_peak": lambda c: ["peak"],
    "run_models": lambda c: [f"models/{m}/{p}" for m in _models(c) for p in ("fp32", "bf16")],
    "run_sharing": lambda c: [f"sharing/{m}/{k}" for m, k in _sharing_plan(c)],
    "run_pipeline": lambda c: ["pipeline"],
    "run_compile": lambda c: [f"compile/{m}" for m in _compiled_models(c)],
}


def _pct(v) -> str:
    return f"{v:.1%}" if isinstance(v, float) else ""


def _model_cells(r: dict) -> list:
    compiled = r["compile"] != "false"
    how = f"{r['compile_s']:.0f} s, {r['graphs']} graph(s), CUDA graphs {r['cuda_graphs']}" if compiled else ""
    return [r["model"], r["precision"], f"{r['images_per_s']:.0f}", f"{r['gflop_per_image']:.3g}",
            _pct(r.get("mfu_measured")), _pct(r.get("mfu_datasheet")), f"{r['peak_mem_mb']:.0f}",
            f"{r['trainer_vs_bare']:.2f}" if "trainer_vs_bare" in r else "",
            how]  # fmt: skip


class Section:
    """A section's rows (``run``), its console line and its table (header, and a row's cells)."""

    def __init__(self, run_section, summary, header: list[str], cells):
        self.run_section, self.summary, self.header, self.cells = run_section, summary, header, cells


MODEL_HEADER = ["model", "precision", "img/s", "GFLOP/img", "MFU (measured peak)", "MFU (datasheet)", "peak MB",
                "trainer/bare", "compile"]  # fmt: skip
ROWS = {
    "device": Section(
        run_device,
        lambda r: r["device"],
        ["device", "fp32 runs as", "bf16"],
        lambda r: [r["device"], r["fp32"], r["bf16"]],
    ),
    "peak": Section(
        run_peak,
        lambda r: f"fp32/{r['fp32_is']} {r['tflops']['fp32']:.1f}, bf16 {r['tflops']['bf16']:.1f} TFLOP/s",
        ["matmul", "fp32 (TF32 on CUDA) TFLOP/s", "bf16 TFLOP/s"],
        lambda r: [f"{r['n']}x{r['n']}", f"{r['tflops']['fp32']:.1f}", f"{r['tflops']['bf16']:.1f}"],
    ),
    "models": Section(
        run_models, lambda r: f"{r['images_per_s']:9.0f} img/s ({r['precision']})", MODEL_HEADER, _model_cells
    ),
    "sharing": Section(
        run_sharing,
        lambda r: f"{r['images_per_s']:9.0f} img/s together",
        [
            "runs",
            "model",
            "compile",
            "img/s together",
            "gain over 1",
            "MFU (measured peak)",
            "MFU (datasheet)",
            "compile s",
            "CUDA graphs",
        ],
        lambda r: [
            r["runs"],
            r["model"],
            r["compile"],
            f"{r['images_per_s']:.0f}",
            f"x{r.get('gain', 1.0):.2f}",
            _pct(r.get("mfu_measured")),
            _pct(r.get("mfu_datasheet")),
            f"{r['compile_s']:.0f}",
            r["cuda_graphs"],
        ],
    ),
    "pipeline": Section(
        run_pipeline,
        lambda r: f"{r['wall_s']:.0f} s wall",
        ["wall", "forecast printed at its start"],
        lambda r: [f"{r['wall_s']:.0f} s", " / ".join(r["forecast"])],
    ),
    "compile": Section(
        run_compile,
        lambda r: f"{r['images_per_s']:9.0f} img/s, compile {r['compile_s']:.0f} s",
        MODEL_HEADER,
        _model_cells,
    ),
}


def markdown(result: dict) -> str:
    sheet = result.get("datasheet")
    known = f"{sheet['gpu']} TF32 {sheet['tf32']}, BF16 {sheet['bf16']} TFLOP/s (dense)" if sheet else "unknown"
    uv = result["uv_sync_s"]
    lines = [
        f"# gpu_check: {result['host']}, {result['when']}{' (--smoke)' if result['smoke'] else ''}",
        "",
        f"torch {result['torch']} (CUDA {result['torch_cuda']}), driver {result['driver']}, GPUs: "
        f"{', '.join(result['gpus']) or 'none'}; datasheet: {known}; `uv sync` {f'{uv:.0f} s' if uv else 'not timed'} "
        f"(not in the budget); rows {result['wall_s']:.0f} s of a {result['budget_s']:.0f} s budget",
    ]
    for section in result["sections"]:
        rows = [r for r in result["rows"] if r["section"] == section]
        if rows:
            head = ROWS[section].header
            lines += ["", f"## {section}", "", "| row | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
        for r in rows:
            cells = ROWS[section].cells(r) if r["status"] == "ok" else [f"**{r['status']}**: {r['cause']}"]
            lines.append("| " + " | ".join(str(c) for c in [r["id"], *cells]) + " |")
    bad = [r["id"] for r in result["rows"] if r["status"] != "ok"]
    lines += ["", f"Not ok: {', '.join(bad)} (exit 1)" if bad else "Every row ok."]
    return "\n".join(lines) + "\n"
