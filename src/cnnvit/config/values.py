"""The values of the params keys a stage reads, out of the raw params: what Snakemake's params
trigger compares, what the corrupted set records it was made with, and what
:mod:`cnnvit.dag.made_with` compares with the current params.

    values(params.raw, ("data.url", "presets.{preset}.test_size"))   # {"data.url": ..., "presets.quick.test_size": 500}
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cnnvit.batch import Batch


def get_key(cfg: dict, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def canonical(value: Any) -> Any:
    """Sorted keys all the way down: the same config in another key order is the same params."""
    import json

    return json.loads(json.dumps(value, sort_keys=True))


def values(cfg: dict, keys, batch: Batch | None = None, fraction=()) -> dict[str, Any]:
    """The dotted ``keys`` a job reads, ``{preset}`` (and a batch's ``{model}`` and ``{recipe}``)
    filled in, with their values in ``cfg`` (the raw params): what Snakemake's params trigger
    compares. ``runs.K`` is the active preset's (its ``runs:`` over the top-level one), so a job
    re-runs when the value it reads changes, wherever it was set. A batch on a fraction of the
    training set reads the ``fraction`` keys too."""
    run = batch.runs[0] if batch else None
    if run is not None and run.fraction < 1:
        keys = [*keys, *fraction]
    own = ((cfg.get("presets") or {}).get(cfg.get("preset")) or {}).get("runs") or {}
    cfg = {**cfg, "runs": {**(cfg.get("runs") or {}), **own}}
    fill = {"preset": cfg["preset"], "model": run.model if run else "", "recipe": run.recipe if run else ""}
    return {k.format(**fill): canonical(get_key(cfg, k.format(**fill))) for k in keys}
