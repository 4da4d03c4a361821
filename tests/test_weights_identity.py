"""Weights that must agree with what they claim (issue 28.2 and a smaller item): pretrained weights
that do not fit the model, or hold NaN, are refused in one line naming the first keys; the
pretrained file's sha256 is part of the run's identity (new weights at the same path retrain); a
run's weights.safetensors is the same bytes however often it is written."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest
import torch
from conftest import make_cifar_python, md5, prepare_dir, tiny_params
from safetensors.torch import save_file

from cnnvit.config.load import params_from_dict
from cnnvit.config.runs import run_config
from cnnvit.config.types import RunSpec
from cnnvit.errors import CnnvitError
from cnnvit.models import build_model, spec_from_dict
from cnnvit.models.weights import load_weights, save_weights, weights_metadata

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


# ----------------------------------------------------------------------------- identity


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    d = tmp_path_factory.mktemp("ident")
    archive = make_cifar_python(d / "c.tar.gz")
    return archive, prepare_dir(archive, d / "prepared")


def config(archive, pretrained: str | None = None):
    raw = tiny_params(str(archive), md5(archive), epochs=1)
    raw["presets"]["tiny"]["models"]["vit"] = {**VIT2, **({"pretrained": pretrained} if pretrained else {})}
    return run_config(params_from_dict(raw), RunSpec("vit", "paper", 0))


def test_a_run_without_pretrained_weights_keeps_its_identity(prepared):
    archive, _ = prepared
    ident = config(archive).identity()
    fields = {f.name for f in dataclasses.fields(config(archive))} - {"runtime", "run"}
    assert set(ident) == fields | {"run"} and "pretrained_sha256" not in ident


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


# ----------------------------------------------------------------------------- the weights file


def test_the_same_weights_are_the_same_bytes(tmp_path):
    """A resumed run's weights.safetensors differed from the uninterrupted one's: safetensors writes
    its metadata in a hash map's order, new each call."""
    model = build_model(spec_from_dict(VIT2))
    meta = {"run": "vit-paper-s0", "epoch": "3", "arch": "vit", "selected_on": "val_acc"}
    blobs = set()
    for i in range(12):
        save_weights(tmp_path / f"{i}.safetensors", model.state_dict(), dict(reversed(meta.items())) if i % 2 else meta)
        blobs.add((tmp_path / f"{i}.safetensors").read_bytes())
    assert len(blobs) == 1
    assert weights_metadata(tmp_path / "0.safetensors") == meta
    assert load_weights(build_model(spec_from_dict(VIT2)), tmp_path / "0.safetensors") == meta


def test_a_continued_run_writes_the_same_weights_file_as_an_uninterrupted_one(prepared, tmp_path):
    from cnnvit.training import engine as train

    archive, data = prepared
    two = dataclasses.replace(config(archive), epochs=2)
    train.train_run(two, data, tmp_path / "a", tmp_path / "ck_a")
    train.train_run(config(archive), data, tmp_path / "b", tmp_path / "ck_b")  # 1 epoch (constant lr) ...
    train.train_run(two, data, tmp_path / "b", tmp_path / "ck_b")  # ... continued to 2
    assert (tmp_path / "a/weights.safetensors").read_bytes() == (tmp_path / "b/weights.safetensors").read_bytes()
