"""What the paper says, in one place: its models, its published numbers and its claims.

Chai (2024), "Research on the performance of hybrid vision models based on ViT", Applied and
Computational Engineering 87. ``paper/epochs.csv`` holds Tables 1-3 cell by cell (one row per
model and epoch; empty = the paper printed nothing), ``paper/table4.csv`` Table 4. Nothing is
corrected: :data:`NOTES` records where the paper contradicts itself, and the report shows them
beside the comparisons they affect. Accuracies in percent.

    MODELS["vit"].display, MODELS["vit"].table     # "ViT", 1
    CLAIMS                                         # the claims this pipeline tests, with their sentences
    paper_gap(claim)                               # the paper's own gap for a claim, with its epochs
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # pandas is imported where the tables are read: the params loader reads CLAIMS
    import pandas as pd

PACKAGE_DATA = ("epochs.csv", "table4.csv")  # read at run time, beside this file
EQUAL_EPOCH = 10  # the last epoch all three of the paper's tables print a test accuracy for


@dataclass(frozen=True)
class PaperModel:
    """One of the paper's three models: its params.yaml name, the table it fills and what the
    paper says about how it was built and trained, with the section that says it."""

    key: str
    display: str
    role: Literal["cnn", "vit", "hybrid"]
    table: int  # Table 1-3 (Figures 3-5 are the same numbers drawn)
    section: str
    built: str  # how the paper describes the model
    test_loss_comparable: bool = True  # Table 1's ViT test loss is on another scale (NOTES)
    loss_split_stated: bool = True  # Table 3 prints one loss without saying on which split


MODELS: dict[str, PaperModel] = {
    m.key: m
    for m in (
        PaperModel(
            "vit",
            "ViT",
            "vit",
            1,
            "§2.2",
            "a PyTorch ViT, code from ChatGPT and timm's vision_transformer.py (patch, width, depth not stated)",
            test_loss_comparable=False,
        ),
        PaperModel(
            "resnet50",
            "ResNet50",
            "cnn",
            2,
            "§1, §2.3",
            "built by hand in Keras with a ResidualBlock function (§2.3; stem and widths not stated); §1 describes "
            "ResNet50 with batch normalization and pre-activation residual blocks; Keras defaults unless said",
        ),
        PaperModel(
            "cnn_vit",
            "CNN+ViT",
            "hybrid",
            3,
            "§1, §2.4",
            'a "variable convolutional layer" (§1 (a)); a three-layer CNN feeding timm\'s ViT, which "splits the '
            'image into blocks of a pre-set patch_size, in this case, 64" (§2.4); channels and strides not stated',
            loss_split_stated=False,
        ),
    )
}


@dataclass(frozen=True)
class Claim:
    """A claim of the paper, tested on ``a - b`` (test accuracy, pp) at equal epochs.

    ``superiority``: reproduced when the whole interval lies above 0, contradicted when below.
    ``non-inferiority``: "a comes close to b or exceeds it", with a margin (analysis.close_margin_pp):
    reproduced when the whole interval lies above -margin, contradicted when below."""

    id: str
    a: str
    b: str
    kind: Literal["superiority", "non-inferiority"]
    short: str
    text: str  # {margin} is filled in
    quote: str
    section: str

    def threshold(self, margin: float) -> float:
        return 0.0 if self.kind == "superiority" else -margin

    def statement(self, margin: float) -> str:
        return self.text.format(margin=f"{margin:g}")

    @property
    def models(self) -> tuple[str, str]:
        return self.a, self.b


# Views of MODELS for the code that only needs a name or a table number.
PAPER_NAME = {key: m.display for key, m in MODELS.items()}
TABLE_NUMBER = {key: m.table for key, m in MODELS.items()}
BY_ROLE = {m.role: key for key, m in MODELS.items()}
CNN, VIT, HYBRID = BY_ROLE["cnn"], BY_ROLE["vit"], BY_ROLE["hybrid"]

# Comparisons the paper never made, among its models: the corruption benchmark's (exploratory),
# each a - b, and the CNN whose errors the mCE is relative to (CIFAR-10-C's paper uses AlexNet).
ROBUSTNESS_BASELINE = CNN
ROBUSTNESS_PAIRS = (
    (VIT, CNN, f"{PAPER_NAME[VIT]} vs {PAPER_NAME[CNN]}"),
    (VIT, HYBRID, f"{PAPER_NAME[VIT]} vs the {PAPER_NAME[HYBRID]} hybrid"),
    (HYBRID, CNN, f"the {PAPER_NAME[HYBRID]} hybrid vs {PAPER_NAME[CNN]}"),
)

CLAIMS: tuple[Claim, ...] = (
    Claim(
        "hybrid_beats_vit",
        HYBRID,
        VIT,
        "superiority",
        "CNN+ViT above ViT",
        "CNN+ViT is more accurate than ViT",
        "CNN+ViT has exceeded the accuracy of the normal ViT model despite having the lowest number of traversals",
        "§3.4, §4",
    ),
    Claim(
        "resnet_beats_vit",
        CNN,
        VIT,
        "superiority",
        "ResNet50 above ViT",
        "ResNet50 is more accurate than ViT on CIFAR-10",
        "Our results are in line with Touvron et al. that the ResNet50 model performs well on small datasets such "
        "as CIFAR-10, while the ViT model performs better on much larger datasets",
        "§3.4, §4",
    ),
    Claim(
        "hybrid_near_resnet",
        HYBRID,
        CNN,
        "non-inferiority",
        "CNN+ViT close to ResNet50 at equal epochs",
        "At equal epochs CNN+ViT comes within {margin} pp of ResNet50, or exceeds it",
        "it is believed that if CNN+ViT can achieve the same number of training layers, its performance can be "
        "close to that of ResNet50 or even exceed it",
        "§3.4, and again §4",
    ),
)
CLAIM_IDS = tuple(c.id for c in CLAIMS)

# Table 4's comparison of ResNet50 and CNN+ViT: an observation at unequal epochs, never a verdict.
UNEQUAL_OBSERVATION = (
    "ResNet50 has the highest number of training traversals and also has the highest correctness rate",
    "§3.4",
)

NOTES = {
    "vit": [
        "ViT's test loss in Table 1 is about 0.01 in every epoch but epoch 3 (1.4291): those cells look like "
        "a loss summed per batch and divided by the number of test images, about 1/128 of a per-image mean; "
        "epoch 3 looks like a per-image mean. Compare test losses on the per-image scale with care.",
        "ViT ran 16 epochs, but Table 1 has test figures for 15 (epoch 16 has training figures only).",
    ],
    "resnet50": [
        "Table 4 gives ResNet50's accuracy as 78.35%, its last epoch (19); Table 2's highest test accuracy "
        "is 79.21%, at epoch 15.",
        "ResNet50's training accuracy is 63.59% in both epoch 3 and epoch 4 (likely a copying slip).",
    ],
    "cnn_vit": [
        "Table 3 has two columns only, a loss and an accuracy. The accuracy is taken as test accuracy "
        "(Table 4's 70.28% is its epoch 10); which split the loss is on is not said, so it is shown apart.",
    ],
    "all": [
        "Table 4's 'maximum accuracy (test set)' is, for all three models, the last test accuracy their tables "
        "print (ViT epoch 15, ResNet50 epoch 19, CNN+ViT epoch 10), not the highest: it is read here as a "
        "last-epoch value and set beside this run's last epoch.",
        "The paper states that 20 epochs were preset for every model (§3); its tables stop at 16 (ViT), 19 "
        "(ResNet50) and 10 (CNN+ViT). The ResNet50 ran with Keras' EarlyStopping and ModelCheckpoint, the test "
        "set passed as validation data (§2.3), which may explain its 19; for the ViT and the hybrid the paper "
        "does not say why they stop.",
        "The paper trained the ViT 20 times, the ResNet50 3 times and the hybrid 10 times and recorded 'the more "
        "complete data of them' (§3): one run each, and it does not say how that run was chosen.",
        "The paper's times are wall-clock hours on Google Colab, evaluation included; they imply other model or "
        "input sizes than any preset here (a ViT-S epoch on 45,000 32x32 images takes minutes on a Colab GPU, "
        "not 26).",
    ],
}


def _read(name: str) -> pd.DataFrame:
    import pandas as pd

    with resources.files(__package__).joinpath(name).open() as f:
        return pd.read_csv(f)


@cache
def paper_epochs() -> pd.DataFrame:
    """Tables 1-3: model, epoch, train_loss, train_acc, test_loss, test_acc, loss (NaN = not printed)."""
    return _read("epochs.csv")


@cache
def paper_table4() -> pd.DataFrame:
    """Table 4: model, training_time_h, epochs, best_test_acc (as printed: 'maximum accuracy')."""
    return _read("table4.csv")


def paper_best_final() -> pd.DataFrame:
    """Per model: Table 4's value, and from Tables 1-3 the highest test accuracy, its epoch, and the
    last printed test accuracy and its epoch (which Table 4's value is)."""
    ep = paper_epochs().dropna(subset=["test_acc"])
    t4 = paper_table4().set_index("model")
    rows = []
    for model, g in ep.groupby("model", sort=False):
        top = g.loc[g.test_acc.idxmax()]
        rows.append(
            {
                "model": model,
                "table4": t4.loc[model, "best_test_acc"],
                "best": top.test_acc,
                "best_epoch": int(top.epoch),
                "final": g.test_acc.iloc[-1],
                "final_epoch": int(g.epoch.iloc[-1]),
                "epochs": int(t4.loc[model, "epochs"]),
                "hours": t4.loc[model, "training_time_h"],
            }
        )
    import pandas as pd

    return pd.DataFrame(rows)


def accuracy_at(model: str, epoch: int) -> float:
    """The paper's test accuracy of ``model`` at ``epoch`` (Tables 1-3)."""
    ep = paper_epochs()
    row = ep[(ep.model == model) & (ep.epoch == epoch)]
    return float(row.test_acc.iloc[0]) if len(row) else float("nan")


@dataclass(frozen=True)
class PaperGap:
    """The paper's own a - b for a claim: at equal epochs (Tables 1-3 at EQUAL_EPOCH) and as
    Table 4 prints it (each model's last epoch, so at unequal epochs)."""

    equal: float
    equal_epoch: int
    table4: float
    table4_epochs: str  # "10 vs 19": a's epochs vs b's
    acc_a: float  # at equal epochs
    acc_b: float


def paper_gap(claim: Claim) -> PaperGap:
    t4 = paper_best_final().set_index("model")
    a, b = claim.a, claim.b
    acc_a, acc_b = accuracy_at(a, EQUAL_EPOCH), accuracy_at(b, EQUAL_EPOCH)
    return PaperGap(
        equal=round(acc_a - acc_b, 2),
        equal_epoch=EQUAL_EPOCH,
        table4=round(float(t4.loc[a, "table4"] - t4.loc[b, "table4"]), 2),
        table4_epochs=f"{int(t4.loc[a, 'final_epoch'])} vs {int(t4.loc[b, 'final_epoch'])}",
        acc_a=acc_a,
        acc_b=acc_b,
    )


def unequal_observation() -> str:
    """Table 4's "ResNet50 above CNN+ViT", told as what it is: a comparison at unequal epochs, with
    the equal-epoch comparison the paper's own Tables 2 and 3 allow."""
    t4 = paper_best_final().set_index("model")
    r, h = t4.loc[CNN], t4.loc[HYBRID]
    eq_r, eq_h = accuracy_at(CNN, EQUAL_EPOCH), accuracy_at(HYBRID, EQUAL_EPOCH)
    cnn, hybrid = PAPER_NAME[CNN], PAPER_NAME[HYBRID]
    return (
        f'Table 4 observes that "{UNEQUAL_OBSERVATION[0]}" ({UNEQUAL_OBSERVATION[1]}): {cnn} {r.table4:.2f}% after '
        f"{int(r.final_epoch)} epochs against {hybrid} {h.table4:.2f}% after {int(h.final_epoch)}, a comparison at "
        f"unequal epochs ({int(r.final_epoch)} vs {int(h.final_epoch)}), which this pipeline does not test: its runs "
        f"train every model for the same epochs. At equal epochs the paper's own Tables {MODELS[CNN].table} and "
        f"{MODELS[HYBRID].table} give {cnn} {eq_r:.2f}% and {hybrid} {eq_h:.2f}% at epoch {EQUAL_EPOCH} "
        f"({eq_h - eq_r:+.2f} pp), the comparison its conjecture is about."
    )
