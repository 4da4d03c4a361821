"""Run directories as `cnnvit train` and `cnnvit evaluate` leave them, fabricated with exact
accuracies, and `cnnvit collect` over them (for the collect, report and variant tests)."""

from __future__ import annotations

import json

import numpy as np
from conftest import ROOT, write_yaml

from cnnvit.cli import main
from cnnvit.config.load import load_params
from cnnvit.paper import CLAIMS
from cnnvit.paths import EVAL_PER_IMAGE
from cnnvit.runfiles import write_predictions
from cnnvit.stats.robustness import write_per_image

ACCS = {"resnet50": [78.0, 78.5, 79.0], "vit": [61.0, 60.5, 62.0], "cnn_vit": [70.0, 69.5, 71.0]}


def fabricate(tmp_path, accs=ACCS, seeds=(0, 1, 2), extra: dict | None = None, n_test: int = 1000) -> dict:
    """params.yaml for these runs, and run directories as `cnnvit train` and `cnnvit evaluate`
    leave them: predictions that give exactly the summaries' accuracies (the last epoch 1 pp lower)."""
    cfg = load_params(ROOT / "params.yaml").raw
    cfg["runs"].update(models=list(accs), recipes=["paper"], seeds=list(seeds))
    needed = [c.id for c in CLAIMS if all(m in accs for m in c.models)]
    cfg["analysis"]["claims"] = needed
    write_yaml(tmp_path / "params.yaml", cfg)
    rng = np.random.default_rng(0)
    labels = np.arange(n_test) % 10

    def logits_for(acc: float) -> np.ndarray:
        logits = rng.normal(size=(n_test, 10)).astype(np.float32)
        right = np.zeros(n_test, dtype=bool)
        right[rng.permutation(n_test)[: round(acc * n_test / 100)]] = True
        logits[np.arange(n_test), labels] = np.where(right, 10.0, -10.0)
        return logits

    for model, values in accs.items():
        for seed, acc in zip(seeds, values, strict=False):
            d = tmp_path / f"results/runs/{model}-paper-s{seed}"
            d.mkdir(parents=True)
            digest = f"{model}-{seed}-weights"  # what the weights file's sha256 would be
            summary = {
                "selected_test_acc": acc,
                "final_test_acc": acc - 1,
                "best_test_acc": acc + 0.5,
                "selected_epoch": 2,
                "weights_sha256": digest,
                "n_train": 45_000,
                "n_val": 5_000,
                "n_test": n_test,
            }
            (d / "summary.json").write_text(json.dumps({**summary, **(extra or {})}))
            (d / "metrics.csv").write_text(
                f"epoch,val_acc,test_acc\n1,{acc - 1},{acc + 0.5}\n2,{acc},{acc}\n3,{acc - 2},{acc - 1}\n"
            )
            e = tmp_path / f"results/eval/{model}-paper-s{seed}"
            e.mkdir(parents=True)
            (e / "evaluation.json").write_text(json.dumps({"run": f"{model}-paper-s{seed}", "weights_sha256": digest}))
            cells = [("clean", 0, acc)] + [(c, s, acc - 5 * s) for c in ("fog", "contrast") for s in (1, 2)]
            (e / "robustness.csv").write_text(
                "corruption,severity,acc,images\n" + "".join(f"{c},{s},{a},100\n" for c, s, a in cells)
            )
            heads = [(layer, head, 2.0 + layer + head) for layer in (1, 2) for head in (1, 2)] if "vit" in model else []
            (e / "attention.csv").write_text(
                "layer,head,distance_px\n" + "".join(f"{la},{h},{d}\n" for la, h, d in heads)
            )
            first = lambda a: np.arange(100) < round(a)  # noqa: E731 (right on the first a% of the 100 images)
            corrupted = np.array([[first(a) for c, s, a in cells[1:] if c == name] for name in ("fog", "contrast")])
            write_per_image(e / EVAL_PER_IMAGE, first(acc), corrupted, np.arange(100), ["fog", "contrast"], [1, 2])
            write_predictions(
                d / "predictions.npz", labels=labels, indices=np.arange(n_test), classes=np.array(list("abcdefghij")),
                selected_logits=logits_for(acc), final_logits=logits_for(acc - 1), selected_epoch=2, final_epoch=3,
                run=f"{model}-paper-s{seed}", weights_sha256=digest,
            )  # fmt: skip
    columns = "model,arch,size,params,flops_per_image,latency_ms_median,latency_ms_p95,throughput_images_per_s,batch,"
    (tmp_path / "cost.csv").write_text(
        columns
        + "inference_peak_mb,inference_step_mb,training_peak_mb,training_step_mb,device,threads\n"
        + "".join(f"{m},x,32,1000,2000,1.0,1.2,500,8,10,1,20,2,cpu,1\n" for m in accs)
    )
    return cfg


def collect(tmp_path, *sets: str) -> int:
    """`cnnvit collect` over what :func:`fabricate` left in ``tmp_path``: its exit code."""
    return main(
        [
            "collect",
            "--params",
            str(tmp_path / "params.yaml"),
            "--runs-dir",
            str(tmp_path / "results/runs"),
            "--out-dir",
            str(tmp_path / "tables"),
            "--eval-dir",
            str(tmp_path / "results/eval"),
            "--cost",
            str(tmp_path / "cost.csv"),
            *[a for s in sets for a in ("--set", s)],
        ]
    )
