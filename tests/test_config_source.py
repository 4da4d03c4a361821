"""One config source (issue 29.3) and per-preset runs (issue 26.2).

The typed config (cnnvit.config.types) describes every key; params.schema.json is generated from
it (and from the model specs) and must be current; every key must be in params.yaml, each with a
comment, and a missing one is one line naming it and its default. A preset's `runs:` overrides
the top-level one, and Params.runs is what the active preset trains."""

from __future__ import annotations

import copy
import dataclasses
import json
import typing

import pytest
import yaml
from conftest import ROOT, assert_one_line_error, write_yaml
from snakemake.cli import parse_config
from snakemake.utils import update_config

from cnnvit.cli import main
from cnnvit.config import schema as generator
from cnnvit.config import types
from cnnvit.config.load import check, load_params, params_from_dict, yaml_load
from cnnvit.errors import CnnvitError

PARAMS = ROOT / "params.yaml"
SHIPPED = yaml_load(PARAMS.read_text(), "params.yaml")
# each section of params.yaml (one of each kind) and the dataclass that describes it
SECTIONS = {
    (): types.Params,
    ("data",): types.Data,
    ("runs",): types.Runs,
    ("analysis",): types.Analysis,
    ("robustness",): types.Robustness,
    ("cost",): types.Cost,
    ("runtime",): types.Runtime,
    ("recipes", "paper"): types.Recipe,
    ("presets", "quick"): types.Preset,
}


def keys_of(cls) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if not f.metadata.get("derived")]


def node(cfg: dict, path: tuple) -> dict:
    for part in path:
        cfg = cfg[part]
    return cfg


def default_text(f: dataclasses.Field) -> str | None:
    """A key's default as the missing-key line writes it (YAML), or None without one."""
    if f.default is not dataclasses.MISSING:
        value = list(f.default) if isinstance(f.default, tuple) else f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return None
    return value if isinstance(value, str) else json.dumps(value)


# ----------------------------------------------------------------------------- the schema, generated


def test_the_schema_file_is_what_the_typed_config_generates_and_a_stale_one_fails_the_check(
    tmp_path, monkeypatch, capsys
):
    assert main(["schema", "--check"]) == 0
    stale = json.loads(generator.schema_path().read_text())
    stale["$defs"]["recipe"]["properties"]["lr"]["description"] = "an older description"
    copy_ = tmp_path / "params.schema.json"
    copy_.write_text(generator.render(stale))
    monkeypatch.setattr(generator, "schema_path", lambda: copy_)
    assert_one_line_error(main(["schema", "--check"]), capsys.readouterr().err, "out of date", "cnnvit schema")
    assert main(["schema"]) == 0 and json.loads(copy_.read_text()) == generator.params_schema()


def test_a_key_without_a_description_cannot_be_generated():
    @dataclasses.dataclass(frozen=True)
    class Section:
        """A section."""

        size: int = 3

    with pytest.raises(TypeError, match="size: a params key needs a one-line doc"):
        generator.section(Section)


def test_the_schema_shows_each_keys_description_default_and_bounds():
    schema = generator.params_schema()
    props = schema["properties"]
    runtime = props["runtime"]["properties"]["checkpoint_every_s"]
    assert runtime["default"] == 300 and runtime["minimum"] == 0 and "checkpoints" in runtime["description"]
    preset = schema["$defs"]["preset"]
    assert preset["properties"]["hardware"]["enum"] == ["cpu", "gpu"]
    assert preset["properties"]["runs"] == {**preset["properties"]["runs"], "$ref": "#/$defs/runs_override"}
    assert "required" not in schema["$defs"]["runs_override"]  # any of runs:' keys, none needed
    assert set(schema["$defs"]["runs_override"]["properties"]) == set(props["runs"]["properties"])
    assert props["runs"]["properties"]["seeds"]["items"] == {"type": "integer", "minimum": 0, "maximum": 2**32 - 1}


# ----------------------------------------------------------------------------- every key in params.yaml


def test_params_yaml_holds_every_key_of_every_section_and_no_other():
    for path, cls in SECTIONS.items():
        assert set(node(SHIPPED, path)) == {f.name for f in keys_of(cls)}, path
    for name, preset in SHIPPED["presets"].items():
        assert set(preset) == {f.name for f in keys_of(types.Preset)}, name
    for name, recipe in SHIPPED["recipes"].items():
        assert set(recipe) == {f.name for f in keys_of(types.Recipe)}, name


@pytest.mark.parametrize("path", list(SECTIONS), ids=lambda p: ".".join(p) or "top")
def test_a_missing_key_is_one_line_naming_it_and_its_default(path):
    """DVC tracks params.yaml: a value that only the code held would be invisible to it."""
    for f in keys_of(SECTIONS[path]):
        cfg = copy.deepcopy(SHIPPED)
        del node(cfg, path)[f.name]
        dotted = ".".join((*path, f.name))
        under = f"under {'.'.join(path)}:" if path else "at the top level"
        with pytest.raises(CnnvitError) as exc:
            check(cfg)
        line = str(exc.value)
        default = default_text(f)
        tail = f" (its default: {default})" if default is not None else ""
        assert line == f"params.yaml: {dotted} is missing: add it {under}{tail}", line


def test_a_missing_key_through_a_command(tmp_path, capsys):
    cfg = copy.deepcopy(SHIPPED)
    del cfg["runtime"]["checkpoint_every_s"]
    path = write_yaml(tmp_path / "params.yaml", cfg)
    assert main(["plan", "--params", str(path)]) == 1
    err = capsys.readouterr().err
    assert err == f"error: {path}: runtime.checkpoint_every_s is missing: add it under runtime: (its default: 300)\n"
    del cfg["runtime"]["threads"]
    with pytest.raises(CnnvitError, match=r"runtime: missing required keys threads, checkpoint_every_s: add them "):
        params_from_dict(cfg)


def literal_keys():
    for path, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        for f in keys_of(cls):
            if typing.get_origin(hints[f.name]) is typing.Literal:
                yield path, f.name, typing.get_args(hints[f.name])


def test_each_literal_value_loads_and_another_is_refused_naming_the_key():
    """The values a key allows are its Literal's, and the schema file says so."""
    seen = 0
    for path, name, allowed in literal_keys():
        for value in allowed:
            cfg = copy.deepcopy(SHIPPED)
            node(cfg, path)[name] = value
            check(cfg)
        cfg = copy.deepcopy(SHIPPED)
        node(cfg, path)[name] = "bogus"
        with pytest.raises(CnnvitError, match=rf"{'.'.join((*path, name))}: 'bogus' is not one of"):
            check(cfg)
        seen += 1
    assert seen >= 10


def test_every_key_of_params_yaml_has_a_comment():
    """Inline, or on the line above. A flow mapping ({arch: vit, ...}) is one value: its key's comment covers it."""
    text = PARAMS.read_text()
    lines = text.splitlines()
    uncommented, seen, keys = [], set(), 0

    def walk(n):
        nonlocal keys
        if id(n) in seen or not isinstance(n, yaml.MappingNode) or n.flow_style:
            return
        seen.add(id(n))
        for k, v in n.value:
            line = k.start_mark.line
            keys += 1
            above = lines[line - 1].strip() if line else ""
            if "#" not in lines[line].split(":", 1)[1] and not above.startswith("#"):
                uncommented.append(f"line {line + 1}: {lines[line].strip()}")
            walk(v)

    walk(yaml.compose(text))
    assert keys > 150 and not uncommented, uncommented


# ----------------------------------------------------------------------------- per-preset runs


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


def test_the_transfer_preset_runs_its_own_models_once_the_claims_it_cannot_test_are_dropped():
    p = load_params(PARAMS, ["preset=transfer", "analysis.claims=[resnet_beats_vit]"])
    assert {r.name for r in p.all_runs()} == {
        f"{m}-transfer-s{s}" for m in ("vit", "resnet50", "convnext") for s in (0, 1, 2)
    }


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


def test_a_description_or_a_bound_edit_leaves_a_runs_code_identity_alone(tmp_path, monkeypatch):
    """The docs and bounds live in the fields' metadata, which the code identity leaves out; a
    default is code (it would be what a missing key became, were it not refused)."""
    from cnnvit import code_identity

    source = code_identity.module_path("cnnvit.config.types").read_text()
    edits = {
        "doc": source.replace('"the peak learning rate"', '"the largest learning rate"'),
        "bound": source.replace('"images per optimizer step", minimum=1', '"images per optimizer step", minimum=2'),
        "default": source.replace("default=0.9,", "default=0.8,"),
    }
    digests = {}
    for name, text in {"shipped": source, **edits}.items():
        assert text != source or name == "shipped", name
        (tmp_path / f"{name}.py").write_text(text)
        monkeypatch.setattr(code_identity, "module_path", lambda _m, p=tmp_path / f"{name}.py": p)
        digests[name] = code_identity.digest.__wrapped__("cnnvit.config.types")
    assert digests["doc"] == digests["bound"] == digests["shipped"] != digests["default"]
