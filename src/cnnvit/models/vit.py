"""Vision Transformer family: timm's VisionTransformer, tokenised by square patches (``vit``) or by
a convolutional stem (``cnn_vit``, the paper's CNN+ViT hybrid, section 2.4).

Both use the same encoder (``embed_dim``, ``depth``, ``num_heads``, ``mlp_ratio``) with a class
token; ``vit`` cuts the image into ``patch_size`` x ``patch_size`` patches, ``cnn_vit`` runs
``len(stem_channels)`` conv-BN-GELU layers and makes one token of each cell of their output map.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, ClassVar, Literal

from cnnvit.dataset import IMG_SIZE
from cnnvit.models import ArchSpec, register

if TYPE_CHECKING:
    from torch import nn

TIMM_VIT = "vit_small_patch16_224"  # names timm's pretrained machinery; every size comes from the spec


@dataclass(frozen=True, kw_only=True)
class _Encoder(ArchSpec):
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


@register
@dataclass(frozen=True, kw_only=True)
class CnnViT(_Encoder):
    """the vit encoder, tokenised by a conv stem (timm HybridEmbed): one token per stem output cell"""

    arch: ClassVar[str] = "cnn_vit"
    display: ClassVar[str] = "CNN+ViT"
    convnet: ClassVar[bool] = False
    same_length: ClassVar[tuple[tuple[str, str], ...]] = (("stem_channels", "stem_strides"),)
    stem_channels: tuple[int, ...]
    stem_strides: tuple[Literal[1, 2], ...]

    @property
    def token_pixels(self) -> int:
        side = 1
        for s in self.stem_strides:
            side *= s
        return side

    def build(self, img_size: int = IMG_SIZE) -> nn.Module:
        from timm.layers import ConvNormAct, HybridEmbed
        from torch import nn

        from cnnvit.models.pretrained import create

        chans = [3, *self.stem_channels]
        stem = nn.Sequential(
            *(
                ConvNormAct(chans[i], chans[i + 1], 3, stride=st, act_layer=nn.GELU)
                for i, st in enumerate(self.stem_strides)
            )
        )
        # patch_size=1: every cell of the stem's feature map becomes one token, projected by a 1x1 conv.
        embed = partial(HybridEmbed, backbone=stem)
        return create(TIMM_VIT, self, embed_layer=embed, patch_size=1, **self.encoder_args(img_size))

    def describe(self) -> str:
        side, cell = IMG_SIZE // self.token_pixels, self.token_pixels
        return (
            f"{len(self.stem_channels)} conv-BN-GELU layers {list(self.stem_channels)} (strides "
            f"{list(self.stem_strides)}) -> {side}x{side} tokens (one per {cell}x{cell}-pixel cell) -> ViT "
            + self.encoder_words()
        )
