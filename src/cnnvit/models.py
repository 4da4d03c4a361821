"""The model registry: build a CIFAR-sized (32x32, 10-class) model by name from its params entry.

Each architecture is a thin layer over timm; every size comes from params.yaml.

    from cnnvit.models import build_model
    model = build_model({"arch": "vit", "patch_size": 4, "embed_dim": 384, "depth": 12,
                         "num_heads": 6, "mlp_ratio": 4.0})

| arch       | what                                                                   |
|------------|------------------------------------------------------------------------|
| resnet50   | timm ResNet (Bottleneck) with a 3x3 stride-1 stem and no max-pool       |
| vit        | timm VisionTransformer on 4x4 patches (64 tokens + class token)         |
| cnn_vit    | the same VisionTransformer, tokenised by a 3-conv stem via HybridEmbed |
| convnext   | timm ConvNeXt with a small-stride patch stem                            |
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import timm
import torch
from timm.layers import ConvNormAct, HybridEmbed
from torch import nn

from cnnvit.errors import CnnvitError

IMG_SIZE = 32
NUM_CLASSES = 10
_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register(name: str):
    def deco(fn):
        _REGISTRY[name] = fn
        return fn

    return deco


def list_archs() -> list[str]:
    return sorted(_REGISTRY)


@register("resnet50")
def _resnet50(layers=(3, 4, 6, 3), channels=(64, 128, 256, 512), **kw) -> nn.Module:
    model = timm.create_model(
        "resnet50", layers=tuple(layers), channels=tuple(channels), num_classes=NUM_CLASSES, **kw
    )
    # CIFAR stem: a 7x7/2 conv plus max-pool would shrink 32x32 to 8x8 before the first stage.
    width = model.conv1.out_channels
    model.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def _vit(embed_layer=None, patch_size=4, embed_dim=384, depth=12, num_heads=6, mlp_ratio=4.0, **kw):
    extra = {"embed_layer": embed_layer} if embed_layer is not None else {}
    return timm.create_model(
        "vit_small_patch16_224",
        img_size=IMG_SIZE,
        patch_size=patch_size,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        mlp_ratio=mlp_ratio,
        num_classes=NUM_CLASSES,
        **extra,
        **kw,
    )


register("vit")(_vit)


@register("cnn_vit")
def _cnn_vit(stem_channels=(64, 128, 256), stem_strides=(1, 2, 2), **kw) -> nn.Module:
    if len(stem_channels) != len(stem_strides):
        raise CnnvitError("cnn_vit: stem_channels and stem_strides must have the same length")
    chans = [3, *stem_channels]
    stem = nn.Sequential(
        *(
            ConvNormAct(chans[i], chans[i + 1], 3, stride=s, act_layer=nn.GELU)
            for i, s in enumerate(stem_strides)
        )
    )
    # patch_size=1: every cell of the stem's feature map becomes one token, projected by a 1x1.
    kw.pop("patch_size", None)
    return _vit(embed_layer=partial(HybridEmbed, backbone=stem), patch_size=1, **kw)


@register("convnext")
def _convnext(depths=(2, 2, 8, 2), dims=(80, 160, 320, 640), patch_size=2, **kw) -> nn.Module:
    if len(depths) != len(dims):
        raise CnnvitError("convnext: depths and dims must have the same length")
    return timm.create_model(
        "convnext_nano",
        depths=tuple(depths),
        dims=tuple(dims),
        patch_size=patch_size,
        num_classes=NUM_CLASSES,
        **kw,
    )


def build_model(spec: dict) -> nn.Module:
    """Build from a params entry: ``{"arch": NAME, **sizes}``."""
    spec = dict(spec)
    arch = spec.pop("arch", None)
    if arch not in _REGISTRY:
        raise CnnvitError(f"unknown model arch {arch!r}; known: {', '.join(list_archs())}")
    return _REGISTRY[arch](**spec)


def is_convnet(spec: dict) -> bool:
    return spec["arch"] in ("resnet50", "convnext")


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def flops_per_image(model: nn.Module, device: torch.device | str = "cpu") -> int:
    """Forward FLOPs of one 3x32x32 image, counted by ``torch.utils.flop_counter``."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    x = torch.zeros(1, 3, IMG_SIZE, IMG_SIZE, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    model.train(was_training)
    return int(counter.get_total_flops())
