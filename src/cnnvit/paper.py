"""The paper's published numbers, shipped as data (``cnnvit/paper/*.csv``), and the claims to test.

Chai (2024), "Research on the performance of hybrid vision models based on ViT",
Applied and Computational Engineering 87. Accuracies are in percent.
"""

from __future__ import annotations

from importlib import resources

import pandas as pd

DISPLAY = {"vit": "ViT", "resnet50": "ResNet50", "cnn_vit": "CNN+ViT", "convnext": "ConvNeXt"}
TABLE_NUMBER = {"vit": 1, "resnet50": 2, "cnn_vit": 3}

# (winner, loser, the paper's sentence): each is checked against this run's numbers.
CLAIMS = [
    ("resnet50", "vit", "ResNet50 beats ViT on CIFAR-10"),
    ("cnn_vit", "vit", "the CNN+ViT hybrid beats plain ViT"),
    ("resnet50", "cnn_vit", "ResNet50 beats the CNN+ViT hybrid"),
]


def _read(name: str) -> pd.DataFrame:
    with resources.files("cnnvit").joinpath("paper", name).open() as f:
        return pd.read_csv(f)


def paper_table4() -> pd.DataFrame:
    return _read("table4.csv")


def paper_epochs() -> pd.DataFrame:
    return _read("epochs.csv")
