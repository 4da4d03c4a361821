"""One run's resolved config: the preset, the model's typed spec, the recipe and the epochs.

    cfg = run_config(params, RunSpec("vit", "paper", 0))     # what `cnnvit train` reads

It lives apart from :mod:`cnnvit.config.types` because it turns the model entry into its spec
(:mod:`cnnvit.models`): the stages that resolve runs depend on the model code, the others do not.
"""

from __future__ import annotations

from cnnvit.config.types import Params, RunConfig, RunSpec
from cnnvit.errors import CnnvitError
from cnnvit.models import spec_from_dict


def epochs_for(params: Params, run: RunSpec) -> int:
    """The preset's epochs, or with ``fraction_budget: steps`` as many as give the full set's steps."""
    epochs = params.active.epochs
    if run.fraction < 1 and params.runs.fraction_budget == "steps":
        epochs = max(1, round(epochs / run.fraction))
    return epochs


def run_config(params: Params, run: RunSpec) -> RunConfig:
    preset = params.active
    if run.model not in preset.models:
        known = ", ".join(sorted(preset.models))
        raise CnnvitError(
            f"unknown model {run.model!r} in preset {params.preset!r}; known models: {known} "
            f"(define presets.{params.preset}.models.{run.model} in params.yaml to add one)"
        )
    if run.recipe not in params.recipes:
        raise CnnvitError(f"unknown recipe {run.recipe!r}; known recipes: {', '.join(sorted(params.recipes))}")
    if not 0 < run.fraction <= 1:
        raise CnnvitError(f"fraction {run.fraction} is outside (0, 1]: fix runs.train_fractions")
    return RunConfig(
        run,
        params.preset,
        spec_from_dict(preset.models[run.model]),
        params.recipes[run.recipe],
        epochs_for(params, run),
        preset.train_size,
        preset.val_size,
        preset.test_size,
        params.runtime,
    )
