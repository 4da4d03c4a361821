"""The deformable-stem ablation of the hybrid (``cnn_vit`` with ``stem_conv: deformable``): the
paper's "variable convolutional layer" read as deformable convolution."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from conftest import ROOT, TINY_BY_ARCH

from cnnvit.config.load import load_params
from cnnvit.models import count_params, flops_per_image, spec_from_dict

TINY = {"arch": "cnn_vit", **TINY_BY_ARCH["cnn_vit"], "stem_strides": [1, 2, 2]}
DEFORM = TINY | {"stem_conv": "deformable"}


def test_the_deformable_hybrid_builds_trains_and_is_counted():
    plain, deform = (spec_from_dict(e).build() for e in (TINY, DEFORM))
    x = torch.randn(2, 3, 32, 32)
    out = deform(x)
    assert out.shape == (2, 10)
    out.square().sum().backward()
    stem = deform.patch_embed.backbone[-1]
    assert stem.conv.weight.grad.abs().sum() > 0  # the deformable conv learns
    assert stem.offset.weight.grad.abs().sum() > 0  # and so does the conv that predicts its offsets
    # the offset conv (8 in, 2 x 3 x 3 out, 3x3, with bias) is all the deformable layer adds
    assert count_params(deform) - count_params(plain) == 8 * 18 * 9 + 18
    # FLOPs: the offset conv, plus the bilinear sampling of every input value the deformable conv reads
    tokens, taps = 8 * 8, 9 * 8  # an 8x8 output map; 3x3 taps of 8 channels
    extra = 2 * tokens * 18 * taps + 2 * tokens * taps * 4
    assert flops_per_image(deform) - flops_per_image(plain) == extra


def test_at_zero_offsets_the_deformable_layer_is_the_plain_one():
    plain, deform = (spec_from_dict(e).build().eval() for e in (TINY, DEFORM))
    a, b = plain.patch_embed.backbone[-1], deform.patch_embed.backbone[-1]
    assert (b.offset.weight == 0).all() and (b.offset.bias == 0).all()  # zero-initialised, as is usual
    b.conv.weight.data.copy_(a.conv.weight.data)
    b.bn.load_state_dict(a.bn.state_dict())
    x = torch.randn(2, 8, 16, 16)  # the last stem conv: 8 channels in, at 16x16
    with torch.no_grad():
        assert torch.allclose(a(x), b(x), atol=1e-5)


def test_the_key_leaves_existing_hybrids_runs_as_they_were():
    assert "stem_conv" not in spec_from_dict(TINY).to_dict()  # a plain stem's identity, and checkpoints, are kept
    assert spec_from_dict(TINY | {"stem_conv": "plain"}).to_dict() == spec_from_dict(TINY).to_dict()
    assert spec_from_dict(DEFORM).to_dict()["stem_conv"] == "deformable"


@pytest.mark.parametrize("preset", ["paper", "quick", "datasize"])
def test_every_hybrid_preset_offers_the_ablation_opt_in(preset):
    p = load_params(ROOT / "params.yaml", [f"preset={preset}"])
    models = p.presets[preset].models
    assert models["cnn_vit_deform"] == models["cnn_vit"] | {"stem_conv": "deformable"}
    assert "cnn_vit_deform" not in p.runs.models


def test_the_receptive_field_of_a_hybrid_token():
    assert spec_from_dict(TINY).receptive_field == 9  # 3x3 convs at strides 1, 2, 2: 1 + 2 + 2 + 4
    assert spec_from_dict(TINY | {"stem_strides": [2, 2, 2]}).receptive_field == 15  # 1 + 2 + 4 + 8
    assert "each seeing 9x9 pixels" in spec_from_dict(TINY).describe()


def test_the_ablation_is_a_variant_of_the_hybrid_in_the_tables(tmp_path):
    from fabricated_runs import ACCS, collect, fabricate

    fabricate(tmp_path, ACCS | {"cnn_vit_deform": [71.0, 72.0, 70.5]})
    assert collect(tmp_path) == 0
    variants = pd.read_csv(tmp_path / "tables/variants.csv")
    rows = variants[variants.claim.str.contains("as cnn_vit_deform")]
    assert len(rows) == 2 and rows.exploratory.all()  # CNN+ViT vs ViT, and CNN+ViT close to ResNet50
    assert {tuple(sorted(r)) for r in rows[["a", "b"]].values} == {
        ("cnn_vit_deform", "vit"),
        ("cnn_vit_deform", "resnet50"),
    }
