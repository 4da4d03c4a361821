"""One config source (issue 29.3): the typed config (cnnvit.config.types) describes every key;
params.schema.json is generated from it (and from the model specs) and must be current and valid;
every key must be in params.yaml, each with a comment, and a missing one is one line naming it and
its default; whatever a DVC stage reads is required; a key's doc or bound is not code."""

from __future__ import annotations

import copy
import dataclasses
import json
import typing

import pytest
import yaml
from conftest import PARAMS, assert_one_line_error, write_yaml

from cnnvit.cli import main
from cnnvit.config import schema as generator
from cnnvit.config import types
from cnnvit.config.load import check, load_params, params_from_dict, schema, yaml_load
from cnnvit.dag import stages as S
from cnnvit.errors import CnnvitError
from cnnvit.models import ARCHS

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


def test_the_schemas_model_part_is_what_the_spec_classes_generate():
    """params.schema.json's model definitions: every registered arch, each with its spec class's
    fields as its keys (the file being current is the --check above)."""
    defs = schema()["$defs"]
    assert set(defs["model"]["properties"]["arch"]["enum"]) == set(ARCHS)
    for arch, cls in ARCHS.items():
        fields = {f.name for f in dataclasses.fields(cls)}
        assert set(defs[f"arch_{arch}"]["properties"]) == {"arch"} | fields, arch


def test_schema_is_valid_json_schema():
    import jsonschema

    jsonschema.Draft202012Validator.check_schema(schema())


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


def test_every_key_a_dvc_stage_reads_is_required_by_the_schema():
    """DVC stops at a params key missing from params.yaml: whatever a job reads must be required,
    so that a params file one tool accepts, the other does too (data.md5 was optional)."""
    params = load_params(PARAMS, ["runs.train_fractions=[0.5, 1.0]"])
    root = schema()

    def required(dotted: str) -> bool:
        node = root
        for part in dotted.split("."):
            node = resolve(node)
            if "properties" in node and part in node["properties"]:
                if part not in node.get("required", []):
                    return False
                node = node["properties"][part]
            elif isinstance(node.get("additionalProperties"), dict):  # a map: presets, recipes, models
                node = node["additionalProperties"]
            else:
                return False
        return True

    def resolve(node):
        return resolve(root["$defs"][node["$ref"].split("/")[-1]]) if "$ref" in node else node

    keys = {k for tool in ("snakemake", "dvc") for job in S.jobs(params, tool) for k in job.params}
    assert keys and all(required(k) for k in keys), sorted(k for k in keys if not required(k))


# ----------------------------------------------------------------------------- a key's description is not code


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
