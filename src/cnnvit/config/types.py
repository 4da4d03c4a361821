"""The typed config: every key of params.yaml, its type, the values it allows, its bounds, its
default and a one-line description, in one place. ``cnnvit schema`` writes params.schema.json
from these classes (:mod:`cnnvit.config.schema`), and :mod:`cnnvit.config.load` builds them.

    Params      # the whole file: .runs (the active preset's runs), .all_runs()
    RunSpec     # one point of models x recipes x train_fractions x seeds; .name is its directory
    RunConfig   # everything one training reads (see cnnvit.config.runs); .identity() is what makes
                # its numbers what they are
    Data, Runs, Runtime, Analysis, Robustness, Cost, Recipe, Preset   # one class per section

A key is a field whose ``metadata=`` is :func:`cnnvit.config.keys.key`: its ``Literal`` (or type)
gives the values it allows, its metadata the rest (which a run's code identity leaves out, so
that a description or a bound can change without retraining). Every key must be in params.yaml:
DVC tracks params.yaml, so a value that lived only here would be invisible to it. A default is
documentation: the schema shows it, and the loader quotes it when the key is missing. Model
entries stay the validated dicts of params.yaml; :mod:`cnnvit.models` turns one into its typed
spec when a run is resolved, so that loading params does not import the model code.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from cnnvit.config.keys import CROP, FRACTION, POS, SEED, SHA256, SIZE, key

if TYPE_CHECKING:  # the annotation only: importing the models here would make every stage depend on them
    from cnnvit.models import ArchSpec

Format = Literal["cifar10-python", "imagefolder"]
FractionBudget = Literal["steps", "epochs"]
Device = Literal["auto", "cpu", "cuda", "mps"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
Auto = Literal["auto"]
# torch.compile's modes; true is "default", false is eager
Compile = Literal[False, True, "default", "reduce-overhead", "max-autotune"]
GroupSeeds = Literal["auto", True, False]
Optimizer = Literal["adam", "adamw", "sgd"]
Schedule = Literal["constant", "cosine", "linear"]
Normalize = Literal["meanstd", "unit"]
VerdictMetric = Literal["selected", "final"]
Hardware = Literal["cpu", "gpu"]
# cnnvit.measure.corruptions.CORRUPTIONS, in CIFAR-10-C's order (a test holds the two lists together)
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


# ----------------------------------------------------------------------------- the sections


@dataclass(frozen=True, kw_only=True)
class Data:
    """Where the data set comes from, and the validation split carved out of its training split."""

    url: str = field(metadata=key("the archive: https://, file:// or a local path", minLength=1))
    md5: str | None = field(default=None, metadata=key("the archive's md5 (hex)", pattern="^[0-9a-f]{32}$"))
    sha256: str | None = field(
        default=None, metadata=key("the archive's sha256 (hex); checked instead of md5 when set", pattern=SHA256)
    )
    format: Format = field(metadata=key("cifar10-python (the official archive) or imagefolder (<split>/<class>/*.png)"))
    expect_train: int = field(metadata=key("images of the training split, checked (0 = do not check)", minimum=0))
    expect_test: int = field(metadata=key("images of the test split, checked (0 = do not check)", minimum=0))
    val_size: int = field(metadata=key("validation images carved (stratified) out of the training split", minimum=1))
    val_seed: int = field(metadata=key("draws the carve and every run's validation and test subsets", **SEED))

    @property
    def checksum(self) -> tuple[str, str]:
        """(algorithm, hex digest): sha256 when set, else md5."""
        return ("sha256", self.sha256) if self.sha256 else ("md5", self.md5 or "")


@dataclass(frozen=True, kw_only=True)
class Runs:
    """What to train: models x recipes x train_fractions x seeds (a preset may override any key)."""

    models: tuple[str, ...] = field(metadata=key("names of the active preset's models", each="name"))
    recipes: tuple[str, ...] = field(metadata=key("names of recipes", each="name"))
    seeds: tuple[int, ...] = field(metadata=key("a run each: its initialisation, data order, subsets", items=SEED))
    train_fractions: tuple[float, ...] = field(
        default=(1.0,), metadata=key("nested, stratified subsets of the training set", items=FRACTION)
    )
    fraction_budget: FractionBudget = field(
        default="steps", metadata=key("a fraction f trains epochs/f epochs (steps) or the preset's epochs (epochs)")
    )


@dataclass(frozen=True, kw_only=True)
class Runtime:
    """How a job runs: only precision changes what a run computes."""

    device: Device = field(default="auto", metadata=key("auto: CUDA, then Apple's MPS, then the CPU"))
    threads: int = field(
        default=1, metadata=key("CPU threads a training job; on a CPU the numbers depend on it", minimum=1)
    )
    precision: Precision = field(
        default="auto",
        metadata=key(
            "auto: bf16 autocast on a CUDA GPU that has it, else fp32 (TF32 on CUDA); part of a run's identity"
        ),
    )
    compile: Compile = field(default=False, metadata=key("torch.compile with this mode (true = default); false: eager"))
    eval_batch_size: int | Auto = field(
        default="auto", metadata=key("images per batch when evaluating; auto: 128 on a CPU, 1000 on a GPU", minimum=1)
    )
    runs_per_gpu: int = field(default=1, metadata=key("trainings that share one GPU", minimum=1))
    group_seeds: GroupSeeds = field(
        default="auto",
        metadata=key(
            "Snakemake: true, one job trains every seed of a group in turn; false, a job per run; auto: grouped "
            "when the groups fill each lane that runs at once at least twice"
        ),
    )
    checkpoint_every_s: float = field(
        default=300, metadata=key("seconds of training between checkpoints (0: every evaluated epoch)", minimum=0)
    )


@dataclass(frozen=True, kw_only=True)
class Analysis:
    """How the verdicts are reached (cnnvit collect)."""

    metric: VerdictMetric = field(
        default="selected",
        metadata=key("the test accuracy at the epoch chosen on validation (selected) or at the last (final)"),
    )
    claims: tuple[str, ...] = field(
        metadata=key("the paper's claims to test, one family; each needs both its models", each="claim", minItems=0)
    )
    close_margin_pp: float = field(
        default=2.0, metadata=key("how far below ResNet50 CNN+ViT is still 'close' (pp)", minimum=0)
    )


@dataclass(frozen=True, kw_only=True)
class Robustness:
    """The corruption benchmark (cnnvit corrupt, cnnvit evaluate): CIFAR-10-C's corruptions of the test images."""

    corruptions: tuple[Corruption, ...] = field(metadata=key("CIFAR-10-C's corruptions to apply (all but frost)"))
    severities: tuple[Severity, ...] = field(metadata=key("CIFAR-10-C's severities, 1 (mild) to 5"))
    seed: int = field(default=0, metadata=key("draws every corruption's noise, the same for every run", **SEED))


@dataclass(frozen=True, kw_only=True)
class Cost:
    """What each model costs to run (cnnvit cost)."""

    sizes: tuple[int, ...] = field(
        metadata=key("input sizes (pixels, upsampled) of latency and FLOPs; must include 32", items=SIZE)
    )
    batch: int = field(default=256, metadata=key("the batch of the throughput and memory measurements", minimum=1))


@dataclass(frozen=True, kw_only=True)
class Recipe:
    """How a model is trained: optimizer, schedule, augmentation, input scaling."""

    optimizer: Optimizer = field(metadata=key("adam, adamw (decoupled weight decay) or sgd (with momentum)"))
    lr: float = field(metadata=key("the peak learning rate", exclusiveMinimum=0))
    weight_decay: float = field(default=0.0, metadata=key("L2 (adam, sgd) or decoupled (adamw)", minimum=0))
    momentum: float = field(default=0.9, metadata=key("sgd's momentum (the others ignore it)", minimum=0, maximum=1))
    batch_size: int = field(metadata=key("images per optimizer step", minimum=1))
    schedule: Schedule = field(
        default="constant", metadata=key("after the warm-up: constant, cosine decay to 0 or linear decay to 0")
    )
    warmup_epochs: float = field(default=0.0, metadata=key("epochs of linear warm-up from 0", minimum=0))
    label_smoothing: float = field(default=0.0, metadata=key("cross-entropy label smoothing", minimum=0, maximum=1))
    crop_padding: int = field(default=0, metadata=key("random crop after padding this many pixels (0 = none)", **CROP))
    flip: bool = field(default=False, metadata=key("random horizontal flips"))
    grad_clip: float | None = field(default=None, metadata=key("clip the gradient's norm at this (null = off)", **POS))
    normalize: Normalize = field(
        default="meanstd", metadata=key("meanstd: (x/255 - train mean) / train std; unit: x/255 in [0, 1]")
    )
    layer_decay: float | None = field(
        default=None, metadata=key("layer-wise LR decay (null = off)", exclusiveMinimum=0, maximum=1)
    )


@dataclass(frozen=True, kw_only=True)
class Preset:
    """A size of the study: how much data, how many epochs, which models at which widths."""

    hardware: Hardware = field(metadata=key("what the preset is sized for: gpu or cpu (a CPU within an hour)"))
    train_size: int = field(metadata=key("training images, a subset drawn by the run's seed (0 = all)", minimum=0))
    val_size: int = field(metadata=key("validation images, the same subset for every run (0 = all)", minimum=0))
    test_size: int = field(metadata=key("test images, the same subset for every run (0 = all)", minimum=0))
    epochs: int = field(metadata=key("epochs a run (on the whole training set)", minimum=1))
    robustness_images: int = field(
        default=0, metadata=key("test images of the corruption benchmark (0 = all the preset's)", minimum=0)
    )
    attention_images: int = field(default=64, metadata=key("test images attention distances average over", minimum=1))
    minutes_per_epoch: float = field(default=10.0, metadata=key("a cluster's time limit per epoch of a run", **POS))
    mem_mb: int = field(default=16000, metadata=key("memory a training job asks a cluster for", minimum=100))
    budget_minutes: int | None = field(
        default=None,
        metadata=key(
            "the wall time it is sized for on its hardware: the plan warns past 1.5x (null = none)", minimum=1
        ),
    )
    runs: dict[str, Any] = field(
        default_factory=dict,
        hash=False,
        metadata=key("the keys of the top-level runs: this preset overrides ({} = none)", ref="runs_override"),
    )
    models: dict[str, dict] = field(hash=False, metadata=key("name -> arch and its keys (cnnvit.models)", each="model"))


# ----------------------------------------------------------------------------- runs


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


# ----------------------------------------------------------------------------- the whole file


@dataclass(frozen=True, kw_only=True)
class Params:
    """cnnvit's parameters: data -> runs (what to train) -> recipes (how) -> presets (at what size)."""

    # the checked file as a plain dict (the top-level runs: and each preset's runs: as written)
    raw: dict = field(hash=False, repr=False, metadata={"derived": True})
    preset: str = field(metadata=key("which of presets: to run", ref="name"))
    data: Data = field(metadata=key("where CIFAR-10 comes from, and the validation split carved out of it"))
    # the active preset's runs: the top-level runs: with its presets.<preset>.runs: over them
    runs: Runs = field(metadata=key("what to train, for every preset that does not override it (presets.<name>.runs)"))
    analysis: Analysis = field(metadata=key("how the verdicts are reached (cnnvit collect)"))
    robustness: Robustness = field(
        metadata=key("the corruption benchmark: CIFAR-10-C's corruptions of the test images")
    )
    cost: Cost = field(metadata=key("what each model costs to run (cnnvit cost)"))
    runtime: Runtime = field(metadata=key("how a job runs; only precision changes what a run computes"))
    recipes: dict[str, Recipe] = field(hash=False, metadata=key("recipe name -> how to train"))
    presets: dict[str, Preset] = field(hash=False, metadata=key("preset name -> the size of the study"))

    @property
    def active(self) -> Preset:
        return self.presets[self.preset]

    def all_runs(self) -> list[RunSpec]:
        r = self.runs
        return [RunSpec(m, rc, s, f) for m in r.models for rc in r.recipes for f in r.train_fractions for s in r.seeds]
