"""This project's GPU figures in one run that always reports (under eight minutes on one H100).

    bash benchmarks/gpu_check.sh [--smoke] [--archive PATH] [--out DIR] [--budget-s 460]
                                 [--sections device,peak,models,sharing,pipeline,compile]
                                 [--force ROW=fail|hang] [--row-timeout-s N]

Rows, in this order (each a section of the report):

1. ``device``: the device a run gets (``runtime.device: auto``) and its precisions.
2. ``peak``: the measured matmul peak in fp32 (TF32 on CUDA) and in bf16: the denominators of MFU.
3. ``models``: per model of the paper preset, the trainer's own training step (augmentation,
   forward, backward, optimizer) in fp32/TF32 and in bf16: images/s, MFU against the measured
   peak of the same precision and against the GPU's datasheet figure (where this file knows it),
   peak memory, and in bf16 the trainer against a bare loop.
4. ``sharing``: 1 and 4 trainings (``runs_per_gpu: 4``, as the forecast assumes) of ViT and of the
   hybrid (the models that carry the FLOPs) sharing one GPU, one process each, with the compile
   setting the forecast assumes (``--compile-mode``), started behind a barrier: images/s of all
   together, MFU of the GPU, compile seconds and CUDA graphs used or skipped.
5. ``pipeline``: one Snakemake run in a copy of this checkout (the paper preset, one epoch of
   seed 0 of ResNet50, ViT and the hybrid, 500 robustness images, that compile setting,
   ``--runs-per-gpu`` runs on the GPU) on ARCHIVE (the shared CIFAR-10 JPEGs beside the checkout,
   else random images: real timings, meaningless accuracies), its wall time beside the forecast
   Snakemake printed at its start.
6. ``compile``: bf16 with ``torch.compile`` for the models the sharing rows did not compile:
   compile seconds (cold), CUDA graphs used or skipped, images/s and MFU.

Each row runs in a child process forked from this one (torch imported, CUDA never initialised
here) under its own hard timeout; the child and everything it started are killed in a
``finally``. ``gpu_check.json`` and ``gpu_check.md`` are rewritten after every row, so an OOM, a
hang or a kill of this script loses at most the row it was in; a failed row is recorded with its
one-line cause and its log is kept in ``logs/``. The exit status is 1 when any row failed, timed
out or was skipped (the time budget skips, and names, what would not fit). Driver, CUDA and GPU
are recorded, and the seconds ``uv sync`` took (``gpu_check.sh``), which are not in the budget.

``--smoke`` runs the same code on a CPU with the quick preset's models and tiny sizes, its
pipeline row up to the trainings (CI runs it); ``--force ROW=fail`` (or ``=hang``) makes that
row fail (or hang until its timeout), to check that a failing row is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
import tempfile
import time
import traceback
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from gpu_check_report import ROWS, SECTIONS, datasheet_tflops, markdown  # noqa: E402
from gpu_check_rows import die_with_parent, kill_tree  # noqa: E402


class Check:
    """The rows done so far, their files, and the budget."""

    def __init__(self, args, out_dir: Path, work: Path, meta: dict):
        self.args, self.out_dir, self.work, self.meta = args, out_dir, work, meta
        self.rows: list[dict] = []
        self.device: dict | None = None  # the device row, once done
        self.peak: dict | None = None  # the peak row, once done
        self.usable = False  # whether the device row found what the rows need
        self.end = time.monotonic() + args.budget_s
        (out_dir / "logs").mkdir(parents=True, exist_ok=True)
        forced = [*args.force, *filter(None, os.environ.get("GPU_CHECK_FORCE", "").split(","))]
        self.force = dict(f.split("=", 1) for f in forced)  # row id -> fail | hang

    def left(self) -> float:
        return self.end - time.monotonic()

    def write(self) -> None:
        result = {**self.meta, "rows": self.rows, "wall_s": time.monotonic() - self.meta["_start"]}
        result = {k: v for k, v in result.items() if not k.startswith("_")}
        for name, text in (("gpu_check.json", json.dumps(result, indent=2) + "\n"), ("gpu_check.md", markdown(result))):
            tmp = self.out_dir / f".{name}.tmp"
            tmp.write_text(text)
            os.replace(tmp, self.out_dir / name)

    def skip(self, section: str, row_id: str, why: str) -> None:
        self.rows.append({"section": section, "id": row_id, "status": "skipped", "cause": why})
        print(f"{row_id:<28} skipped: {why}", flush=True)
        self.write()

    def run(self, section: str, row_id: str, fn, *fn_args, timeout: float, minimum: float = 5) -> dict | None:
        """``fn(check, *fn_args)`` in a forked child under a hard ``timeout``; the row recorded."""
        timeout = min(timeout, self.args.row_timeout_s or timeout, self.left())
        if timeout < minimum:
            self.skip(section, row_id, f"time budget ({max(0, self.left()):.0f} s left of {self.args.budget_s:.0f})")
            return None
        safe = row_id.replace("/", "_")
        log, result = self.out_dir / "logs" / f"{safe}.log", self.work / f"{safe}.json"
        start = time.monotonic()
        pid = os.fork()
        if pid == 0:  # the child: its own process group, its output to the row's log
            code = 1
            try:
                os.setsid()
                die_with_parent()
                fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(fd, 1), os.dup2(fd, 2)
                forced = self.force.get(row_id)
                if forced == "hang":
                    time.sleep(10**6)
                if forced == "fail":
                    raise RuntimeError(f"forced failure (--force {row_id}=fail)")
                result.write_text(json.dumps({"ok": fn(self, *fn_args)}, default=float))
                code = 0
            except BaseException as exc:
                traceback.print_exc()
                cause = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                result.write_text(json.dumps({"failed": f"{type(exc).__name__}: {cause}"[:300]}))
            finally:
                sys.stdout.flush(), sys.stderr.flush()
                os._exit(code)
        row: dict = {"section": section, "id": row_id, "pid": pid}
        done = (0, 0)
        try:
            while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() - start < timeout:
                time.sleep(0.05)
            if done[0] == 0:
                row |= {"status": "timed out", "cause": f"no result after {timeout:.0f} s (its hard timeout)"}
        except KeyboardInterrupt as exc:  # this script was stopped: the row is recorded as such, then it stops
            row |= {"status": "interrupted", "cause": f"gpu_check stopped ({exc or 'SIGINT'}) during this row"}
            self.rows.append(row)
            raise
        finally:
            kill_tree(pid)  # the row's child and whatever it started, finished or not
            if done[0] == 0:
                os.waitpid(pid, 0)
        row["seconds"] = time.monotonic() - start
        if row.get("status") == "interrupted":
            return None
        if "status" not in row:
            got = json.loads(result.read_text()) if result.exists() else {}
            if "ok" in got:
                row |= {"status": "ok", **got["ok"]}
            else:
                status = done[1]
                why = got.get("failed") or (
                    f"killed by signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else f"exit {status >> 8}"
                )
                row |= {"status": "failed", "cause": why}
        self.rows.append(row)
        self.write()
        line = f"{row['status']}: {row['cause']}" if row["status"] != "ok" else ROWS[section].summary(row)
        print(f"{row_id:<28} {row['seconds']:6.1f}s  {line}", flush=True)
        if row["status"] != "ok":
            print("  " + "\n  ".join(log.read_text().splitlines()[-8:]), file=sys.stderr, flush=True)
        return row if row["status"] == "ok" else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="a CPU, the quick models, tiny sizes")
    ap.add_argument("--archive", type=Path, default=None, help="CIFAR-10 (default: the shared JPEGs, else random)")
    ap.add_argument("--out", type=Path, default=None, help="default: $OUT, else benchmarks/results/gpu_check-...")
    ap.add_argument("--budget-s", type=float, default=460, help="all rows together (uv sync not counted)")
    ap.add_argument("--sections", default=",".join(SECTIONS), help="which sections, in their fixed order")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    ap.add_argument("--compile-mode", default="reduce-overhead", help="the sharing, pipeline and compile rows'")
    ap.add_argument("--runs-per-gpu", type=int, default=2, help="for the Snakemake run")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads a training (the CPU's own in --smoke)")
    ap.add_argument("--force", action="append", default=[], metavar="ROW=fail|hang", help="make a row fail or hang")
    ap.add_argument("--row-timeout-s", type=float, default=None, help="cap every row's timeout at this")
    args = ap.parse_args()
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    named = ROOT / f"benchmarks/results/gpu_check-{platform.node()}-{stamp}"
    out_dir = args.out or Path(os.environ.get("OUT") or named)
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.smoke:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the CPU, even on a machine with a GPU
    import torch  # imported once, here, for every forked row: CUDA is initialised in the rows only

    import cnnvit.stages.train  # noqa: F401  # timm and the models, for the same reason
    from cnnvit.training.device import cuda_facts

    sections = [s for s in SECTIONS if s == "device" or s in args.sections.split(",")]  # device: what all need
    facts = cuda_facts()
    uv = os.environ.get("GPU_CHECK_UV_SYNC_S")
    meta = {"when": stamp, "host": platform.node(), "smoke": args.smoke, "torch": torch.__version__, **facts,
            "datasheet": datasheet_tflops(facts["gpus"][0] if facts["gpus"] and not args.smoke else ""),
            "uv_sync_s": float(uv) if uv else None, "budget_s": args.budget_s, "sections": sections,
            "_start": time.monotonic()}  # fmt: skip
    print(f"gpu_check: torch {torch.__version__} (CUDA {facts['torch_cuda']}), driver {facts['driver']}, "
          f"GPUs {facts['gpus'] or 'none'}; writing {out_dir}", flush=True)  # fmt: skip
    for sig in (signal.SIGTERM, signal.SIGHUP):  # unwind as ^C does: the row's child is ended, the files written
        signal.signal(sig, lambda signum, frame: (_ for _ in ()).throw(KeyboardInterrupt(signal.Signals(signum).name)))
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        os.environ["CNNVIT_GPU_LOCK_DIR"] = str(Path(tmp) / "locks")  # its own: never waits for other jobs' locks
        check = Check(args, out_dir, Path(tmp), meta)
        check.write()
        try:
            for section in sections:
                ROWS[section].run_section(check)
        except KeyboardInterrupt:
            check.write()
            print(f"gpu_check stopped; the rows done so far are in {out_dir}/gpu_check.json", file=sys.stderr)
            return 130
        check.write()
    bad = [r["id"] for r in check.rows if r["status"] != "ok"]
    print((out_dir / "gpu_check.md").read_text())
    print(f"wrote {out_dir}/gpu_check.json and gpu_check.md" + (f"; not ok: {', '.join(bad)}" if bad else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
