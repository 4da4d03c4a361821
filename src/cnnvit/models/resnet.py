"""ResNet-50 family: timm's ResNet with Bottleneck blocks, with the ImageNet or the CIFAR stem.

params.yaml keys: ``layers`` and ``channels`` (one entry per stage; ResNet-50 is [3, 4, 6, 3] and
[64, 128, 256, 512]), ``stem`` (``imagenet``: 7x7/2 conv + 3x3/2 max-pool, as a Keras ResNet50;
``cifar``: 3x3/1 conv, no pool), ``pretrained``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from cnnvit.cifar import IMG_SIZE
from cnnvit.errors import CnnvitError
from cnnvit.models.registry import ArchSpec, register

if TYPE_CHECKING:
    from torch import nn


@register
@dataclass(frozen=True, kw_only=True)
class ResNet50(ArchSpec):
    """timm ResNet with Bottleneck blocks (ResNet-50 at layers [3,4,6,3], channels [64,128,256,512])"""

    arch: ClassVar[str] = "resnet50"
    display: ClassVar[str] = "ResNet50"
    convnet: ClassVar[bool] = True
    same_length: ClassVar[tuple[tuple[str, str], ...]] = (("layers", "channels"),)
    layers: tuple[int, ...]
    channels: tuple[int, ...]
    stem: Literal["imagenet", "cifar"] = field(
        metadata={"doc": "imagenet: 7x7/2 conv + max-pool (the standard ResNet-50); cifar: 3x3/1 conv, no pool"}
    )

    def build(self, img_size: int = IMG_SIZE) -> nn.Module:
        from torch import nn

        from cnnvit.models.pretrained import create

        if self.stem == "cifar" and self.pretrained:
            raise CnnvitError(
                "resnet50 with stem: cifar cannot load pretrained weights (their stem is 7x7/2): "
                "use stem: imagenet or drop pretrained"
            )
        model = create("resnet50", self, layers=self.layers, channels=self.channels)
        if self.stem == "cifar":
            # timm has no stride-1 stem: a 7x7/2 conv plus max-pool would leave 8x8 of a 32x32 image.
            conv1: Any = model.conv1
            width = int(conv1.out_channels)
            model.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
            model.maxpool = nn.Identity()
        return model

    def describe(self) -> str:
        stem = "7x7/2 conv + max-pool (ImageNet)" if self.stem == "imagenet" else "3x3/1 conv, no pool (CIFAR)"
        return f"timm ResNet, Bottleneck blocks {list(self.layers)}, widths {list(self.channels)}, stem {stem}"

    def deviation(self, role: str | None, preset: str) -> str:
        if role != "cnn":
            return f"the same network with the {self.stem} stem: what the stem alone changes"
        stem = (
            "with the standard 7x7/2 stem and max-pool (ImageNet's); resnet50_cifar shows what the stem changes"
            if self.stem == "imagenet"
            else "with a 3x3/1 CIFAR stem"
        )
        return (
            "the paper gives neither stem nor widths; this is timm's ResNet (Bottleneck blocks, post-activation: "
            "BN and ReLU after each convolution, where §1 describes pre-activation; PyTorch BatchNorm momentum "
            f"0.1 = Keras 0.9, epsilon 1e-5, Kaiming initialisation), {stem}"
        )
