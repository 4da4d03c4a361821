"""The model registry over timm: every arch and stem builds and trains a step; pretrained weights
load through timm's machinery, safely."""

from __future__ import annotations

import os
import pickle

import pytest
import timm
import torch
from conftest import ROOT, TINY_MODELS

from cnnvit.config.load import load_params
from cnnvit.errors import CnnvitError
from cnnvit.models import ARCHS, build_model, count_params, flops_per_image, spec_from_dict
from cnnvit.models.resnet import ResNet50
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


# ----------------------------------------------------------------------------- pretrained weights

VIT_S = {"arch": "vit", "patch_size": 4, "embed_dim": 384, "depth": 12, "num_heads": 6, "mlp_ratio": 4.0}


@pytest.fixture(scope="module")
def vit_s16(tmp_path_factory):
    """An ImageNet-shaped ViT-S/16 (224 px, 1000 classes) saved as .pth and .safetensors."""
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("weights")
    torch.manual_seed(1)
    sd = timm.create_model("vit_small_patch16_224", pretrained=False).state_dict()
    torch.save(sd, d / "vit_s16.pth")
    save_file({k: v.contiguous() for k, v in sd.items()}, d / "vit_s16.safetensors")
    return d, sd


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_vit_s16_weights_fine_tune_at_32px_with_patch_4(vit_s16, suffix):
    d, sd = vit_s16
    model = build_model(spec_from_dict({**VIT_S, "pretrained": str(d / f"vit_s16{suffix}")}))
    assert model.patch_embed.proj.weight.shape[-2:] == (4, 4)  # resampled from 16x16
    assert model.pos_embed.shape[1] == 1 + 8 * 8  # resampled from 14x14 tokens
    assert model.head.out_features == 10
    assert torch.equal(model.blocks[3].attn.qkv.weight, sd["blocks.3.attn.qkv.weight"])  # loaded, not random
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("protocol", [2, 4])
def test_a_hostile_pth_is_refused_and_runs_nothing(tmp_path, protocol):
    marker, evil = tmp_path / "pwned", tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps({"patch_embed.proj.weight": _RunsCode(marker)}, protocol=protocol))
    refused = r"refusing to load pretrained weights .*evil\.pth.*nothing in it was run"
    with pytest.raises(CnnvitError, match=refused) as e:
        build_model(spec_from_dict({**VIT_S, "pretrained": str(evil)}))
    assert not marker.exists()
    # what was refused, in a few words; not torch's advice to load it with weights_only=False
    assert "weights_only` set to `False`" not in str(e.value) and "\n" not in str(e.value)
    if protocol == 2:
        assert "a pickled posix.system" in str(e.value)


def test_weights_that_do_not_fit_name_the_file_and_the_key(vit_s16):
    d, _ = vit_s16
    spec = {"arch": "vit", "patch_size": 4, "embed_dim": 192, "depth": 12, "num_heads": 3, "mlp_ratio": 4.0}
    with pytest.raises(CnnvitError, match=r"vit_s16\.pth do not fit arch vit \(shapes differ for [\w.]+"):
        build_model(spec_from_dict({**spec, "pretrained": str(d / "vit_s16.pth")}))
    with pytest.raises(CnnvitError, match="not found"):
        build_model(spec_from_dict({**VIT_S, "pretrained": str(d / "missing.pth")}))


def test_a_hub_name_offline_says_use_a_local_file(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read once, at import
    with pytest.raises(CnnvitError, match=r"cannot fetch hf-hub:timm/vit_small_patch16_224\.augreg_in21k .*local"):
        build_model(spec_from_dict({**VIT_S, "pretrained": "hf-hub:timm/vit_small_patch16_224.augreg_in21k"}))


def test_cifar_stem_refuses_imagenet_weights(vit_s16):
    d, _ = vit_s16
    spec = ResNet50(layers=(1, 1, 1, 1), channels=(4, 8, 8, 8), stem="cifar", pretrained=str(d / "vit_s16.pth"))
    with pytest.raises(CnnvitError, match="stem: cifar cannot load pretrained weights"):
        build_model(spec)


@pytest.mark.slow
def test_the_transfer_presets_models_take_their_checkpoints(tmp_path):
    """Each hub name in the transfer preset, made locally (no network): the timm model it names,
    saved, then loaded into the model entry as a local file."""
    preset = load_params(ROOT / "params.yaml").presets["transfer"]
    for name, entry in preset.models.items():
        spec = spec_from_dict(entry)
        variant = spec.pretrained.removeprefix("hf-hub:timm/").split(".")[0]
        path = tmp_path / f"{variant}.pth"
        torch.save(timm.create_model(variant, pretrained=False).state_dict(), path)
        model = build_model(type(spec)(**{**spec.__dict__, "pretrained": str(path)}))
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10), name


def test_every_arch_says_what_it_is_and_why():
    """The deviation table asks each spec class; a registered arch must answer both questions."""
    from cnnvit.models import ARCHS, ArchSpec

    for name, cls in ARCHS.items():
        for method in ("build", "describe", "deviation"):
            assert getattr(cls, method) is not getattr(ArchSpec, method), f"{name} does not define {method}()"
