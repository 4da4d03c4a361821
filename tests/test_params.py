"""The params loader: typed configs, per-arch schemas, errors that name the key, YAML 1.2
numbers, deprecated names, and the schema's arch list against the registry."""

from __future__ import annotations

import dataclasses

import pytest
import yaml
from conftest import ROOT, claims_for

from cnnvit.cli import main
from cnnvit.config.load import coerce_scalars, load_params, params_from_dict, schema
from cnnvit.config.runs import run_config
from cnnvit.config.types import RunSpec
from cnnvit.errors import CnnvitError
from cnnvit.models import ARCHS, ArchSpec
from cnnvit.models.registry import register
from cnnvit.models.schema import schema_defs

PARAMS = ROOT / "params.yaml"


def test_shipped_params_are_valid_for_every_preset():
    """Every model of every preset resolves to its spec (through the preset's own runs: override)."""
    for preset in load_params(PARAMS).presets:
        models = list(load_params(PARAMS).presets[preset].models)
        claims = f"analysis.claims={claims_for(models)}"
        p = load_params(PARAMS, [f"preset={preset}", f"presets.{preset}.runs.models={models}", claims])
        assert set(p.runs.models) == set(models)
        for run in p.all_runs():
            assert run_config(p, run).preset == preset


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("recipes.paper.lr=-1", "recipes.paper.lr: -1 is less than or equal to the minimum of 0"),
        ("recipes.paper.lrr=0.1", "unknown key recipes.paper.lrr"),
        ("bogus=1", "unknown key bogus"),
        ("preset=huge", "preset: unknown preset 'huge'"),
        ("runs.models=[vit,nope]", "model 'nope' is not defined in preset 'paper'"),
        ("runs.recipes=[fast]", "runs.recipes: unknown recipe 'fast'"),
        ("data.format=zip", "data.format: 'zip' is not one of"),
        ("data.md5=null", "data: no checksum"),
        ("presets.quick.models.vit.arch=vgg", "presets.quick.models.vit.arch: no module registers arch 'vgg'"),
        (
            "presets.paper.models.resnet50.depth=12",
            "unknown key presets.paper.models.resnet50.depth for arch resnet50",
        ),
        (
            "presets.paper.models.cnn_vit.patch_size=4",
            "unknown key presets.paper.models.cnn_vit.patch_size for arch cnn_vit",
        ),
        (
            "presets.paper.models.vit={arch: vit}",
            "presets.paper.models.vit: missing required keys embed_dim, depth, num_heads, mlp_ratio, patch_size",
        ),
        ("presets.paper.models.convnext.dims=[8,16]", "depths and dims must have the same length"),
        ("runs.train_fractions=[0, 1]", "runs.train_fractions.0: 0 is less than or equal to the minimum of 0"),
        ("runtime.precision=fp8", "runtime.precision: 'fp8' is not one of"),
        ("data.val_size=0", "data.val_size: 0 is less than the minimum of 1"),
        ("data.val_size=-5", "data.val_size: -5 is less than the minimum of 1"),
        ("presets.quick.val_size=-1", "presets.quick.val_size: -1 is less than the minimum of 0"),
        ("analysis.metric=best", "analysis.metric: 'best' is not one of"),
        # issue 28.12: sizes timm cannot build, caught at validation and not as its AssertionError
        ("presets.paper.models.vit.num_heads=5", "presets.paper.models.vit: num_heads 5 must divide embed_dim 384"),
        ("presets.quick.models.cnn_vit.num_heads=5", "num_heads 5 must divide embed_dim 48"),
        ("presets.paper.models.vit.patch_size=5", "patch_size 5 must divide the image side (32 pixels)"),
        ("presets.paper.models.convnext.patch_size=3", "patch_size 3 must divide the image side"),
        # issue 25: the claims and their margin
        ("analysis.close_margin_pp=-1", "analysis.close_margin_pp: -1 is less than the minimum of 0"),
        ("analysis.close_margin_pp=wide", "analysis.close_margin_pp: 'wide' is not of type 'number'"),
        ("analysis.claims=[resnet_beats_cnn]", "analysis.claims.0: 'resnet_beats_cnn' is not one of"),
        ("runs.models=[vit,cnn_vit]", "analysis.claims: resnet_beats_vit needs resnet50"),
    ],
)
def test_bad_params_fail_before_anything_runs_naming_the_key(override, needle, capsys):
    with pytest.raises(CnnvitError) as exc:
        load_params(PARAMS, [override])
    assert needle in str(exc.value)
    assert main(["download", "--params", str(PARAMS), "--set", override]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err


def test_an_override_edits_only_the_preset_it_names_even_through_a_yaml_alias():
    # presets.datasize.models is written as `*paper_models`; editing the paper preset must not edit it
    params = load_params(PARAMS, ["presets.paper.models.vit.depth=3", "preset=datasize"])
    assert params.presets["datasize"].models["vit"]["depth"] != 3
    assert params.presets["paper"].models["vit"]["depth"] == 3


def test_yaml_errors_give_the_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("preset: paper\ndata:\n  url: [unclosed\n")
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
    assert [r.seed for r in p.all_runs()][:2] == [0, 1]
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
    p = load_params(PARAMS, ["preset=quick", "runs.train_fractions=[0.2, 1]"])
    names = [r.name for r in p.all_runs()]
    assert "vit-paper-s0" in names and "vit-paper-f0.2-s0" in names
    assert len(names) == len(p.runs.models) * len(p.runs.recipes) * 2 * len(p.runs.seeds)
    cfg = run_config(p, RunSpec("vit", "modern", 1, 0.2))
    assert cfg.epochs == round(p.active.epochs / 0.2) and cfg.eval_every == 5
    steps = load_params(PARAMS, ["preset=quick", "runs.fraction_budget=epochs"])
    assert run_config(steps, RunSpec("vit", "modern", 1, 0.2)).epochs == p.active.epochs
    # runtime-only settings are not part of a run's identity; precision is
    a, b = (
        run_config(load_params(PARAMS, [o]), RunSpec("vit", "paper", 0))
        for o in ("runtime.threads=1", "runtime.threads=2")
    )
    assert a.identity() == b.identity()
    c = run_config(load_params(PARAMS, ["runtime.precision=bf16"]), RunSpec("vit", "paper", 0))
    assert c.identity() != a.identity()
    assert (
        run_config(load_params(PARAMS, ["recipes.paper.warmup_epochs=0.0"]), RunSpec("vit", "paper", 0)).identity()
        == a.identity()
    )


def test_the_schemas_model_part_is_what_the_spec_classes_generate():
    """params.schema.json's model definitions are written by `cnnvit schema` from cnnvit.models."""
    defs = schema()["$defs"]
    assert {k: defs[k] for k in schema_defs()} == schema_defs()
    assert set(defs["model"]["properties"]["arch"]["enum"]) == set(ARCHS)
    for arch, cls in ARCHS.items():
        fields = {f.name for f in dataclasses.fields(cls)}
        assert set(defs[f"arch_{arch}"]["properties"]) == {"arch"} | fields, arch
    assert main(["schema", "--params", str(PARAMS), "--check"]) == 0


def test_registry_refuses_a_duplicate_name():
    with pytest.raises(TypeError, match="registered twice"):

        @register
        class Again(ArchSpec):
            arch = "vit"
            display = "ViT again"
            convnet = False


def test_schema_is_valid_json_schema():
    import jsonschema

    jsonschema.Draft202012Validator.check_schema(schema())
