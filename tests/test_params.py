"""The params loader: typed configs, per-arch schemas, errors that name the key, YAML 1.2
numbers, deprecated names, and the schema's arch list against the registry."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import ROOT

from cnnvit.cli import main
from cnnvit.config.load import RunSpec, coerce_scalars, load_params, model_keys, params_from_dict, schema
from cnnvit.errors import CnnvitError
from cnnvit.models import specs as archs

PARAMS = ROOT / "params.yaml"


def test_shipped_params_are_valid_for_every_profile():
    for profile in load_params(PARAMS).profiles:
        p = load_params(
            PARAMS, [f"profile={profile}", f"runs.models={list(load_params(PARAMS).profiles[profile].models)}"]
        )
        run = p.runs()[0]
        assert p.run_config(run).profile == profile


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("recipes.paper.lr=-1", "recipes.paper.lr: -1 is less than or equal to the minimum of 0"),
        ("recipes.paper.lrr=0.1", "unknown key recipes.paper.lrr"),
        ("bogus=1", "unknown key bogus"),
        ("profile=huge", "profile: unknown profile 'huge'"),
        ("runs.models=[vit,nope]", "model 'nope' is not defined in profile 'paper'"),
        ("runs.recipes=[fast]", "runs.recipes: unknown recipe 'fast'"),
        ("data.format=zip", "data.format: 'zip' is not one of"),
        ("data.md5=null", "data: no checksum"),
        ("profiles.quick.models.vit.arch=vgg", "profiles.quick.models.vit.arch"),
        (
            "profiles.paper.models.resnet50.depth=12",
            "unknown key profiles.paper.models.resnet50.depth for arch resnet50",
        ),
        (
            "profiles.paper.models.cnn_vit.patch_size=4",
            "unknown key profiles.paper.models.cnn_vit.patch_size for arch cnn_vit",
        ),
        ("profiles.paper.models.vit={arch: vit}", "profiles.paper.models.vit: 'patch_size' is a required property"),
        ("profiles.paper.models.convnext.dims=[8,16]", "depths and dims must have the same length"),
        ("runs.train_fractions=[0, 1]", "runs.train_fractions.0: 0 is less than or equal to the minimum of 0"),
        ("runtime.precision=fp8", "runtime.precision: 'fp8' is not one of"),
    ],
)
def test_bad_params_fail_before_anything_runs_naming_the_key(override, needle, capsys):
    with pytest.raises(CnnvitError) as exc:
        load_params(PARAMS, [override])
    assert needle in str(exc.value)
    assert main(["download", "--params", str(PARAMS), "--set", override]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err


def test_an_override_edits_only_the_profile_it_names_even_through_a_yaml_alias():
    # profiles.datasize.models is written as `*paper_models`; editing the paper profile must not edit it
    params = load_params(PARAMS, ["profiles.paper.models.vit.depth=3", "profile=datasize"])
    assert params.profiles["datasize"].models["vit"].depth != 3
    assert params.profiles["paper"].models["vit"].depth == 3


def test_yaml_errors_give_the_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("profile: paper\ndata:\n  url: [unclosed\n")
    with pytest.raises(CnnvitError, match=r"not valid YAML at line \d+, column \d+"):
        load_params(bad)
    with pytest.raises(CnnvitError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    with pytest.raises(CnnvitError, match="bad override"):
        load_params(PARAMS, ["novalue"])


def test_scientific_notation_is_a_number_everywhere(tmp_path):
    text = PARAMS.read_text().replace("lr: 1.0e-3", "lr: 1e-3")
    assert "lr: 1e-3" in text
    (tmp_path / "q.yaml").write_text(text)
    assert load_params(tmp_path / "q.yaml").recipes["paper"].lr == 1e-3
    assert load_params(PARAMS, ["recipes.paper.lr=1e-4"]).recipes["paper"].lr == 1e-4
    # what PyYAML's YAML 1.1 reader (Snakemake's --config/--configfile) hands over: a string
    raw = yaml.safe_load(text)
    assert raw["recipes"]["paper"]["lr"] == "1e-3"
    assert params_from_dict(raw).recipes["paper"].lr == 1e-3
    assert coerce_scalars({**raw, "data": {**raw["data"], "md5": "1e5" + "0" * 29}})["data"]["md5"] == "1e5" + "0" * 29


def test_snakemake_config_strings_become_the_values_they_spell():
    # Snakemake's --config reads nested values with YAML's BaseLoader: every scalar is a string
    from snakemake.cli import parse_config
    from snakemake.utils import update_config

    raw = yaml.safe_load(PARAMS.read_text())
    sha = "ab" * 32
    given = parse_config([f"data={{url: x.tar.gz, md5: null, sha256: {sha}}}", "runs={seeds: [0, 1]}"])
    given |= parse_config(["runtime={compile: true, threads: 2, device: cpu}"])
    assert given["data"]["md5"] == "null" and given["runs"]["seeds"] == ["0", "1"]
    update_config(raw, given)
    p = params_from_dict(raw)
    assert p.data.md5 is None and p.data.sha256 == sha
    assert [r.seed for r in p.runs()][:2] == [0, 1]
    assert p.runtime.compile is True and p.runtime.threads == 2
    # a string that is valid as a string stays one
    raw["data"]["url"] = "null"
    assert params_from_dict(raw).data.url == "null"
    # a number that breaks a rule is reported as the number, with the rule
    update_config(raw, parse_config(["recipes={paper: {lr: -1}}"]))
    with pytest.raises(CnnvitError, match=r"recipes.paper.lr: -1 is less than or equal to the minimum of 0"):
        params_from_dict(raw)


def test_deprecated_names_still_work_and_say_so(capsys):
    p = load_params(PARAMS, ["train.device=cpu", "recipes.modern.schedule=onecycle"])
    assert p.runtime.device == "cpu" and p.recipes["modern"].schedule == "linear"
    err = capsys.readouterr().err
    assert "`train:` is deprecated" in err and "'onecycle' is deprecated" in err


def test_typed_configs_and_run_names():
    p = load_params(PARAMS, ["profile=quick", "runs.train_fractions=[0.2, 1]"])
    names = [r.name for r in p.runs()]
    assert "vit-paper-s0" in names and "vit-paper-f0.2-s0" in names
    assert len(names) == len(p.runs_.models) * len(p.runs_.recipes) * 2 * len(p.runs_.seeds)
    cfg = p.run_config(RunSpec("vit", "modern", 1, 0.2))
    assert cfg.epochs == round(p.active.epochs / 0.2) and cfg.eval_every == 5
    steps = load_params(PARAMS, ["profile=quick", "runs.fraction_budget=epochs"])
    assert steps.run_config(RunSpec("vit", "modern", 1, 0.2)).epochs == p.active.epochs
    # runtime-only settings are not part of a run's identity; precision is
    a, b = (
        load_params(PARAMS, [o]).run_config(RunSpec("vit", "paper", 0))
        for o in ("runtime.threads=1", "runtime.threads=2")
    )
    assert a.identity() == b.identity()
    c = load_params(PARAMS, ["runtime.precision=bf16"]).run_config(RunSpec("vit", "paper", 0))
    assert c.identity() != a.identity()
    assert (
        load_params(PARAMS, ["recipes.paper.warmup_epochs=0.0"]).run_config(RunSpec("vit", "paper", 0)).identity()
        == a.identity()
    )


def test_schema_arch_list_equals_the_registry():
    from cnnvit.models.build import BUILDERS

    defs = schema()["$defs"]
    assert set(defs["model"]["properties"]["arch"]["enum"]) == set(archs.ARCHS) == set(BUILDERS)
    for arch in archs.ARCHS:
        assert set(defs[f"arch_{arch}"]["properties"]) == model_keys(arch), arch


def test_registry_refuses_a_duplicate_name():
    with pytest.raises(TypeError, match="registered twice"):

        class Again(archs.ArchSpec):
            arch = "vit"
            display = "ViT again"
            convnet = False

    from cnnvit.models.build import builds

    with pytest.raises(TypeError, match="registered twice"):
        builds(archs.ViT)(lambda s: None)


def test_schema_is_valid_json_schema():
    import jsonschema

    jsonschema.Draft202012Validator.check_schema(schema())
    assert json.loads((ROOT / "src/cnnvit/config/params.schema.json").read_text()) == schema()
