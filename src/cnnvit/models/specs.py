"""The architectures a model entry in params.yaml can name: one frozen dataclass per arch.

Each class lists exactly the keys its arch takes (the schema's ``arch_<name>`` definition says the
same, and a test holds the two together). Classes register themselves under their ``arch`` name;
a second class with the same name is refused. This module imports neither torch nor timm, so the
params loader and the Snakefile stay fast; :mod:`cnnvit.models.build` builds the networks.

    spec = spec_from_dict({"arch": "vit", "patch_size": 4, "embed_dim": 384, "depth": 12,
                           "num_heads": 6, "mlp_ratio": 4.0})
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

IMG_SIZE = 32  # CIFAR-10's images; every model is built for this input
NUM_CLASSES = 10  # and this many classes; `cnnvit prepare` refuses data with another count

ARCHS: dict[str, type[ArchSpec]] = {}


@dataclass(frozen=True)
class ArchSpec:
    arch: ClassVar[str]
    display: ClassVar[str]  # the name the report prints
    convnet: ClassVar[bool]  # trains in channels_last memory format
    pretrained: str | None = None  # a weights file or a timm hub name; None = random init

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if cls.arch in ARCHS:
            raise TypeError(f"arch {cls.arch!r} is registered twice ({ARCHS[cls.arch].__name__}, {cls.__name__})")
        ARCHS[cls.arch] = cls

    def to_dict(self) -> dict:
        return {"arch": self.arch, **dataclasses.asdict(self)}


@dataclass(frozen=True, kw_only=True)
class ResNet50(ArchSpec):
    arch: ClassVar[str] = "resnet50"
    display: ClassVar[str] = "ResNet50"
    convnet: ClassVar[bool] = True
    layers: tuple[int, ...]
    channels: tuple[int, ...]
    stem: str  # imagenet: 7x7/2 conv + 3x3/2 max-pool; cifar: 3x3/1 conv, no pool

    def __post_init__(self):
        _same_length(self, "layers", "channels")


@dataclass(frozen=True, kw_only=True)
class ViT(ArchSpec):
    arch: ClassVar[str] = "vit"
    display: ClassVar[str] = "ViT"
    convnet: ClassVar[bool] = False
    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float


@dataclass(frozen=True, kw_only=True)
class CnnViT(ArchSpec):
    arch: ClassVar[str] = "cnn_vit"
    display: ClassVar[str] = "CNN+ViT"
    convnet: ClassVar[bool] = False
    stem_channels: tuple[int, ...]
    stem_strides: tuple[int, ...]
    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float

    def __post_init__(self):
        _same_length(self, "stem_channels", "stem_strides")


@dataclass(frozen=True, kw_only=True)
class ConvNeXt(ArchSpec):
    arch: ClassVar[str] = "convnext"
    display: ClassVar[str] = "ConvNeXt"
    convnet: ClassVar[bool] = True
    patch_size: int
    depths: tuple[int, ...]
    dims: tuple[int, ...]
    conv_mlp: bool

    def __post_init__(self):
        _same_length(self, "depths", "dims")


def _same_length(spec: ArchSpec, a: str, b: str) -> None:
    if len(getattr(spec, a)) != len(getattr(spec, b)):
        raise ValueError(f"{a} and {b} must have the same length (one entry per stage)")


def spec_from_dict(entry: dict) -> ArchSpec:
    """A schema-checked model entry -> its arch's dataclass (lists become tuples)."""
    cls = ARCHS[entry["arch"]]
    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in entry.items() if k != "arch"}
    return cls(**kw)


def spec_keys(arch: str) -> set[str]:
    return {"arch", *(f.name for f in dataclasses.fields(ARCHS[arch]))}
