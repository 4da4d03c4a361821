"""Bad input, tried as a user would: each case's command, exit code and the line it ends in.

    uv run python tests/refusal_cases.py [--out cases.md]

Builds a tiny project (the fixture archive, the tiny preset: vit and resnet50, two seeds, one
epoch), runs the whole pipeline once with Snakemake, then tries each case below on a copy of what
it needs, and prints a Markdown table: the case, the command, the exit code, the last line of
stderr, and whether it was one line with no traceback. Not a test (pytest does not collect it):
the regression tests of each class are in tests/test_refusals_*.py; this is the table of the
issue's "every case, the command, the exit code and the line it gives". A few minutes on 2 cores.
"""

# ruff: noqa: E501  (one case a line: the table reads as the cases do)
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from conftest import ENV, make_cifar_python, make_project, md5, tiny_params

BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
    for p, c in zip("abcdefgh", "bcdefghi", strict=True)
)


def edit_params(project: Path, change: Callable[[dict], None]) -> None:
    cfg = yaml.safe_load((project / "params.yaml").read_text())
    change(cfg)
    (project / "params.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))


def edit_text(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, (path, old)
    path.write_text(text.replace(old, new, 1))


def setitem(path: str, value):
    def change(cfg: dict) -> None:
        *head, last = path.split(".")
        node = cfg
        for part in head:
            node = node[part]
        node[last] = value

    return change


def dropitem(path: str):
    def change(cfg: dict) -> None:
        *head, last = path.split(".")
        node = cfg
        for part in head:
            node = node[part]
        del node[last]

    return change


RUN = "results/runs/vit-paper-s0"
EVAL = "results/eval/vit-paper-s0"
TRAIN = "cnnvit train --model vit --recipe paper --seeds 0 --data-dir data/prepared --runs-dir results/runs --ckpt-dir results/checkpoints"
EVALUATE = "cnnvit evaluate --model vit --recipe paper --seeds 0 --data-dir data/prepared --corrupted data/corrupted/test.npz --runs-dir results/runs --out-dir results/eval"
COLLECT = "cnnvit collect --runs-dir results/runs --eval-dir results/eval --cost results/cost/cost.csv --out-dir /tmp/cases-tables"
REPORT = "cnnvit report --tables-dir results/tables --figures-dir results/figures --template report/template.html.j2 --out /tmp/cases-report.html"


def npz_copy(src: str, dst: str):
    return lambda p: shutil.copy(p / src, p / dst)


def summary_edit(key: str, value):
    def change(p: Path) -> None:
        path = p / RUN / "summary.json"
        s = json.loads(path.read_text())
        s[key] = value
        path.write_text(json.dumps(s))

    return change


def csv_edit(rel: str, old: str, new: str):
    return lambda p: edit_text(p / rel, old, new)


def write(rel: str, data: bytes):
    return lambda p: (p / rel).parent.mkdir(parents=True, exist_ok=True) or (p / rel).write_bytes(data)


def truncate(rel: str, keep: float = 0.5):
    def change(p: Path) -> None:
        blob = (p / rel).read_bytes()
        (p / rel).write_bytes(blob[: int(len(blob) * keep)])

    return change


def inf_accuracy(p: Path) -> None:
    path = p / EVAL / "robustness.csv"
    head, first, *rest = path.read_text().splitlines()
    cells = first.split(",")
    cells[head.split(",").index("acc")] = "inf"
    path.write_text("\n".join([head, ",".join(cells), *rest]) + "\n")


def nan_weights(p: Path) -> None:
    from safetensors.numpy import load_file, save_file

    tensors = load_file(p / RUN / "weights.safetensors")
    tensors = {k: np.full_like(v, np.nan) if v.dtype.kind == "f" else v for k, v in tensors.items()}
    save_file(tensors, p / "nan.safetensors")
    edit_params(p, setitem("presets.tiny.models.vit.pretrained", "nan.safetensors"))


def resnet_as_vit(p: Path) -> None:
    edit_params(p, setitem("presets.tiny.models.vit.pretrained", "results/runs/resnet50-paper-s0/weights.safetensors"))


def by_hand(*cmds: str, forget: bool = True):
    """Stages run by hand in the project (and Snakemake's records deleted): issue 28.15's setup."""

    def setup(p: Path) -> None:
        for cmd in cmds:
            subprocess.run(cmd, shell=True, cwd=p, env=ENV, check=True, capture_output=True)
        if forget:
            shutil.rmtree(p / ".snakemake")

    return setup


HAND_TRAINED = "cnnvit train --model vit --recipe paper --seeds 0 --set presets.tiny.val_size=10"
HAND_CORRUPTED = "cnnvit corrupt --set presets.tiny.test_size=15"

CASES: list[tuple[str, Callable[[Path], None] | None, str]] = [
    # the config, in every command that reads it
    (
        "a second lr: under recipes.paper",
        lambda p: edit_text(p / "params.yaml", "  paper:\n", "  paper:\n    lr: 0.5\n"),
        "cnnvit status",
    ),
    (
        "a trailing duplicate preset: key",
        lambda p: (p / "params.yaml").open("a").write("preset: quick\n"),
        "cnnvit status",
    ),
    ("an alias bomb as params.yaml", write("params.yaml", BOMB.encode()), "cnnvit status"),
    ("--params at a folder", None, "cnnvit status --params results"),
    (
        "--params at a file that is not UTF-8",
        write("latin1.yaml", b"preset: caf\xe9\n"),
        "cnnvit status --params latin1.yaml",
    ),
    ("--params at a missing file", None, "cnnvit status --params nowhere.yaml"),
    ("lr: .nan", lambda p: edit_params(p, setitem("recipes.paper.lr", float("nan"))), "cnnvit status"),
    (
        "label_smoothing: .inf",
        lambda p: edit_params(p, setitem("recipes.modern.label_smoothing", float("inf"))),
        "cnnvit status",
    ),
    (
        "train_fractions: [.nan, 1.0]",
        lambda p: edit_params(p, setitem("runs.train_fractions", [float("nan"), 1.0])),
        "cnnvit status",
    ),
    (
        "train_fractions: [1e-9, 1.0]",
        lambda p: edit_params(p, setitem("runs.train_fractions", [1e-9, 1.0])),
        "cnnvit status",
    ),
    ("an unknown preset name", None, "cnnvit status --set preset=laptopp"),
    ("a misspelt key (runtime.treads)", lambda p: edit_params(p, setitem("runtime.treads", 2)), "cnnvit status"),
    (
        "a key left out (runtime.checkpoint_every_s)",
        lambda p: edit_params(p, dropitem("runtime.checkpoint_every_s")),
        "cnnvit status",
    ),
    (
        "a model no module registers (arch: vitt)",
        lambda p: edit_params(p, setitem("presets.tiny.models.vit.arch", "vitt")),
        "cnnvit status",
    ),
    (
        "a wrong key in a model entry (depthh)",
        lambda p: edit_params(p, setitem("presets.tiny.models.vit.depthh", 2)),
        "cnnvit status",
    ),
    (
        "heads that do not divide the width",
        lambda p: edit_params(p, setitem("presets.tiny.models.vit.num_heads", 3)),
        "cnnvit status",
    ),
    ("seeds [0, 0]", lambda p: edit_params(p, setitem("runs.seeds", [0, 0])), "cnnvit status"),
    ("seed 4294967296", lambda p: edit_params(p, setitem("runs.seeds", [4294967296])), "cnnvit status"),
    ("seed -1", None, f"{TRAIN.replace('--seeds 0', '--seeds -1')}"),
    ("close_margin_pp: -1", lambda p: edit_params(p, setitem("analysis.close_margin_pp", -1)), "cnnvit status"),
    ("close_margin_pp: two", lambda p: edit_params(p, setitem("analysis.close_margin_pp", "two")), "cnnvit status"),
    ("runs that drop a model a claim needs", None, "cnnvit status --set 'runs.models=[vit]'"),
    (
        "--set runs.models that the laptop preset shadows",
        None,
        "cnnvit status --set data.expect_test=0 --set preset=laptop --set 'runs.models=[vit]'",
    ),
    ("runs_per_gpu: 0", lambda p: edit_params(p, setitem("runtime.runs_per_gpu", 0)), "cnnvit status"),
    ("runtime.device: cuda on a machine without one", None, f"{TRAIN} --set runtime.device=cuda"),
    ("the paper preset (sized for a GPU) on a CPU", None, f"{TRAIN} --set data.expect_test=0 --set preset=paper"),
    # data
    (
        "a wrong checksum",
        None,
        "cnnvit download --out /tmp/cases-raw.tar.gz --set data.md5=0123456789abcdef0123456789abcdef",
    ),
    ("data.url at a missing file", None, "cnnvit download --out /tmp/cases-raw.tar.gz --set data.url=/nowhere.tar.gz"),
    ("download --out at a folder", None, "cnnvit download --out results"),
    (
        "an archive that is a zip",
        write("x.zip", b"PK\x03\x04" + bytes(100)),
        "cnnvit prepare --raw x.zip --out-dir /tmp/cases-prepared",
    ),
    (
        "an archive of random bytes",
        write("x.tar.gz", bytes(range(256)) * 4),
        "cnnvit prepare --raw x.tar.gz --out-dir /tmp/cases-prepared",
    ),
    # training
    ("train --seeds 0 0", None, TRAIN.replace("--seeds 0", "--seeds 0 0")),
    ("train --fraction 2", None, f"{TRAIN} --fraction 2"),
    (
        "train --model without --recipe",
        None,
        "cnnvit train --model vit --seeds 0 --data-dir data/prepared --runs-dir results/runs --ckpt-dir results/checkpoints",
    ),
    ("train --ckpt-dir at a file", None, TRAIN.replace("--ckpt-dir results/checkpoints", "--ckpt-dir params.yaml")),
    ("a ResNet's weights as the ViT's pretrained", resnet_as_vit, TRAIN.replace("results/runs", "/tmp/cases-runs")),
    ("pretrained weights that are all NaN", nan_weights, TRAIN.replace("results/runs", "/tmp/cases-runs2")),
    (
        "a zero-byte checkpoint (set aside; the run trains)",
        write("results/checkpoints/vit-paper-s9.pt", b""),
        TRAIN.replace("--seeds 0", "--seeds 9").replace("results/runs", "/tmp/cases-runs3"),
    ),
    # evaluation
    (
        "a zero-byte corrupted-images file",
        write("data/corrupted/test.npz", b""),
        EVALUATE.replace("results/eval", "/tmp/cases-eval"),
    ),
    (
        "a truncated corrupted-images file",
        truncate("data/corrupted/test.npz"),
        EVALUATE.replace("results/eval", "/tmp/cases-eval"),
    ),
    (
        "weights.safetensors truncated",
        truncate(f"{RUN}/weights.safetensors"),
        EVALUATE.replace("results/eval", "/tmp/cases-eval"),
    ),
    # collect, figures, report
    (
        "seed 0's predictions copied into seed 1",
        npz_copy(f"{RUN}/predictions.npz", "results/runs/vit-paper-s1/predictions.npz"),
        COLLECT,
    ),
    ("selected_test_acc edited to 99", summary_edit("selected_test_acc", 99.0), COLLECT),
    ('"seed": "zero" in summary.json', summary_edit("seed", "zero"), COLLECT),
    (
        "another model's metrics.csv in a run folder",
        npz_copy("results/runs/resnet50-paper-s0/metrics.csv", f"{RUN}/metrics.csv"),
        COLLECT,
    ),
    (
        "inf in robustness.csv",
        inf_accuracy,
        COLLECT,
    ),
    ("robustness.csv without its acc column", csv_edit(f"{EVAL}/robustness.csv", "acc", "accuracy"), COLLECT),
    (
        "attention.csv with only its header",
        lambda p: (p / EVAL / "attention.csv").write_text(
            (p / EVAL / "attention.csv").read_text().splitlines()[0] + "\n"
        ),
        COLLECT,
    ),
    ("a malformed cost.csv", write("results/cost/cost.csv", b"model,size\nvit,notanumber\n"), COLLECT),
    ("the report of tables another experiment made", None, f"{REPORT} --set presets.tiny.epochs=3"),
    ("figures --tables-dir at a file", None, "cnnvit figures --tables-dir params.yaml --out-dir /tmp/cases-figures"),
    (
        "a class name with TeX in it (drawn as plain text)",
        csv_edit("results/tables/per_class.csv", "airplane", "cat$\\undefinedmacro$"),
        "cnnvit figures --tables-dir results/tables --out-dir /tmp/cases-figures",
    ),
    # the tools
    (
        "snakemake --configfile with an alias bomb",
        write("bomb.yaml", BOMB.encode()),
        "snakemake -n --cores 1 --configfile bomb.yaml",
    ),
    (
        "snakemake with a duplicate key in params.yaml",
        lambda p: (p / "params.yaml").open("a").write("preset: tiny\n"),
        "snakemake -n --cores 1",
    ),
    (
        "snakemake with the paper preset on a CPU",
        None,
        "snakemake --cores 1 --config preset=paper 'data={expect_test: 0}'",
    ),
    ("snakemake with an unknown preset", None, "snakemake -n --cores 1 --config preset=nope"),
    # outputs made under other params, which Snakemake has no record of (issue 28.15): they run again
    (
        "a run trained by hand under another val_size, .snakemake gone (runs again)",
        by_hand(HAND_TRAINED),
        "snakemake --cores 2",
    ),
    (
        "the corrupted set made under another test_size, .snakemake gone (runs again)",
        by_hand(HAND_CORRUPTED),
        "snakemake --cores 2",
    ),
    (
        "a run trained by hand over Snakemake's, its records kept (runs again)",
        by_hand(HAND_TRAINED, forget=False),
        "snakemake --cores 2",
    ),
    (
        "the tables collected by hand under another close_margin_pp (runs again)",
        by_hand(
            COLLECT.replace("/tmp/cases-tables", "results/tables") + " --set analysis.close_margin_pp=3", forget=False
        ),
        "snakemake --cores 2",
    ),
    (
        "the cost table measured by hand for a wider ViT (runs again)",
        by_hand("cnnvit cost --set presets.tiny.models.vit.embed_dim=32", forget=False),
        "snakemake --cores 2",
    ),
    (
        "a summary.json from before runs recorded their config (runs again)",
        by_hand(
            f"python -c \"import json,pathlib;p=pathlib.Path('{RUN}/summary.json');d=json.loads(p.read_text());d.pop('config');p.write_text(json.dumps(d))\""
        ),
        "snakemake --cores 2",
    ),
]


def one_case(base: Path, work: Path, name: str, setup, cmd: str) -> dict:
    project = work / "p"
    if project.exists():
        shutil.rmtree(project)
    shutil.copytree(base, project, symlinks=True)
    if setup:
        setup(project)
    proc = subprocess.run(cmd, shell=True, cwd=project, env=ENV, capture_output=True, text=True, timeout=300)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:") or ": error: " in ln]
    warnings = [ln for ln in lines if ln.startswith("warning:")]
    said = [ln for ln in proc.stdout.splitlines() if "moved it to" in ln]  # a checkpoint set aside
    said += [ln for ln in lines if "its job runs again" in ln]  # outputs made under other params
    last = errors[-1] if errors else (said or warnings or lines or [""])[-1]
    return {
        "case": name,
        "command": cmd.replace(" --data-dir data/prepared", "").replace(" --ckpt-dir results/checkpoints", ""),
        "exit": proc.returncode,
        "line": last[:300],
        "clean": "Traceback" not in proc.stderr and len(errors) <= 1,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cnnvit-cases-"))
    archive = make_cifar_python(work / "cifar.tar.gz")
    params = tiny_params(
        str(archive), md5(archive), epochs=1, models=["vit", "resnet50"], recipes=["paper"], seeds=[0, 1]
    )
    base = make_project(work / "base", params, git=False)
    done = subprocess.run("snakemake --cores 2", shell=True, cwd=base, env=ENV, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"error: the tiny pipeline failed:\n{done.stderr[-2000:]}")
    rows = [one_case(base, work, *case) for case in CASES]
    table = ["| case | command | exit | the line it ends in | one line, no traceback |", "|---|---|---:|---|---|"]
    for r in rows:
        line = r["line"].replace("|", "\\|")
        table.append(f"| {r['case']} | `{r['command']}` | {r['exit']} | {line} | {'yes' if r['clean'] else 'NO'} |")
    text = "\n".join(table) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    works = ("(set aside", "(drawn as plain", "(runs again")  # cases that must succeed, not be refused
    bad = [r["case"] for r in rows if (r["exit"] == 0) != any(w in r["case"] for w in works) or not r["clean"]]
    print(
        f"{len(rows)} cases; {len(rows) - len(bad)} as they should be (refused in one line, or working); not: {bad}",
        file=sys.stderr,
    )
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
