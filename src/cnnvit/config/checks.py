"""The checks of params.yaml that JSON Schema cannot express: names that must refer to something
(the preset, each run's recipe and model, the claims' models), fractions and test subsets bounded
by the data. Each raises one line naming the dotted key and the fix.

    cross_references(cfg, "params.yaml")      # after the schema check, on the checked dict
    effective_runs(cfg)                       # the active preset's runs, as a dict
"""

from __future__ import annotations

import math

from cnnvit.cifar import NUM_CLASSES, subset_size
from cnnvit.errors import CnnvitError


def effective_runs(cfg: dict) -> dict:
    """The runs the active preset trains: the top-level ``runs:`` with the preset's ``runs:`` over them."""
    return {**cfg["runs"], **cfg["presets"][cfg["preset"]]["runs"]}


def runs_key(cfg: dict, key: str) -> str:
    """Where the active preset's runs take ``key`` from: its own runs: or the top-level one."""
    preset = cfg["preset"]
    return f"presets.{preset}.runs.{key}" if key in cfg["presets"][preset]["runs"] else f"runs.{key}"


def cross_references(cfg: dict, source: str) -> None:
    """What the schema cannot say, on a schema-checked dict; raises on the first problem."""
    data = cfg["data"]
    if not (data.get("md5") or data.get("sha256")):
        raise CnnvitError(f"{source}: data: no checksum: set data.sha256 (or data.md5)")
    preset = cfg["preset"]
    if preset not in cfg["presets"]:
        known = ", ".join(sorted(cfg["presets"]))
        raise CnnvitError(
            f"{source}: preset: unknown preset {preset!r}; use one of {known} (or define presets.{preset})"
        )
    runs = effective_runs(cfg)
    for recipe in runs["recipes"]:
        if recipe not in cfg["recipes"]:
            known = ", ".join(sorted(cfg["recipes"]))
            raise CnnvitError(
                f"{source}: {runs_key(cfg, 'recipes')}: unknown recipe {recipe!r}; define recipes.{recipe} or use one "
                f"of {known}"
            )
    models = cfg["presets"][preset]["models"]
    for model in runs["models"]:
        if model not in models:
            raise CnnvitError(
                f"{source}: {runs_key(cfg, 'models')}: model {model!r} is not defined in preset {preset!r}; define "
                f"presets.{preset}.models.{model} or use one of {', '.join(sorted(models))}"
            )
    check_claims(cfg, source)
    check_fractions(runs["train_fractions"], known_pool(cfg), source, runs_key(cfg, "train_fractions"))
    check_test_subsets(cfg, source)


def check_claims(cfg: dict, source: str) -> None:
    """Each claim to test needs both its models among the active preset's runs: a verdict must never
    be computed from the wrong pairs, nor a claim dropped without a word."""
    from cnnvit.paper import CLAIMS

    runs, where = effective_runs(cfg)["models"], runs_key(cfg, "models")
    for claim in CLAIMS:
        missing = " and ".join(m for m in claim.models if m not in runs)
        if claim.id in cfg["analysis"]["claims"] and missing:
            raise CnnvitError(
                f"{source}: analysis.claims: {claim.id} needs {missing}, which {where} does not list: add {missing} "
                f"to {where}, or drop {claim.id} from analysis.claims"
            )


def known_pool(cfg: dict) -> int:
    """The training images a run's fraction is taken of, when params alone tell (else 0): the
    preset's train_size, or what data.expect_train leaves after the validation carve."""
    data, preset = cfg["data"], cfg["presets"][cfg["preset"]]
    whole = data["expect_train"] - data["val_size"] if data["expect_train"] else 0
    return min(preset["train_size"], whole) if preset["train_size"] and whole else preset["train_size"] or whole


def check_fractions(fractions, pool: int, source: str, what: str = "runs.train_fractions") -> None:
    """Each fraction trains at least one image a class, and no two train the same subset (the
    subsets are nested: two names for one subset, and one point shown twice in a report). ``pool``
    is the training images (0: not known yet; `cnnvit train` checks again with the prepared data)."""
    if not pool:
        return
    seen: dict[int, float] = {}
    for f in sorted(fractions):
        n = subset_size(pool, 0, f)
        if n < NUM_CLASSES:
            raise CnnvitError(
                f"{source}: {what}: {f:.10g} of {pool:,} training images is {n:,}, fewer than one image a class "
                f"({NUM_CLASSES}): use at least {ceil_2(NUM_CLASSES / pool):g}"
            )
        if n in seen:
            raise CnnvitError(
                f"{source}: {what}: {seen[n]:.10g} and {f:.10g} both train the same {n:,} images (of {pool:,}): "
                "keep one of them"
            )
        seen[n] = f


def ceil_2(x: float) -> float:
    """``x`` rounded up to two significant digits (a bound to quote that still holds)."""
    scale = 10.0 ** (1 - math.floor(math.log10(x)))
    return math.ceil(x * scale - 1e-9) / scale


def check_test_subsets(cfg: dict, source: str) -> None:
    """A preset's robustness and attention images are taken from its test images: more than there
    are would be cut down without a word (cnnvit corrupt checks again once the data is prepared)."""
    name = cfg["preset"]
    preset, expect = cfg["presets"][name], cfg["data"]["expect_test"]
    tests = min(preset["test_size"], expect) if preset["test_size"] and expect else preset["test_size"] or expect
    for key in ("robustness_images", "attention_images"):
        if tests and preset.get(key, 0) > tests:
            raise CnnvitError(
                f"{source}: presets.{name}.{key}: {preset[key]:,} is more than the preset's {tests:,} test images: "
                f"use at most {tests:,}" + (" (0 = all of them)" if key == "robustness_images" else "")
            )
