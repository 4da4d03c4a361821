"""The registry of architectures: the spec class every arch subclasses, and ``@register``.

    @register
    @dataclass(frozen=True, kw_only=True)
    class ViT(ArchSpec): ...        # its fields are the keys of a params.yaml model entry

Kept apart from the package's face (:mod:`cnnvit.models`), which imports every family module so
that they register: the families import this module, never the other way round.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from cnnvit.cifar import IMG_SIZE

if TYPE_CHECKING:
    from torch import nn

ARCHS: dict[str, type[ArchSpec]] = {}


@dataclass(frozen=True, kw_only=True)
class ArchSpec:
    """What every arch shares. Subclasses set the class attributes and define ``build``."""

    arch: ClassVar[str]
    display: ClassVar[str]  # the name tables and figures print
    convnet: ClassVar[bool]  # trains in channels_last memory format
    same_length: ClassVar[tuple[tuple[str, str], ...]] = ()  # list fields with one entry per stage
    # (a, b): a must divide b, a field or a number (the image side): a model that cannot be built
    # fails at validation, naming the keys, not as a traceback in timm
    divides: ClassVar[tuple[tuple[str, str | int], ...]] = ()
    pretrained: str | None = field(
        default=None,
        metadata={"doc": "a local .safetensors/.pth/.pt file or a timm hub name (hf-hub:timm/...); null = random init"},
    )

    def __post_init__(self) -> None:
        for a, b in self.same_length:
            if len(getattr(self, a)) != len(getattr(self, b)):
                raise ValueError(f"{a} and {b} must have the same length (one entry per stage)")

    def build(self, img_size: int = IMG_SIZE) -> nn.Module:
        """The timm network for ``img_size`` x ``img_size`` inputs and NUM_CLASSES classes."""
        raise NotImplementedError

    def describe(self) -> str:
        """One line for the report's deviation table."""
        raise NotImplementedError

    def deviation(self, role: str | None, preset: str) -> str:
        """Why this build is what it is, for the deviation table: as the paper's model of ``role``
        (cnn, vit, hybrid; see cnnvit.paper.MODELS), or as a model the paper does not have (None)."""
        raise NotImplementedError

    def to_dict(self) -> dict:
        return {"arch": self.arch, **dataclasses.asdict(self)}


def register(cls: type[ArchSpec]) -> type[ArchSpec]:
    if cls.arch in ARCHS:
        raise TypeError(f"arch {cls.arch!r} is registered twice ({ARCHS[cls.arch].__name__}, {cls.__name__})")
    ARCHS[cls.arch] = cls
    return cls
