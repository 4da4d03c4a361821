"""The model registry: one spec class per architecture, its builder beside it, registered once.

    spec = spec_from_dict({"arch": "vit", "patch_size": 4, "embed_dim": 384, "depth": 12,
                           "num_heads": 6, "mlp_ratio": 4.0})
    model = build_model(spec)          # a timm network for 32x32 images and 10 classes

Each family module (``resnet``, ``vit``, ``convnext``) holds frozen dataclasses whose fields are
exactly the keys a params.yaml model entry of that arch takes, and a ``build()`` that calls
``timm.create_model`` with every argument explicit. A field's type is its schema (``int`` a
positive integer, ``float`` a positive number, ``Literal`` an enum, ``tuple[int, ...]`` a non-empty
list), and ``cnnvit schema`` writes it into params.schema.json (:mod:`cnnvit.models.schema`), where
the params loader reads it without importing the model code (so that only the stages that build models depend on it). A
test fails when the two disagree. Importing this package imports neither torch nor timm (the
builders import them when they run). The spec base class and ``@register`` are
:mod:`cnnvit.models.registry`'s. Adding an arch: a module here with one ``@register`` class,
imported at the bottom of this file, then ``uv run cnnvit schema``.
"""

from __future__ import annotations

import functools
import json
from typing import TYPE_CHECKING, Any

from cnnvit.cifar import IMG_SIZE
from cnnvit.models.registry import ARCHS, ArchSpec

if TYPE_CHECKING:
    import torch
    from torch import nn


@functools.cache
def _spec(frozen: str) -> ArchSpec:
    entry = json.loads(frozen)
    cls: Any = ARCHS[entry["arch"]]  # a registered subclass, whose fields are the entry's keys
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in entry.items() if k != "arch"})


def spec_from_dict(entry: dict) -> ArchSpec:
    """A checked model entry -> its arch's dataclass (lists become tuples)."""
    return _spec(json.dumps(entry, sort_keys=True))


# ----------------------------------------------------------------------------- building and measuring


def build_model(spec: ArchSpec) -> nn.Module:
    return spec.build()


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def flops_per_image(model: nn.Module, device: torch.device | str = "cpu", size: int = IMG_SIZE) -> int:
    """Forward FLOPs (2 per multiply-add) of one 3 x size x size image, from ``torch.utils.flop_counter``."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    x = torch.zeros(1, 3, size, size, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    model.train(was_training)
    return int(counter.get_total_flops())


# The families register themselves on import; they need the names above, so they come last.


# The families register themselves on import.
from cnnvit.models import convnext, resnet, vit  # noqa: E402

__all__ = [
    "ARCHS",
    "ArchSpec",
    "build_model",
    "convnext",
    "count_params",
    "flops_per_image",
    "resnet",
    "spec_from_dict",
    "vit",
]
