"""Pretrained weights (issue 28.2): an ImageNet ViT-S/16 fine-tunes at 32 pixels with patch 4,
loaded through timm's machinery, safely (a pickle that runs code is refused, nothing in it run);
weights that do not fit the model or hold NaN are one line naming the first keys; a hub name
offline says to use a local file; the file's sha256 is part of the run's identity."""

from __future__ import annotations

import hashlib
import json
import pickle

import pytest
import timm
import torch
from conftest import ROOT, RunsCode, md5, tiny_params
from safetensors.torch import save_file

from cnnvit.config.load import load_params, params_from_dict
from cnnvit.config.runs import run_config
from cnnvit.config.types import RunSpec
from cnnvit.errors import CnnvitError
from cnnvit.models import build_model, spec_from_dict
from cnnvit.models.resnet import ResNet50
from cnnvit.training import engine as train

VIT2 = {"arch": "vit", "patch_size": 8, "embed_dim": 16, "depth": 2, "num_heads": 2, "mlp_ratio": 1.0}

RESNET = {"arch": "resnet50", "layers": [1, 1, 1, 1], "channels": [4, 8, 8, 8], "stem": "imagenet"}


def saved(path, spec: dict, **replace) -> str:
    torch.manual_seed(0)
    state = {k: v.clone().contiguous() for k, v in build_model(spec_from_dict(spec)).state_dict().items()}
    for key, value in replace.items():
        state[key.replace("__", ".")].fill_(value)
    save_file(state, str(path)) if path.suffix == ".safetensors" else torch.save(state, path)
    return str(path)


def test_weights_of_the_same_arch_and_sizes_load_every_key(tmp_path):
    weights = saved(tmp_path / "v2.safetensors", VIT2)
    model = build_model(spec_from_dict({**VIT2, "pretrained": weights}))
    torch.manual_seed(0)
    reference = build_model(spec_from_dict(VIT2)).state_dict()
    assert torch.equal(model.blocks[1].attn.qkv.weight, reference["blocks.1.attn.qkv.weight"])


@pytest.mark.parametrize(
    "spec, needles",
    [
        ({**VIT2, "depth": 4}, ["missing blocks.2.", "and 21 more"]),  # half the encoder would stay random
        ({**VIT2, "depth": 1}, ["unexpected blocks.1."]),
        ({**VIT2, "embed_dim": 32, "num_heads": 2}, ["shapes differ for"]),
        (RESNET, ["do not fit arch resnet50", "missing conv1.weight", "unexpected blocks.0."]),
    ],
    ids=["deeper", "shallower", "wider", "resnet"],
)
def test_weights_that_do_not_fit_are_one_line_naming_the_first_keys(tmp_path, spec, needles):
    """Issue 28.2: ResNet weights as the ViT's `pretrained:` trained as if random; depth-2 weights in a
    depth-4 ViT left half of it random. Every key must go in, but the classifier, re-initialised."""
    weights = saved(tmp_path / "v2.safetensors", VIT2)
    with pytest.raises(CnnvitError) as e:
        build_model(spec_from_dict({**spec, "pretrained": weights}))
    line = str(e.value)
    assert "\n" not in line and len(line) < 400 and weights in line and "use weights of the same" in line
    for needle in needles:
        assert needle in line, (needle, line)


def test_resnet_weights_in_a_vit_are_refused(tmp_path):
    weights = saved(tmp_path / "rn.pth", RESNET)
    with pytest.raises(CnnvitError, match=r"rn.pth do not fit arch vit \(missing cls_token.*; unexpected conv1.weight"):
        build_model(spec_from_dict({**VIT2, "pretrained": weights}))


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_pretrained_weights_are_one_line_not_lower_lr(tmp_path, value):
    """NaN weights trained to a 'diverged' run with the advice to lower the lr."""
    weights = saved(tmp_path / "nan.safetensors", VIT2, blocks__0__attn__qkv__weight=value)
    with pytest.raises(CnnvitError, match=r"hold NaN or infinite values \(in blocks.0.attn.qkv.weight\).*other"):
        build_model(spec_from_dict({**VIT2, "pretrained": weights}))


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


@pytest.mark.parametrize("protocol", [2, 4])
def test_a_hostile_pth_is_refused_and_runs_nothing(tmp_path, protocol):
    marker, evil = tmp_path / "pwned", tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps({"patch_embed.proj.weight": RunsCode(marker)}, protocol=protocol))
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


# ----------------------------------------------------------------------------- identity, and a run


def config(archive, pretrained: str | None = None):
    raw = tiny_params(str(archive), md5(archive), epochs=1)
    raw["presets"]["tiny"]["models"]["vit"] = {**VIT2, **({"pretrained": pretrained} if pretrained else {})}
    return run_config(params_from_dict(raw), RunSpec("vit", "paper", 0))


# the keys of a run's identity (what its checkpoint holds), written out rather than read from the config class
IDENTITY = {"run", "preset", "model", "recipe", "epochs", "train_size", "val_size", "test_size", "precision"}


def test_a_run_without_pretrained_weights_keeps_its_identity(prepared):
    """The weights file's sha256 joined a run's identity (issue 28.2); a run without pretrained
    weights keeps the identity its checkpoint holds: any key added to it, even None, would retrain
    every finished run."""
    archive, _ = prepared
    ident = config(archive).identity()
    assert set(ident) == IDENTITY and ident["model"]["pretrained"] is None


def test_new_weights_at_the_same_path_are_another_run(prepared, tmp_path, capsys):
    """Issue 28.2: replacing the pretrained file kept the finished run ("not retraining") and its
    summary kept the old file's sha256."""
    import json

    from cnnvit.training import engine as train

    archive, data = prepared
    weights = tmp_path / "w.safetensors"
    saved(weights, VIT2)
    first = config(archive, str(weights))
    assert first.identity()["pretrained_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    train.train_run(first, data, tmp_path / "out", tmp_path / "ck")
    saved(weights, VIT2, blocks__0__norm1__weight=0.5)  # other weights, same path
    capsys.readouterr()
    train.train_run(config(archive, str(weights)), data, tmp_path / "out", tmp_path / "ck")
    out = capsys.readouterr().out
    assert "was made with other params (pretrained_sha256:" in out and "starting fresh" in out
    summary = json.loads((tmp_path / "out/summary.json").read_text())
    assert summary["pretrained"]["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert summary["config"]["pretrained_sha256"] == summary["pretrained"]["sha256"]


@pytest.mark.slow
def test_a_pretrained_vit_fine_tunes_and_records_its_weights(prepared, tmp_path):
    """A quick-profile ViT entry pointing at a locally saved vit_small_patch16_224 state dict
    fine-tunes for one epoch at 32x32 with patch 4; the summary names the file and its sha256."""
    import hashlib

    import timm

    weights = tmp_path / "vit_small_patch16_224.pth"
    torch.save(timm.create_model("vit_small_patch16_224", pretrained=False).state_dict(), weights)
    archive, data_dir = prepared
    raw = tiny_params(str(archive), md5(archive), epochs=1)
    raw["preset"] = "quick"
    raw["presets"]["quick"].update(
        train_size=64, val_size=0, test_size=20, epochs=1, robustness_images=10, attention_images=4
    )
    raw["presets"]["quick"]["models"]["vit"] = {
        "arch": "vit",
        "patch_size": 4,
        "embed_dim": 384,
        "depth": 12,
        "num_heads": 6,
        "mlp_ratio": 4.0,
        "pretrained": str(weights),
    }
    cfg = run_config(params_from_dict(raw), RunSpec("vit", "transfer", 0))
    s = train.train_run(cfg, data_dir, tmp_path / "out", tmp_path / "ckpt")
    on_disk = json.loads((tmp_path / "out/summary.json").read_text())
    assert on_disk["pretrained"] == {
        "source": str(weights.resolve()),
        "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
    }
    assert s.epochs == 1 and s.params > 21e6 and on_disk["config"]["model"]["pretrained"] == str(weights)
