"""How a run's recorded config differs from the one the current params give it: what
``cnnvit collect`` refuses, and what makes a run stale to Snakemake (:mod:`cnnvit.dag.made_with`).

    run_config_differs(summary["config"], run_config(params, run).identity())   # [] or the keys

Apart from :mod:`cnnvit.config.runs`, which the trainer imports: a change here re-trains nothing.
"""

from __future__ import annotations

from cnnvit.config.types import resolves_to
from cnnvit.files import params_differ


def run_config_differs(made: dict, expected: dict) -> list[str]:
    """The keys on which ``made`` and ``expected`` differ, the most telling first; the precision a
    run's device resolved ``runtime.precision`` to is what that setting asks for."""
    expected = dict(expected)
    if resolves_to(str(expected.get("precision")), made.get("precision")):
        expected["precision"] = made.get("precision")
    return params_differ(made, expected, first=("preset", "epochs", "train_size", "test_size", "precision"))
