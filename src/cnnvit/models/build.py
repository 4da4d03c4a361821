"""The model registry: an arch spec (:mod:`cnnvit.models.specs`) -> a timm network for 32x32, 10 classes.

    from cnnvit.models.build import build_model
    model = build_model(params.run_config(run).model)

Each builder calls ``timm.create_model`` on its family's canonical variant and passes every
argument that variant would otherwise set, so nothing comes from a hidden default; the variant
only names timm's pretrained machinery (checkpoint filter, head re-initialisation), which
``pretrained:`` uses (see :mod:`cnnvit.models.pretrained`).

| arch     | timm                                          | params.yaml keys                        |
|----------|-----------------------------------------------|-----------------------------------------|
| resnet50 | ResNet, Bottleneck blocks                     | layers, channels, stem (imagenet/cifar) |
| vit      | VisionTransformer, class token                | patch_size, embed_dim, depth, heads, mlp |
| cnn_vit  | the same ViT, tokenised by a 3-conv HybridEmbed | stem_channels/strides + the ViT keys  |
| convnext | ConvNeXt                                      | patch_size, depths, dims, conv_mlp      |
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import timm
import torch
from timm.layers import ConvNormAct, HybridEmbed
from torch import nn

from cnnvit.errors import CnnvitError
from cnnvit.models.pretrained import create
from cnnvit.models.specs import ARCHS, IMG_SIZE, NUM_CLASSES, ArchSpec, CnnViT, ConvNeXt, ResNet50, ViT

BUILDERS: dict[str, Callable[[ArchSpec], nn.Module]] = {}


def builds(spec_cls: type[ArchSpec]):
    def deco(fn):
        if spec_cls.arch in BUILDERS:
            raise TypeError(f"a builder for arch {spec_cls.arch!r} is registered twice")
        BUILDERS[spec_cls.arch] = fn
        return fn

    return deco


@builds(ResNet50)
def _resnet50(s: ResNet50) -> nn.Module:
    if s.stem == "cifar" and s.pretrained:
        raise CnnvitError(
            "resnet50 with stem: cifar cannot load pretrained weights (their stem is 7x7/2): "
            "use stem: imagenet or drop pretrained"
        )
    model = create("resnet50", s, layers=s.layers, channels=s.channels)
    if s.stem == "cifar":
        # timm has no stride-1 stem: a 7x7/2 conv plus max-pool would leave 8x8 of a 32x32 image.
        width = model.conv1.out_channels
        model.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    return model


def _vit_args(s: ViT | CnnViT) -> dict:
    return {
        "img_size": IMG_SIZE,
        "embed_dim": s.embed_dim,
        "depth": s.depth,
        "num_heads": s.num_heads,
        "mlp_ratio": s.mlp_ratio,
    }


@builds(ViT)
def _vit(s: ViT) -> nn.Module:
    return create("vit_small_patch16_224", s, patch_size=s.patch_size, **_vit_args(s))


@builds(CnnViT)
def _cnn_vit(s: CnnViT) -> nn.Module:
    chans = [3, *s.stem_channels]
    stem = nn.Sequential(
        *(ConvNormAct(chans[i], chans[i + 1], 3, stride=st, act_layer=nn.GELU) for i, st in enumerate(s.stem_strides))
    )
    # patch_size=1: every cell of the stem's feature map becomes one token, projected by a 1x1 conv.
    embed = partial(HybridEmbed, backbone=stem)
    return create("vit_small_patch16_224", s, embed_layer=embed, patch_size=1, **_vit_args(s))


@builds(ConvNeXt)
def _convnext(s: ConvNeXt) -> nn.Module:
    return create("convnext_nano", s, depths=s.depths, dims=s.dims, patch_size=s.patch_size, conv_mlp=s.conv_mlp)


def build_model(spec: ArchSpec) -> nn.Module:
    if spec.arch not in BUILDERS:
        raise CnnvitError(f"unknown model arch {spec.arch!r}; known: {', '.join(sorted(BUILDERS))}")
    return BUILDERS[spec.arch](spec)


def list_archs() -> list[str]:
    assert set(BUILDERS) == set(ARCHS), "every arch spec needs a builder"
    return sorted(BUILDERS)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def flops_per_image(model: nn.Module, device: torch.device | str = "cpu") -> int:
    """Forward FLOPs (2 per multiply-add) of one 3x32x32 image, from ``torch.utils.flop_counter``."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    x = torch.zeros(1, 3, IMG_SIZE, IMG_SIZE, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    model.train(was_training)
    return int(counter.get_total_flops())


__all__ = ["BUILDERS", "NUM_CLASSES", "build_model", "count_params", "flops_per_image", "list_archs", "timm"]
