"""The figures' legends: drawn where something is labelled, and no warning where nothing is."""

from __future__ import annotations

import warnings

import pandas as pd

from cnnvit.stages.figures import cost_plot


def test_a_plot_with_nothing_labelled_draws_no_legend_and_no_warning():
    summary = pd.DataFrame(
        {"model": ["vit"], "label": ["ViT"], "recipe": ["paper"], "train_pflops": [float("nan")],
         "selected_test_acc_mean": [50.0]}
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib's "No artists with labels found to put in legend"
        fig = cost_plot(summary)
    assert fig.axes[0].get_legend() is None
    fig = cost_plot(summary.assign(train_pflops=0.5))  # the run's FLOPs recorded: its legend
    assert "ViT" in [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
