"""The typed configs that params.yaml resolves to, built once by :mod:`cnnvit.config.load`.

    Params      # the whole file: .all_runs() lists every run
    RunSpec     # one point of models x recipes x train_fractions x seeds; .name is its directory
    RunConfig   # everything one training reads (see cnnvit.config.runs); .identity() is what makes
                # its numbers what they are
    Recipe, Preset, Runtime, Data, Runs, Analysis, Robustness, Cost

Optional keys take their defaults here and nowhere else; the values a key allows are the
``Literal`` of its field (a test holds the schema's enums to them). Model entries stay the
validated dicts of params.yaml here; :mod:`cnnvit.models` turns one into its typed spec when a
run is resolved, so that loading params does not import the model code.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # the annotation only: importing the models here would make every stage depend on them
    from cnnvit.models import ArchSpec

Format = Literal["cifar10-python", "imagefolder"]
FractionBudget = Literal["steps", "epochs"]
Device = Literal["auto", "cpu", "cuda", "mps"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
# torch.compile's modes; true is "default", false is eager
Compile = Literal[False, True, "default", "reduce-overhead", "max-autotune"]
Optimizer = Literal["adam", "adamw", "sgd"]
Schedule = Literal["constant", "cosine", "linear"]
Normalize = Literal["meanstd", "unit"]
VerdictMetric = Literal["selected", "final"]
# cnnvit.measure.corruptions.CORRUPTIONS, in CIFAR-10-C's order (a test holds the three lists together)
Corruption = Literal[
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "fog", "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression",
]  # fmt: skip
Severity = Literal[1, 2, 3, 4, 5]


def resolves_to(setting: str, precision: str | None) -> bool:
    """Whether a run trained in ``precision`` (as resolved on its device) is what the setting
    ``runtime.precision`` asks for: auto is any, fp32 includes TF32 on CUDA."""
    return setting == "auto" or precision == setting or (setting, precision) == ("fp32", "tf32")


# A run's name, which is also its directory under results/runs/: its group's (the runs that
# differ only in the seed, which a Snakemake job trains together) and the seed.
GROUP_NAME = "{model}-{recipe}"
GROUP_NAME_FRACTION = "{model}-{recipe}-f{fraction}"
SEED_SUFFIX = "-s{seed}"


def group_name(model: str, recipe: str, fraction: object = None) -> str:
    """``fraction`` None (or 1.0) names a group on the whole training set."""
    whole = fraction is None or fraction == 1.0
    return (GROUP_NAME if whole else GROUP_NAME_FRACTION).format(model=model, recipe=recipe, fraction=fraction)


def run_name(model: str, recipe: str, seed: object, fraction: object = None) -> str:
    return group_name(model, recipe, fraction) + SEED_SUFFIX.format(seed=seed)


@dataclass(frozen=True)
class Data:
    url: str
    format: Format
    expect_train: int
    expect_test: int
    val_size: int  # carved out of the training split by `cnnvit prepare`
    val_seed: int  # draws the carve and every run's validation and test subsets
    md5: str | None = None
    sha256: str | None = None

    @property
    def checksum(self) -> tuple[str, str]:
        """(algorithm, hex digest): sha256 when set, else md5."""
        return ("sha256", self.sha256) if self.sha256 else ("md5", self.md5 or "")


@dataclass(frozen=True)
class Runs:
    models: tuple[str, ...]
    recipes: tuple[str, ...]
    seeds: tuple[int, ...]
    train_fractions: tuple[float, ...] = (1.0,)
    fraction_budget: FractionBudget = "steps"


@dataclass(frozen=True)
class Runtime:
    device: Device = "auto"
    threads: int = 1
    precision: Precision = "auto"  # a run's config holds it resolved (fp32, tf32, bf16 or fp16)
    compile: Compile = False
    eval_batch_size: int = 1000
    runs_per_gpu: int = 1
    group_seeds: bool = True
    checkpoint_every_s: float = 300  # seconds of training between checkpoints (0: every evaluated epoch)


@dataclass(frozen=True)
class Analysis:
    metric: VerdictMetric  # the test accuracy the verdicts use: at the epoch chosen on validation, or the last
    claims: tuple[str, ...]  # ids of cnnvit.paper.CLAIMS: one family
    close_margin_pp: float  # "close to ResNet50": the non-inferiority margin of hybrid_near_resnet


@dataclass(frozen=True)
class Robustness:
    corruptions: tuple[Corruption, ...]
    severities: tuple[Severity, ...]
    seed: int  # draws every corruption's noise, the same for every run


@dataclass(frozen=True)
class Cost:
    sizes: tuple[int, ...]  # input sizes the latency and FLOPs are measured at (upsampled)
    batch: int  # the large batch of the throughput and memory measurements


@dataclass(frozen=True)
class Recipe:
    optimizer: Optimizer
    lr: float
    weight_decay: float
    batch_size: int
    schedule: Schedule
    warmup_epochs: float
    label_smoothing: float
    crop_padding: int
    flip: bool
    normalize: Normalize = "meanstd"
    grad_clip: float | None = None
    layer_decay: float | None = None
    momentum: float = 0.9  # sgd only


@dataclass(frozen=True)
class Preset:
    train_size: int
    val_size: int
    test_size: int
    epochs: int
    models: dict[str, dict] = field(hash=False)  # model name -> its checked params.yaml entry
    robustness_images: int = 0  # test images the corruption benchmark uses (0 = all of the preset's)
    attention_images: int = 64  # test images the attention distances are averaged over
    minutes_per_epoch: float = 10.0  # a scheduling estimate for a cluster's time limit
    mem_mb: int = 16000  # what a training job asks a cluster for


@dataclass(frozen=True, order=True)
class RunSpec:
    """One training run: a point of the models x recipes x train_fractions x seeds grid."""

    model: str
    recipe: str
    seed: int
    fraction: float = 1.0

    @property
    def name(self) -> str:
        return run_name(self.model, self.recipe, self.seed, self.fraction)  # str(fraction): as DVC writes it


def pretrained_sha256(name: str) -> str:
    """The sha256 of a local pretrained weights file, or one line saying it is not there."""
    from pathlib import Path

    from cnnvit.errors import CnnvitError
    from cnnvit.files import file_sha256

    path = Path(name).expanduser()
    if not path.is_file():
        raise CnnvitError(f"pretrained weights {path} not found: fix the model's pretrained entry")
    return file_sha256(path)


@dataclass(frozen=True)
class RunConfig:
    """Everything one training reads. ``identity()`` is what makes its numbers what they are."""

    run: RunSpec
    preset: str
    model: ArchSpec
    recipe: Recipe
    epochs: int  # after the fraction budget
    train_size: int  # the preset's (0 = all); the run trains on `fraction` of it
    val_size: int  # the preset's subset of the validation split (0 = all), the same for every run
    test_size: int
    runtime: Runtime
    # runtime.precision as resolved for the device the run trains on (fp32, tf32, bf16, fp16),
    # set by the train stage (cnnvit.training.device.resolve_precision); None until then
    precision: str | None = None

    @property
    def name(self) -> str:
        return self.run.name

    @property
    def eval_every(self) -> int:
        """A fraction trained for more epochs is still evaluated about `preset epochs` times."""
        return max(1, round(self.run.fraction**-1)) if self.epochs > 1 and self.run.fraction < 1 else 1

    def identity(self) -> dict:
        """The run's config without the runtime settings that do not change its numbers, and the
        sha256 of the pretrained weights it starts from (a local file): new weights at the same
        path are another run."""
        out = dataclasses.asdict(self)
        out["model"] = self.model.to_dict()
        out["precision"] = self.precision or out.pop("runtime")["precision"]
        out.pop("runtime", None)
        if self.model.pretrained and not self.model.pretrained.startswith("hf-hub:"):
            out["pretrained_sha256"] = pretrained_sha256(self.model.pretrained)
        return out

    def to_dict(self) -> dict:
        return {**self.identity(), "name": self.name, "runtime": dataclasses.asdict(self.runtime)}


@dataclass(frozen=True)
class Params:
    raw: dict = field(hash=False, repr=False)  # the validated params, as a plain dict
    preset: str
    data: Data
    runs: Runs
    runtime: Runtime
    analysis: Analysis
    robustness: Robustness
    cost: Cost
    recipes: dict[str, Recipe] = field(hash=False)
    presets: dict[str, Preset] = field(hash=False)

    @property
    def active(self) -> Preset:
        return self.presets[self.preset]

    def all_runs(self) -> list[RunSpec]:
        r = self.runs
        return [RunSpec(m, rc, s, f) for m in r.models for rc in r.recipes for f in r.train_fractions for s in r.seeds]
