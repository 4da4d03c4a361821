"""The model registry over timm: every arch and stem builds and trains a step, the networks are
the ones timm builds, each arch says what it is and why it differs from the paper, and a name is
registered once. Pretrained weights are in test_pretrained.py."""

from __future__ import annotations

import pytest
import timm
import torch
from conftest import ROOT, TINY_MODELS

from cnnvit.config.load import load_params
from cnnvit.models import ARCHS, ArchSpec, build_model, count_params, flops_per_image, spec_from_dict
from cnnvit.models.registry import register
from cnnvit.models.vit import ViT


@pytest.mark.parametrize("name", sorted(TINY_MODELS))
def test_every_model_and_stem_runs_forward_and_backward(name):
    model = build_model(spec_from_dict(TINY_MODELS[name]))
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert flops_per_image(model) > 0


def test_every_registered_arch_has_a_tiny_fixture():
    assert {s["arch"] for s in TINY_MODELS.values()} == set(ARCHS)
    assert {s["stem"] for s in TINY_MODELS.values() if s["arch"] == "resnet50"} == {"imagenet", "cifar"}


def test_resnet50_stems():
    p = load_params(ROOT / "params.yaml")
    imagenet, cifar = (
        build_model(spec_from_dict(p.presets["paper"].models[m])) for m in ("resnet50", "resnet50_cifar")
    )
    assert imagenet.conv1.kernel_size == (7, 7) and imagenet.conv1.stride == (2, 2)
    assert isinstance(imagenet.maxpool, torch.nn.MaxPool2d)
    assert cifar.conv1.kernel_size == (3, 3) and cifar.conv1.stride == (1, 1)
    assert isinstance(cifar.maxpool, torch.nn.Identity)
    assert 23.4e6 < count_params(imagenet) < 23.6e6  # ResNet-50 with a 10-class head
    ratio = flops_per_image(cifar) / flops_per_image(imagenet)
    assert 12 < ratio < 18  # the CIFAR stem keeps 4x the pixels through every stage


def test_cnn_vit_shares_the_vit_encoder():
    vit = build_model(spec_from_dict(TINY_MODELS["vit"]))
    hybrid = build_model(spec_from_dict(TINY_MODELS["cnn_vit"]))
    enc = lambda m: sum(p.numel() for p in m.blocks.parameters())  # noqa: E731
    assert type(vit.blocks) is type(hybrid.blocks) and enc(vit) == enc(hybrid)
    assert hybrid.patch_embed.num_patches == vit.patch_embed.num_patches == 16  # 4x4 tokens


def test_convnext_takes_conv_mlp_from_params_not_from_a_variant():
    spec = dict(TINY_MODELS["convnext"])
    linear = build_model(spec_from_dict({**spec, "conv_mlp": False}))
    conv = build_model(spec_from_dict({**spec, "conv_mlp": True}))
    assert isinstance(linear.stages[0].blocks[0].mlp.fc1, torch.nn.Linear)
    assert isinstance(conv.stages[0].blocks[0].mlp.fc1, torch.nn.Conv2d)


def test_same_seed_same_init_as_timm_create_model():
    """The registry passes explicit arguments; the network is the one timm builds from them."""
    torch.manual_seed(0)
    ours = build_model(ViT(patch_size=8, embed_dim=16, depth=1, num_heads=2, mlp_ratio=1.0))
    torch.manual_seed(0)
    ref = timm.create_model(
        "vit_small_patch16_224",
        img_size=32,
        patch_size=8,
        embed_dim=16,
        depth=1,
        num_heads=2,
        mlp_ratio=1.0,
        num_classes=10,
    )
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), ref.state_dict().values(), strict=True))


def test_every_arch_says_what_it_is_and_why():
    """The deviation table asks each spec class; a registered arch must answer both questions."""
    from cnnvit.models import ARCHS, ArchSpec

    for name, cls in ARCHS.items():
        for method in ("build", "describe", "deviation"):
            assert getattr(cls, method) is not getattr(ArchSpec, method), f"{name} does not define {method}()"


def test_registry_refuses_a_duplicate_name():
    with pytest.raises(TypeError, match="registered twice"):

        @register
        class Again(ArchSpec):
            arch = "vit"
            display = "ViT again"
            convnet = False
