"""The paper's published numbers, shipped as data, and the claims this pipeline tests.

Chai (2024), "Research on the performance of hybrid vision models based on ViT", Applied and
Computational Engineering 87. ``paper/epochs.csv`` holds Tables 1-3 cell by cell (one row per
model and epoch; empty = the paper printed nothing), ``paper/table4.csv`` Table 4. Nothing is
corrected: :data:`NOTES` records where the paper contradicts itself, and the report shows them
beside the comparisons they affect. Accuracies in percent.
"""

from __future__ import annotations

from importlib import resources

import pandas as pd

PACKAGE_DATA = ("epochs.csv", "table4.csv")  # read at run time, beside this file

# params.yaml model name -> the paper's table (Table 1: ViT, 2: ResNet50, 3: CNN+ViT)
TABLE_NUMBER = {"vit": 1, "resnet50": 2, "cnn_vit": 3}
PAPER_NAME = {"vit": "ViT", "resnet50": "ResNet50", "cnn_vit": "CNN+ViT"}

# (winner, loser, the paper's claim): each is judged from this run's numbers by cnnvit.analysis.verdicts.
CLAIMS = [
    ("resnet50", "vit", "ResNet50 beats ViT"),
    ("cnn_vit", "vit", "the CNN+ViT hybrid beats plain ViT"),
    ("resnet50", "cnn_vit", "ResNet50 beats the CNN+ViT hybrid"),
]

NOTES = {
    "vit": [
        "ViT's test loss in Table 1 is about 0.01 in every epoch but epoch 3 (1.4291): those cells look like "
        "a loss summed per batch and divided by the number of test images, about 1/128 of a per-image mean; "
        "epoch 3 looks like a per-image mean. Compare test losses on the per-image scale with care.",
        "ViT ran 16 epochs, but Table 1 has test figures for 15 (epoch 16 has training figures only).",
    ],
    "resnet50": [
        "Table 4 gives ResNet50's best accuracy as 78.35%, its last epoch (19); Table 2's highest test accuracy "
        "is 79.21%, at epoch 15.",
        "ResNet50's training accuracy is 63.59% in both epoch 3 and epoch 4 (likely a copying slip).",
    ],
    "cnn_vit": [
        "Table 3 has two columns only, a loss and an accuracy. The accuracy is taken as test accuracy "
        "(Table 4's 70.28% is its epoch 10); which split the loss is on is not said, so it is shown apart.",
    ],
    "all": [
        "The paper states that 20 epochs were preset for every model (§3); its tables stop at 16 (ViT), 19 "
        "(ResNet50) and 10 (CNN+ViT). The ResNet50 ran with Keras' EarlyStopping and ModelCheckpoint, the test "
        "set passed as validation data (§2.3), which may explain its 19; for the ViT and the hybrid the paper "
        "does not say why they stop.",
        "Each table is one run picked from several: the ViT was trained 20 times, the ResNet50 3 times and the "
        "hybrid 10 times, and 'the more complete data of them was recorded' (§3).",
        "The paper's times are wall-clock hours on Google Colab, evaluation included.",
    ],
}


def _read(name: str) -> pd.DataFrame:
    with resources.files(__package__).joinpath(name).open() as f:
        return pd.read_csv(f)


def paper_epochs() -> pd.DataFrame:
    """Tables 1-3: model, epoch, train_loss, train_acc, test_loss, test_acc, loss (NaN = not printed)."""
    return _read("epochs.csv")


def paper_table4() -> pd.DataFrame:
    """Table 4: model, training_time_h, epochs, best_test_acc."""
    return _read("table4.csv")


def paper_best_final() -> pd.DataFrame:
    """Per model: Table 4's best, and from Tables 1-3 the highest test accuracy, its epoch, and the
    last printed test accuracy."""
    ep = paper_epochs().dropna(subset=["test_acc"])
    t4 = paper_table4().set_index("model")
    rows = []
    for model, g in ep.groupby("model", sort=False):
        top = g.loc[g.test_acc.idxmax()]
        rows.append(
            {
                "model": model,
                "table4_best": t4.loc[model, "best_test_acc"],
                "best": top.test_acc,
                "best_epoch": int(top.epoch),
                "final": g.test_acc.iloc[-1],
                "final_epoch": int(g.epoch.iloc[-1]),
                "epochs": int(t4.loc[model, "epochs"]),
                "hours": t4.loc[model, "training_time_h"],
            }
        )
    return pd.DataFrame(rows)


def paper_gaps() -> dict[tuple[str, str], float]:
    """The paper's gap in pp for each claim, from Table 4's best accuracies."""
    best = paper_table4().set_index("model")["best_test_acc"]
    return {(win, lose): round(float(best[win] - best[lose]), 2) for win, lose, _ in CLAIMS}
