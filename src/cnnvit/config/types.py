"""The typed configs that params.yaml resolves to, built once by :mod:`cnnvit.config.load`.

    Params      # the whole file: .runs() lists every run, .run_config(run) resolves one
    RunSpec     # one point of models x recipes x train_fractions x seeds; .name is its directory
    RunConfig   # everything one training reads; .identity() is what makes its numbers what they are
    Recipe, Profile, Runtime, Data, Runs

Optional keys take their defaults here and nowhere else. Model entries are the arch dataclasses
of :mod:`cnnvit.models.specs`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from cnnvit.errors import CnnvitError
from cnnvit.models.specs import ArchSpec


@dataclass(frozen=True)
class Data:
    url: str
    format: str
    expect_train: int
    expect_test: int
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
    fraction_budget: str = "steps"


@dataclass(frozen=True)
class Runtime:
    device: str = "auto"
    threads: int = 1
    precision: str = "fp32"
    compile: bool = False
    eval_batch_size: int = 1000


@dataclass(frozen=True)
class Recipe:
    optimizer: str
    lr: float
    weight_decay: float
    batch_size: int
    schedule: str
    warmup_epochs: float
    label_smoothing: float
    crop_padding: int
    flip: bool
    normalize: str = "meanstd"
    grad_clip: float | None = None
    layer_decay: float | None = None
    momentum: float = 0.9  # sgd only


@dataclass(frozen=True)
class Profile:
    train_size: int
    test_size: int
    epochs: int
    models: dict[str, ArchSpec] = field(hash=False)
    minutes_per_epoch: float = 10.0  # a scheduling estimate for a cluster's time limit


@dataclass(frozen=True, order=True)
class RunSpec:
    """One training run: a point of the models x recipes x train_fractions x seeds grid."""

    model: str
    recipe: str
    seed: int
    fraction: float = 1.0

    @property
    def name(self) -> str:
        if self.fraction == 1.0:
            return f"{self.model}-{self.recipe}-s{self.seed}"
        return f"{self.model}-{self.recipe}-f{self.fraction}-s{self.seed}"  # str(): as DVC writes it


@dataclass(frozen=True)
class RunConfig:
    """Everything one training reads. ``identity()`` is what makes its numbers what they are."""

    run: RunSpec
    profile: str
    model: ArchSpec
    recipe: Recipe
    epochs: int  # after the fraction budget
    train_size: int  # the profile's (0 = all); the run trains on `fraction` of it
    test_size: int
    runtime: Runtime

    @property
    def name(self) -> str:
        return self.run.name

    @property
    def eval_every(self) -> int:
        """A fraction trained for more epochs is still evaluated about `profile epochs` times."""
        return max(1, round(self.run.fraction**-1)) if self.epochs > 1 and self.run.fraction < 1 else 1

    def identity(self) -> dict:
        """The run's config without the runtime settings that do not change its numbers."""
        out = dataclasses.asdict(self)
        out["model"] = self.model.to_dict()
        out["precision"] = out.pop("runtime")["precision"]
        return out

    def to_dict(self) -> dict:
        return {**self.identity(), "name": self.name, "runtime": dataclasses.asdict(self.runtime)}


@dataclass(frozen=True)
class Params:
    raw: dict = field(hash=False, repr=False)  # the validated params, as a plain dict
    profile: str
    data: Data
    runs_: Runs
    runtime: Runtime
    recipes: dict[str, Recipe] = field(hash=False)
    profiles: dict[str, Profile] = field(hash=False)

    @property
    def active(self) -> Profile:
        return self.profiles[self.profile]

    def runs(self) -> list[RunSpec]:
        r = self.runs_
        return [RunSpec(m, rc, s, f) for m in r.models for rc in r.recipes for f in r.train_fractions for s in r.seeds]

    def run_config(self, run: RunSpec) -> RunConfig:
        prof = self.active
        if run.model not in prof.models:
            known = ", ".join(sorted(prof.models))
            raise CnnvitError(
                f"unknown model {run.model!r} in profile {self.profile!r}; known models: {known} "
                f"(define profiles.{self.profile}.models.{run.model} in params.yaml to add one)"
            )
        if run.recipe not in self.recipes:
            raise CnnvitError(f"unknown recipe {run.recipe!r}; known recipes: {', '.join(sorted(self.recipes))}")
        if not 0 < run.fraction <= 1:
            raise CnnvitError(f"fraction {run.fraction} is outside (0, 1]: fix runs.train_fractions")
        epochs = prof.epochs
        if run.fraction < 1 and self.runs_.fraction_budget == "steps":
            epochs = max(1, round(prof.epochs / run.fraction))
        return RunConfig(
            run,
            self.profile,
            prof.models[run.model],
            self.recipes[run.recipe],
            epochs,
            prof.train_size,
            prof.test_size,
            self.runtime,
        )
