"""Vision Transformer family: timm's VisionTransformer, tokenised by square patches (``vit``) or by
a convolutional stem (``cnn_vit``, the paper's CNN+ViT hybrid, section 2.4).

Both use the same encoder (``embed_dim``, ``depth``, ``num_heads``, ``mlp_ratio``) with a class
token; ``vit`` cuts the image into ``patch_size`` x ``patch_size`` patches, ``cnn_vit`` runs
``len(stem_channels)`` conv-BN-GELU layers and makes one token of each cell of their output map.

``cnn_vit``'s ``stem_conv: deformable`` is an ablation: the paper's "variable convolutional layer"
(section 1 (a)) read as a deformable convolution (Dai et al. 2017). The stem's last conv becomes
torchvision's ``DeformConv2d``, whose sampling offsets a plain 3x3 conv predicts from the same
input; that conv starts at zero, so the network starts as the plain hybrid and learns where to
look. The last conv, not the first, as deformable networks place them: offsets are predicted
from features, not from raw pixels.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Literal

from cnnvit.cifar import IMG_SIZE
from cnnvit.models.registry import ArchSpec, register

if TYPE_CHECKING:
    from torch import nn

TIMM_VIT = "vit_small_patch16_224"  # names timm's pretrained machinery; every size comes from the spec


@dataclass(frozen=True, kw_only=True)
class _Encoder(ArchSpec):
    divides: ClassVar[tuple[tuple[str, str | int], ...]] = (("num_heads", "embed_dim"),)  # width per head
    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float

    def encoder_args(self, img_size: int) -> dict:
        return {
            "img_size": img_size,
            "embed_dim": self.embed_dim,
            "depth": self.depth,
            "num_heads": self.num_heads,
            "mlp_ratio": self.mlp_ratio,
        }

    @property
    def token_pixels(self) -> int:
        """The side, in input pixels, of the square each token covers."""
        raise NotImplementedError

    def encoder_words(self) -> str:
        return f"width {self.embed_dim}, depth {self.depth}, {self.num_heads} heads, MLP ratio {self.mlp_ratio:g}"


@register
@dataclass(frozen=True, kw_only=True)
class ViT(_Encoder):
    """timm VisionTransformer on square patches, with a class token"""

    arch: ClassVar[str] = "vit"
    display: ClassVar[str] = "ViT"
    convnet: ClassVar[bool] = False
    divides: ClassVar[tuple[tuple[str, str | int], ...]] = (("num_heads", "embed_dim"), ("patch_size", IMG_SIZE))
    patch_size: int

    @property
    def token_pixels(self) -> int:
        return self.patch_size

    def build(self, img_size: int = IMG_SIZE) -> nn.Module:
        from cnnvit.models.pretrained import create

        return create(TIMM_VIT, self, patch_size=self.patch_size, **self.encoder_args(img_size))

    def describe(self) -> str:
        tokens = (IMG_SIZE // self.patch_size) ** 2
        return (
            f"timm ViT, {self.patch_size}x{self.patch_size} patches ({tokens} tokens + class token), "
            + self.encoder_words()
        )

    def deviation(self, role: str | None, preset: str) -> str:
        vit_s = (self.embed_dim, self.depth, self.num_heads) == (384, 12, 6)
        sizes = (
            "these are the standard ViT-S ones at 32x32"
            if vit_s
            else f"the {preset} preset's own (ViT-S is 384 wide, 12 deep, 6 heads)"
        )
        return f"the paper does not give the sizes; {sizes}"


STEM_CONV_DOC = (
    "plain: every stem layer a 3x3 conv; deformable: the last one a deformable 3x3 conv (torchvision "
    "DeformConv2d, offsets from a zero-initialised 3x3 conv), the paper's 'variable convolutional layer' read as "
    "deformable convolution"
)


@register
@dataclass(frozen=True, kw_only=True)
class CnnViT(_Encoder):
    """the vit encoder, tokenised by a conv stem (timm HybridEmbed): one token per stem output cell"""

    arch: ClassVar[str] = "cnn_vit"
    display: ClassVar[str] = "CNN+ViT"
    convnet: ClassVar[bool] = False
    same_length: ClassVar[tuple[tuple[str, str], ...]] = (("stem_channels", "stem_strides"),)
    kernel: ClassVar[int] = 3  # every stem conv's
    stem_channels: tuple[int, ...]
    stem_strides: tuple[Literal[1, 2], ...]
    stem_conv: Literal["plain", "deformable"] = field(default="plain", metadata={"doc": STEM_CONV_DOC})

    @property
    def token_pixels(self) -> int:
        side = 1
        for s in self.stem_strides:
            side *= s
        return side

    @property
    def receptive_field(self) -> int:
        """The side, in input pixels, of the window one token sees through the stem (at zero offsets
        for a deformable stem, whose offsets can move it): each conv widens it by (kernel - 1) times
        the stride of the layers before it. 3x3 convs at strides 1, 2, 2: 1 + 2 + 2 + 4 = 9."""
        side, jump = 1, 1
        for s in self.stem_strides:
            side += (self.kernel - 1) * jump
            jump *= s
        return side

    def to_dict(self) -> dict:
        out = super().to_dict()
        if self.stem_conv == "plain":
            del out["stem_conv"]  # a later key: a plain stem's runs keep the identity (and checkpoints) they had
        return out

    def build(self, img_size: int = IMG_SIZE) -> nn.Module:
        from timm.layers import ConvNormAct, HybridEmbed
        from torch import nn

        from cnnvit.models.pretrained import create

        chans = [3, *self.stem_channels]
        last = len(self.stem_strides) - 1
        layers = []
        for i, st in enumerate(self.stem_strides):
            if self.stem_conv == "deformable" and i == last:
                layers.append(_deformable_layer()(chans[i], chans[i + 1], self.kernel, st))
            else:
                layers.append(ConvNormAct(chans[i], chans[i + 1], self.kernel, stride=st, act_layer=nn.GELU))
        # patch_size=1: every cell of the stem's feature map becomes one token, projected by a 1x1 conv.
        embed = functools.partial(HybridEmbed, backbone=nn.Sequential(*layers))
        return create(TIMM_VIT, self, embed_layer=embed, patch_size=1, **self.encoder_args(img_size))

    def describe(self) -> str:
        side, cell, rf = IMG_SIZE // self.token_pixels, self.token_pixels, self.receptive_field
        conv = "conv-BN-GELU layers" + (", the last deformable," if self.stem_conv == "deformable" else "")
        return (
            f"{len(self.stem_channels)} {conv} {list(self.stem_channels)} (strides {list(self.stem_strides)}) -> "
            f"{side}x{side} tokens (one per {cell}x{cell}-pixel cell, each seeing {rf}x{rf} pixels) -> ViT "
            + self.encoder_words()
        )

    def deviation(self, role: str | None, preset: str) -> str:
        deformable = (
            'the deformable-convolution reading of §1\'s "variable convolutional layer": the hybrid with a '
            "deformable convolution (torchvision's DeformConv2d, offsets from a zero-initialised convolution) in "
            "its stem"
        )
        if role != "hybrid":
            return f"{deformable}, an ablation of cnn_vit" if self.stem_conv == "deformable" else "a hybrid variant"
        return (
            "a patch size of 64 cannot cut a 32x32 image (or the stem's smaller map); the stem's output cells "
            'are the tokens instead. "Variable convolutional layer" most likely translates deformable convolution '
            "(a learned offset per kernel tap): these stem layers are plain convolutions, and the deformable "
            "reading is the ablation model cnn_vit_deform"
            + ("" if self.stem_conv == "plain" else " (this entry is that reading)")
        )


@functools.cache
def _deformable_layer() -> type:
    """DeformConvNormAct, defined on first use so that importing this module imports no torch."""
    import torch
    from timm.layers import BatchNormAct2d
    from torch import nn
    from torch.utils.flop_counter import register_flop_formula
    from torchvision.ops import DeformConv2d

    @register_flop_formula(torch.ops.torchvision.deform_conv2d)
    def _flops(x_shape, weight_shape, *_args, out_shape, **_kwargs) -> int:
        # a dense conv's multiply-adds, plus the bilinear sampling of every input value it reads (4 multiply-adds)
        n, c_out, h, w = out_shape
        c_in_group, kh, kw = weight_shape[1:]
        return 2 * n * h * w * kh * kw * c_in_group * (c_out + 4 * x_shape[1] // c_in_group)

    class DeformConvNormAct(nn.Module):
        """timm's ConvNormAct with torchvision's DeformConv2d as the conv (and BN + GELU after it)."""

        def __init__(self, c_in: int, c_out: int, kernel: int, stride: int) -> None:
            super().__init__()
            pad = kernel // 2
            self.offset = nn.Conv2d(c_in, 2 * kernel * kernel, kernel, stride=stride, padding=pad)
            for p in self.offset.parameters():  # weight and bias: zero offsets, so it starts as the plain conv
                nn.init.zeros_(p)
            self.conv = DeformConv2d(c_in, c_out, kernel, stride=stride, padding=pad, bias=False)
            self.bn = BatchNormAct2d(c_out, act_layer=nn.GELU)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.bn(self.conv(x, self.offset(x)))

    return DeformConvNormAct
