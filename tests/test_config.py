"""Loading params.yaml: errors that name the key before anything runs, YAML 1.2 numbers and
Snakemake's config strings, deprecated names, run names and what a run's identity holds, and a
preset's own `runs:` over the top-level one (issue 26.2)."""

from __future__ import annotations

import copy

import pytest
import yaml
from conftest import PARAMS, assert_one_line_error
from snakemake.cli import parse_config
from snakemake.utils import update_config

from cnnvit.cli import main
from cnnvit.config.load import coerce_scalars, load_params, params_from_dict, yaml_load
from cnnvit.config.runs import run_config
from cnnvit.config.types import RunSpec
from cnnvit.errors import CnnvitError


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
        ("runtime.precision=fp8", "runtime.precision: 'fp8' is not one of ['auto', 'fp32', 'bf16', 'fp16']"),
        ("runtime.compile=fastest", "runtime.compile: 'fastest' is not one of [False, True, 'default'"),
        ("runtime.runs_per_gpu=0", "runtime.runs_per_gpu: 0 is less than the minimum of 1"),
        # a number or auto: both named, not "not valid under any of the given schemas"
        ("runtime.eval_batch_size=big", 'runtime.eval_batch_size: "big" is not a whole number >= 1 or auto'),
        ("runtime.eval_batch_size=1.5", "runtime.eval_batch_size: 1.5 is not a whole number >= 1 or auto"),
        ("runtime.eval_batch_size=null", "runtime.eval_batch_size: null is not a whole number >= 1 or auto"),
        ("runtime.eval_batch_size=0", "runtime.eval_batch_size: 0 is less than the minimum of 1"),
        ("runtime.device=tpu", "runtime.device: 'tpu' is not one of ['auto', 'cpu', 'cuda', 'mps']"),
        ("robustness.corruptions=[frost]", "robustness.corruptions.0: 'frost' is not one of"),
        ("robustness.severities=[0, 6]", "robustness.severities.0: 0 is not one of [1, 2, 3, 4, 5]"),
        ("cost.sizes=[]", "cost.sizes: [] should be non-empty"),
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


# ----------------------------------------------------------------------------- per-preset runs


SHIPPED = yaml_load(PARAMS.read_text(), "params.yaml")


def test_a_presets_runs_override_the_top_level_ones_key_by_key():
    raw = copy.deepcopy(SHIPPED)
    raw.update(preset="laptop", runs={**raw["runs"], "train_fractions": [0.5, 1.0], "seeds": [7]})
    laptop = params_from_dict(raw)
    assert laptop.runs.models == ("resnet50", "vit", "cnn_vit") and laptop.runs.recipes == ("paper",)
    assert laptop.runs.seeds == (0, 1, 2, 3, 4)  # the preset's, not the top-level override
    assert laptop.runs.train_fractions == (0.5, 1.0)  # not overridden: the top level's
    assert len(laptop.all_runs()) == 3 * 1 * 2 * 5
    # raw is the file as given: the top-level runs and the preset's own, apart
    assert laptop.raw["runs"]["seeds"] == [7] and laptop.raw["presets"]["laptop"]["runs"]["seeds"] == [0, 1, 2, 3, 4]
    assert laptop.active.runs == SHIPPED["presets"]["laptop"]["runs"]
    quick = load_params(PARAMS, ["preset=quick"])
    assert quick.active.runs == {} and quick.runs == load_params(PARAMS).runs  # {}: the top level's
    assert len(quick.all_runs()) == 5 * 2 * 3


def test_snakemakes_config_strings_reach_a_presets_runs():
    raw = yaml_load(PARAMS.read_text(), "params.yaml")
    update_config(raw, parse_config(["preset=laptop", "presets={laptop: {runs: {seeds: [3, 4]}}}"]))
    assert raw["presets"]["laptop"]["runs"]["seeds"] == ["3", "4"]  # merged, as strings
    p = params_from_dict(raw)
    assert p.runs.seeds == (3, 4) and p.runs.models == ("resnet50", "vit", "cnn_vit")


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["preset=lapotp"], "preset: unknown preset 'lapotp'; use one of datasize, laptop, paper, quick, transfer"),
        (["preset=laptop", "presets.laptop.runs.epochs=3"], "unknown key presets.laptop.runs.epochs: remove or rename"),
        (
            ["preset=laptop", "presets.laptop.runs.models=[vit, cnn_vit]"],
            "analysis.claims: resnet_beats_vit needs resnet50, which presets.laptop.runs.models does not list: add "
            "resnet50 to presets.laptop.runs.models, or drop resnet_beats_vit from analysis.claims",
        ),
        (["preset=quick", "runs.models=[vit, resnet50]"], "hybrid_beats_vit needs cnn_vit, which runs.models does not"),
        (["preset=transfer"], "hybrid_beats_vit needs cnn_vit, which presets.transfer.runs.models does not list"),
        (["preset=laptop", "presets.laptop.runs.recipes=[fast]"], "presets.laptop.runs.recipes: unknown recipe 'fast'"),
        (
            ["preset=laptop", "presets.laptop.runs.models=[vit, cnn_vit, resnet50, nope]"],
            "presets.laptop.runs.models: model 'nope' is not defined in preset 'laptop'",
        ),
        (["preset=laptop", "presets.laptop.runs.seeds=[]"], "presets.laptop.runs.seeds: [] should be non-empty"),
        (
            ["preset=laptop", "presets.laptop.runs.train_fractions=[1e-9, 1]"],
            "presets.laptop.runs.train_fractions: 1e-09 of 45,000",
        ),
        (
            ["presets.laptop.models.vit.arch=vgg"],
            "presets.laptop.models.vit.arch: no module registers arch 'vgg': use one of",
        ),
        (["presets.laptop.hardware=tpu"], "presets.laptop.hardware: 'tpu' is not one of ['cpu', 'gpu']"),
        (
            ["preset=laptop", "runs.seeds=[0, 1]"],
            "--set runs.seeds: preset laptop sets presets.laptop.runs.seeds, which wins over runs.seeds: --set "
            "presets.laptop.runs.seeds=... instead",
        ),
        (
            [
                "preset=laptop",
                "runs={models: [vit], recipes: [paper], seeds: [1], train_fractions: [1], fraction_budget: steps}",
            ],
            "--set runs: preset laptop sets presets.laptop.runs.models, which wins over runs.models",
        ),
    ],
)
def test_bad_runs_and_presets_are_one_line_naming_the_key(overrides, needle, capsys):
    argv = ["plan", "--params", str(PARAMS)]
    for item in overrides:
        argv += ["--set", item]
    assert_one_line_error(main(argv), capsys.readouterr().err, needle)
