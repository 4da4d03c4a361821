"""What a params.yaml key says about itself beyond its type: its description and its bounds.

    lr: float = field(metadata=key("the peak learning rate", exclusiveMinimum=0))
    seeds: tuple[int, ...] = field(metadata=key("a run each", items=SEED))

The fields of :mod:`cnnvit.config.types` carry it as their ``metadata``; :mod:`cnnvit.config.schema`
writes it into params.schema.json. The code identity of a run leaves every ``metadata=`` out, so a
description or a bound can change without retraining anything (the loader refuses what a bound
refuses before any run starts).
"""

from __future__ import annotations

from typing import Any

from cnnvit.arguments import SEED_MAX

SEED: dict[str, Any] = {"minimum": 0, "maximum": SEED_MAX}  # what numpy's and torch's generators take
FRACTION: dict[str, Any] = {"exclusiveMinimum": 0, "maximum": 1}
SIZE: dict[str, Any] = {"minimum": 8, "maximum": 512}  # pixels
CROP: dict[str, Any] = {"minimum": 0, "maximum": 16}
POS: dict[str, Any] = {"exclusiveMinimum": 0}
SHA256 = "^[0-9a-f]{64}$"


def key(
    doc: str, *, ref: str | None = None, each: str | None = None, items: dict | None = None, **rules: Any
) -> dict[str, Any]:
    """A params.yaml key's metadata (``field(default=..., metadata=key(...))``): its one-line ``doc``
    and JSON Schema ``rules`` on its value (minimum, maximum, exclusiveMinimum, pattern, minLength,
    minItems); a list's ``items`` rules apply to each item. ``ref``: the value is ``$defs.<ref>``
    of the schema; ``each``: each item of a list, or each value of a mapping, is. The field's
    default is documentation: the schema shows it, and the line naming a missing key quotes it."""
    return {"doc": doc, "ref": ref, "each": each, "items": items or {}, "rules": rules}
