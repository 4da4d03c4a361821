"""What a run's per-image test predictions (``predictions.npz``) say beyond accuracy.

    right = correct(preds, "selected")                  # bool per test image at that epoch
    expected_calibration_error(softmax(logits), labels)  # in cnnvit.stats.claims
    per_class(runs) / confusion(runs)                    # tables, pooled over seeds

All runs of one preset are scored on the same test images (drawn with the prepared data's own
seed), which is what lets two models be compared image by image within a seed.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from cnnvit.errors import CnnvitError
from cnnvit.stats.intervals import expected_calibration_error


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = np.exp(z - z.max(1, keepdims=True))
    return z / z.sum(1, keepdims=True)


def correct(preds: Mapping[str, np.ndarray], metric: str) -> np.ndarray:
    """Per test image, whether the prediction at ``metric``'s epoch (selected or final) was right."""
    return preds[f"{metric}_logits"].argmax(1) == preds["labels"]


def calibration(preds: Mapping[str, np.ndarray]) -> dict[str, float]:
    """ECE (15 bins, %) of the selected and final epochs' predictions."""
    return {
        f"{m}_ece": expected_calibration_error(softmax(preds[f"{m}_logits"]), preds["labels"])
        for m in ("selected", "final")
    }


def check_same_images(preds: Mapping[str, Mapping[str, np.ndarray]]) -> None:
    """Runs compared image by image must have been scored on the same test images."""
    first = None
    for run, p in preds.items():
        if first is None:
            first = (run, p["indices"])
        elif not np.array_equal(first[1], p["indices"]):
            raise CnnvitError(
                f"runs {first[0]} and {run} were scored on different test images: they were trained on other "
                "prepared data or another test_size; train them again with the current params"
            )


def per_class(preds: Mapping[tuple[str, str, int], Mapping[str, np.ndarray]], metric: str) -> pd.DataFrame:
    """Accuracy per class, per model x recipe: mean over seeds, and the sample std."""
    rows = []
    for (model, recipe, seed), p in preds.items():
        right = correct(p, metric)
        for c, name in enumerate(p["classes"]):
            mine = p["labels"] == c
            rows.append(
                {"model": model, "recipe": recipe, "seed": seed, "class": str(name), "acc": 100 * right[mine].mean()}
            )
    df = pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame(columns=["model", "recipe", "class", "acc_mean", "acc_std", "seeds"])
    g = df.groupby(["model", "recipe", "class"], sort=False).acc
    return g.agg(acc_mean="mean", acc_std="std", seeds="count").reset_index()


def confusion(preds: Mapping[tuple[str, str, int], Mapping[str, np.ndarray]], metric: str) -> pd.DataFrame:
    """Confusion counts per model x recipe, pooled over seeds: (true class, predicted class, count)."""
    rows = []
    for (model, recipe, _seed), p in preds.items():
        k = len(p["classes"])
        counts = np.bincount(p["labels"].astype(int) * k + p[f"{metric}_logits"].argmax(1), minlength=k * k)
        names = [str(c) for c in p["classes"]]
        for i, n in enumerate(counts):
            rows.append(
                {"model": model, "recipe": recipe, "true": names[i // k], "predicted": names[i % k], "count": int(n)}
            )
    df = pd.DataFrame(rows, columns=["model", "recipe", "true", "predicted", "count"])
    return df.groupby(["model", "recipe", "true", "predicted"], sort=False, as_index=False)["count"].sum()
