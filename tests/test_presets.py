"""The presets as shipped: every model of every preset resolves, each says what hardware it is
sized for, the transfer preset runs its own models, and the laptop preset (issue 26) asks the
paper's question on a 2-core CPU: all of CIFAR-10, the paper's three models under the paper recipe,
at least three seeds, FLOPs comparable; one epoch of each of its runs through `cnnvit train` on a
slice of the fixture data. Its wall time and accuracies are measured by benchmarks/laptop.sh."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import PARAMS, PER_BATCH, VAL_SIZE, claims_for, make_cifar_python, md5, prepare_dir, write_yaml

from cnnvit.cli import main
from cnnvit.config.load import load_params
from cnnvit.config.runs import run_config
from cnnvit.models import build_model, flops_per_image, spec_from_dict
from cnnvit.paper import CLAIMS


def test_shipped_params_are_valid_for_every_preset():
    """Every model of every preset resolves to its spec (through the preset's own runs: override)."""
    for preset in load_params(PARAMS).presets:
        models = list(load_params(PARAMS).presets[preset].models)
        claims = f"analysis.claims={claims_for(models)}"
        p = load_params(PARAMS, [f"preset={preset}", f"presets.{preset}.runs.models={models}", claims])
        assert set(p.runs.models) == set(models)
        for run in p.all_runs():
            assert run_config(p, run).preset == preset


@pytest.mark.parametrize("preset", ["paper", "quick", "laptop", "datasize", "transfer"])
def test_a_preset_says_what_hardware_it_is_sized_for(preset):
    hardware = load_params(PARAMS).presets[preset].hardware
    assert hardware == ("cpu" if preset in ("quick", "laptop") else "gpu")


def test_the_transfer_preset_runs_its_own_models_once_the_claims_it_cannot_test_are_dropped():
    p = load_params(PARAMS, ["preset=transfer", "analysis.claims=[resnet_beats_vit]"])
    assert {r.name for r in p.all_runs()} == {
        f"{m}-transfer-s{s}" for m in ("vit", "resnet50", "convnext") for s in (0, 1, 2)
    }


# ----------------------------------------------------------------------------- the laptop preset


@pytest.fixture(scope="module")
def laptop():
    return load_params(PARAMS, ["preset=laptop"])


def test_the_laptop_preset_trains_the_papers_models_on_all_of_cifar10_on_a_cpu(laptop):
    preset = laptop.active
    assert preset.hardware == "cpu"
    assert (preset.train_size, preset.val_size, preset.test_size) == (0, 0, 0)  # 0: all 45,000 / 5,000 / 10,000
    assert laptop.data.expect_train == 50_000 and laptop.data.val_size == 5_000 and laptop.data.expect_test == 10_000
    paper_models = {m for claim in CLAIMS for m in claim.models}
    assert set(laptop.runs.models) == paper_models and len(paper_models) == 3
    assert laptop.runs.recipes == ("paper",) and len(laptop.runs.seeds) >= 3
    assert laptop.runs.train_fractions == (1.0,)
    # every claim of the paper is tested: none is dropped for want of its models
    assert set(laptop.analysis.claims) == {c.id for c in CLAIMS}
    assert len(laptop.all_runs()) == 3 * len(laptop.runs.seeds)


def test_every_laptop_model_builds_and_the_papers_three_are_within_3x_in_flops(laptop):
    flops = {}
    for name, entry in laptop.active.models.items():  # the opt-in ones too
        model = build_model(spec_from_dict(entry))
        flops[name] = flops_per_image(model)
        assert flops[name] > 0, name
    for run in laptop.all_runs():
        assert run_config(laptop, run).model.to_dict()["arch"] == laptop.active.models[run.model]["arch"]
    three = [flops[m] for m in laptop.runs.models]
    assert max(three) <= 3 * min(three), flops


def test_one_epoch_of_every_laptop_run_on_a_slice(tmp_path, capsys):
    """The preset as shipped (its models, recipe and runs), with the data sizes cut to a slice of
    the fixture data, one epoch and one seed: `cnnvit train --all-runs` trains its three runs."""
    archive = make_cifar_python(tmp_path / "c.tar.gz")
    prepared = prepare_dir(archive, tmp_path / "prepared")
    raw = yaml.safe_load(PARAMS.read_text())
    raw["data"].update(url=str(archive), md5=md5(archive), sha256=None, expect_train=5 * PER_BATCH)
    raw["data"].update(expect_test=PER_BATCH, val_size=VAL_SIZE)
    raw["preset"] = "laptop"
    params_file = write_yaml(tmp_path / "params.yaml", raw)
    sizes = {"train_size": 40, "val_size": 10, "test_size": 10, "epochs": 1, "robustness_images": 10}
    sets = [f"presets.laptop.{k}={v}" for k, v in {**sizes, "attention_images": 4, "runs.seeds": "[0]"}.items()]
    argv = ["train", "--all-runs", "--params", str(params_file), "--data-dir", str(prepared)]
    argv += ["--runs-dir", str(tmp_path / "runs"), "--ckpt-dir", str(tmp_path / "ck")]
    for item in sets:
        argv += ["--set", item]
    assert main(argv) == 0, capsys.readouterr().err
    trained = sorted(p.name for p in (tmp_path / "runs").iterdir() if p.is_dir())  # beside them: the forecast
    assert trained == ["cnn_vit-paper-s0", "resnet50-paper-s0", "vit-paper-s0"]
    for name in trained:
        summary = json.loads((tmp_path / "runs" / name / "summary.json").read_text())
        assert summary["config"]["preset"] == "laptop" and summary["config"]["epochs"] == 1
        assert summary["config"]["train_size"] == 40 and summary["config"]["recipe"]["batch_size"] == 128
