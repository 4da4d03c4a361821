"""ConvNeXt family: timm's ConvNeXt, the modernised CNN of the related work, with a
``patch_size`` x ``patch_size`` stem, ``depths`` and ``dims`` per stage, and ``conv_mlp``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from cnnvit.cifar import IMG_SIZE
from cnnvit.models.registry import ArchSpec, register

if TYPE_CHECKING:
    from torch import nn


@register
@dataclass(frozen=True, kw_only=True)
class ConvNeXt(ArchSpec):
    """timm ConvNeXt with a patch_size x patch_size stem"""

    arch: ClassVar[str] = "convnext"
    display: ClassVar[str] = "ConvNeXt"
    convnet: ClassVar[bool] = True
    same_length: ClassVar[tuple[tuple[str, str], ...]] = (("depths", "dims"),)
    divides: ClassVar[tuple[tuple[str, str | int], ...]] = (("patch_size", IMG_SIZE),)
    patch_size: int
    depths: tuple[int, ...]
    dims: tuple[int, ...]
    conv_mlp: bool = field(
        metadata={"doc": "MLP as 1x1 convs (timm's convnext_nano and smaller) instead of Linear layers"}
    )

    def build(self, img_size: int = IMG_SIZE) -> nn.Module:
        from cnnvit.models.pretrained import create

        return create(
            "convnext_nano",
            self,
            depths=self.depths,
            dims=self.dims,
            patch_size=self.patch_size,
            conv_mlp=self.conv_mlp,
        )

    def describe(self) -> str:
        return (
            f"timm ConvNeXt, {self.patch_size}x{self.patch_size} stem, depths {list(self.depths)}, widths "
            f"{list(self.dims)}, conv_mlp {self.conv_mlp}"
        )

    def deviation(self, role: str | None, preset: str) -> str:
        return "the modernised CNN of the related work, as a fourth point of comparison"
