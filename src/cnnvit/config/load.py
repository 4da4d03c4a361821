"""params.yaml -> typed, validated configs: the one loader every ``cnnvit`` command and the
Snakefile go through.

    params = load_params("params.yaml", ["preset=quick"])        # --set overrides
    params = params_from_dict(snakemake_config, "config")       # what Snakemake loaded
    for run in params.all_runs():
        cfg = run_config(params, run)                           # cnnvit.config.runs: one training

Loading reads the file (:mod:`cnnvit.config.reading`: YAML 1.2 numbers, no duplicate keys, no
alias bombs), renames deprecated keys with a warning, turns numeric strings into numbers where
the schema wants a number, checks the schema (``params.schema.json`` beside this file, generated
from :mod:`cnnvit.config.types` and the model specs by ``cnnvit schema``) and the
cross-references it cannot express (:mod:`cnnvit.config.checks`), and only then builds the
dataclasses. ``Params.runs`` is the active preset's runs: the top-level ``runs:`` with the
preset's ``runs:`` over them. Every error names the dotted key and the fix; a missing key, its
default too.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import sys
import typing
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from cnnvit.config.checks import check_fractions, cross_references, effective_runs
from cnnvit.config.reading import (
    MAX_VALUES,
    Yaml12Loader,
    apply_overrides,
    parse_override,
    read_params_file,
    refuse_alias_bomb,
    short,
    yaml_load,
)
from cnnvit.config.types import Analysis, Cost, Data, Params, Preset, Recipe, Robustness, Runs, Runtime
from cnnvit.errors import CnnvitError

# what other modules import from here, read and checked in the modules beside it
__all__ = [
    "MAX_VALUES",
    "Params",
    "apply_overrides",
    "check",
    "check_fractions",
    "load_params",
    "params_from_dict",
    "read_params_file",
    "yaml_load",
]

PACKAGE_DATA = ("params.schema.json",)  # read at run time, beside this file


# ----------------------------------------------------------------------------- deprecations

# old top-level key -> new. `profile` was easy to mistake for Snakemake's workflow profiles.
RENAMED_SECTIONS = {"train": "runtime", "profile": "preset", "profiles": "presets"}
RENAMED_SCHEDULES = {"onecycle": "linear"}  # it always was linear warm-up, then linear decay


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def migrate(cfg: dict, source: str) -> dict:
    """Rename what an older params file calls by a deprecated name, saying so once."""
    cfg = copy.deepcopy(cfg)
    for old, new in RENAMED_SECTIONS.items():
        if old not in cfg:
            continue
        if new in cfg and cfg[new] != cfg[old] and isinstance(cfg[old], dict):
            merged = {**cfg[new], **cfg[old]}
            warn(f"{source}: `{old}:` is deprecated, renamed `{new}:`; its keys override `{new}:`")
            cfg[new] = merged
        else:
            warn(f"{source}: `{old}:` is deprecated and was renamed `{new}:`; rename it (or --set {new}.KEY)")
            cfg[new] = cfg[old]
        del cfg[old]
    for name, recipe in (cfg.get("recipes") or {}).items():
        schedule = recipe.get("schedule") if isinstance(recipe, dict) else None
        if isinstance(schedule, str) and schedule in RENAMED_SCHEDULES:
            new_name = RENAMED_SCHEDULES[schedule]
            warn(f"{source}: recipes.{name}.schedule: {schedule!r} is deprecated, now {new_name!r}")
            recipe["schedule"] = new_name
    return cfg


# ----------------------------------------------------------------------------- validation


@cache
def schema() -> dict:
    return json.loads(resources.files(__package__).joinpath(PACKAGE_DATA[0]).read_text())


def _validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(schema())


def _dotted(path) -> str:
    return ".".join(str(p) for p in path) or "<top level>"


def _scalar(text: str) -> Any:
    """What a YAML 1.2 reader makes of a plain scalar (``null``, ``true``, ``1e-4``), else the text."""
    try:
        return yaml.load(text, Loader=Yaml12Loader)
    except yaml.YAMLError:
        return text


def coerce_scalars(cfg: dict) -> dict:
    """Scalars that arrive as strings become what YAML 1.2 reads them as (``"1e-4"`` from a YAML 1.1
    reader, ``"null"``/``"true"``/``"3"`` from Snakemake's ``--config``, which reads nested values
    as strings), but only where the string is invalid and the value it stands for is valid."""
    cfg = copy.deepcopy(cfg)
    validator = _validator()
    for _ in range(1000):
        fixed = False
        for err in validator.iter_errors(cfg):
            if not isinstance(err.instance, str):
                continue
            value = _scalar(err.instance)
            if isinstance(value, str | list | dict):
                continue
            # Convert where the value fits (md5 "null" -> None) or has the type asked for, so that a
            # bad number (lr "-1") is then reported as the number it is, with the rule it breaks.
            wanted = err.validator_value if err.validator == "type" else []
            wanted = [wanted] if isinstance(wanted, str) else wanted
            fits = any(validator.is_type(value, t) for t in wanted)
            if not fits and not validator.evolve(schema=err.schema).is_valid(value):
                continue
            *parents, last = err.absolute_path
            node = cfg
            for part in parents:
                node = node[part]
            node[last] = value
            fixed = True
            break
        if not fixed:
            return cfg
    return cfg


def _message(err: jsonschema.ValidationError, source: str) -> str:
    where = _dotted(err.absolute_path)
    schema_: Any = err.schema  # a mapping: our schema has no boolean subschemas
    if err.validator == "additionalProperties":
        allowed = sorted(schema_.get("properties", {}))
        instance: Any = err.instance
        extra = sorted(set(instance) - set(allowed))
        keys = ", ".join(f"{where}.{k}" if err.absolute_path else k for k in extra)
        arch = err.instance.get("arch") if isinstance(err.instance, dict) else None
        kind = f" for arch {arch}" if arch and "arch" in allowed else ""
        return f"{source}: unknown key {keys}{kind}: remove or rename it; allowed keys: {', '.join(allowed)}"
    if err.validator in ("minItems", "maxItems") and "x-same-length" in schema_:
        a, b = schema_["x-same-length"]
        entry = _dotted(list(err.absolute_path)[:-1])
        return f"{source}: {entry}: {a} and {b} must have the same length (one entry per stage): fix the entry"
    if "x-divides" in schema_:
        a, b = schema_["x-divides"]
        entry = _dotted(list(err.absolute_path)[:-1])
        if isinstance(b, int):
            why = f"{a} {err.instance} must divide the image side ({b} pixels)"
        else:
            why = f"{a} {err.validator_value} must divide {b} {err.instance}"
        return f"{source}: {entry}: {why}, or the model cannot be built: fix the entry"
    if err.validator == "required":
        return _missing(err, source)
    if err.validator == "enum" and list(err.absolute_path)[-1:] == ["arch"]:
        known = ", ".join(map(str, typing.cast(list, err.validator_value)))
        return (
            f"{source}: {where}: no module registers arch {short(repr(err.instance), 60)}: use one of {known}, or add "
            "its module to src/cnnvit/models/"
        )
    if err.validator == "anyOf":  # a number or a word: name both, not "not valid under any of the given schemas"
        options = " or ".join(_describe(alt, schema_) for alt in typing.cast(list, err.validator_value))
        return f"{source}: {where}: {short(json.dumps(err.instance), 60)} is not {options}: give one of them"
    return f"{source}: {where}: {short(err.message)}: fix this value"


def _describe(alt: dict, outer: dict) -> str:
    """One alternative of an ``anyOf``, in words: its values, or its type with the key's bounds."""
    if "enum" in alt:
        return " or ".join(map(str, alt["enum"]))
    kind = {"integer": "a whole number", "number": "a number"}.get(alt.get("type", ""), f"a {alt.get('type')}")
    bounds = [f"{op} {outer[k]}" for k, op in (("minimum", ">="), ("maximum", "<=")) if k in outer]
    return " ".join([kind, *bounds])


def _yaml(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _missing(err: jsonschema.ValidationError, source: str) -> str:
    """Every key must be in params.yaml (DVC sees only what is there): name the missing ones, and
    the default each would take, which is what the schema shows."""
    schema_: Any = err.schema
    instance: Any = err.instance
    missing = [k for k in schema_.get("required", []) if k not in instance]
    props = schema_.get("properties", {})
    defaults = {k: props[k]["default"] for k in missing if "default" in props.get(k, {})}
    where = _dotted(err.absolute_path)
    under = f"under {where}:" if err.absolute_path else "at the top level"
    if len(missing) == 1:
        (k,) = missing
        dotted = f"{where}.{k}" if err.absolute_path else k
        default = f" (its default: {_yaml(defaults[k])})" if k in defaults else ""
        return f"{source}: {dotted} is missing: add it {under}{default}"
    listed = ", ".join(f"{k}: {_yaml(v)}" for k, v in defaults.items())
    return f"{source}: {where}: missing required keys {', '.join(missing)}: add them" + (
        f" {under} (defaults: {listed})" if defaults else ""
    )


def non_finite(node: Any, path: tuple = ()) -> tuple[tuple, float] | None:
    """The first NaN or infinity in a tree (its path and value), or None."""
    if isinstance(node, float) and not math.isfinite(node):
        return path, node
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in children:
        if found := non_finite(child, (*path, key)):
            return found
    return None


def check(cfg: dict, source: str = "params.yaml") -> None:
    """Every number finite, the schema, then the cross-references it cannot express. Raises on
    the first problem."""
    # JSON Schema's bounds are comparisons, and every comparison with NaN is false: a `.nan` passes
    # `minimum: 0` and `maximum: 1` alike. No key of params.yaml means anything as NaN or infinity.
    if found := non_finite(cfg):
        where, value = found
        raise CnnvitError(f"{source}: {_dotted(where)}: {value} is not a finite number: give a number")
    errors = list(_validator().iter_errors(cfg))
    if errors:
        # the deepest error is the most specific one (a model's unknown key, not "allOf failed")
        err = max(errors, key=lambda e: (len(e.absolute_path), e.validator == "additionalProperties"))
        raise CnnvitError(_message(err, source))
    cross_references(cfg, source)


def _build(cls, d: dict):
    """The dataclass from a schema-checked dict: lists become tuples, and an int where the field
    is a float becomes a float (so that 0 and 0.0 make the same run identity)."""
    kinds = {f.name: str(f.type) for f in dataclasses.fields(cls)}

    def value(k, v):
        if isinstance(v, list):
            return tuple(float(x) if kinds[k].startswith("tuple[float") else x for x in v)
        return float(v) if kinds[k].startswith("float") and type(v) is int else v

    return cls(**{k: value(k, v) for k, v in d.items()})


def params_from_dict(cfg: dict, source: str = "params.yaml") -> Params:
    """Validate a params dict (from a file or from Snakemake's config) and build the typed tree."""
    if not isinstance(cfg, dict):
        raise CnnvitError(f"{source}: expected a mapping at the top level")
    refuse_alias_bomb(cfg, source)  # before anything walks it: Snakemake's config comes straight from YAML
    cfg = coerce_scalars(migrate(cfg, source))
    check(cfg, source)
    return Params(
        raw=cfg,
        preset=cfg["preset"],
        data=_build(Data, cfg["data"]),
        runs=_build(Runs, effective_runs(cfg)),
        runtime=_build(Runtime, cfg["runtime"]),
        analysis=_build(Analysis, cfg["analysis"]),
        robustness=_build(Robustness, cfg["robustness"]),
        cost=_build(Cost, cfg["cost"]),
        recipes={name: _build(Recipe, r) for name, r in cfg["recipes"].items()},
        presets={name: _build(Preset, p) for name, p in cfg["presets"].items()},
    )


def refuse_shadowed_overrides(params: Params, overrides: list[str]) -> None:
    """A ``--set runs.KEY=...`` under a preset whose own runs: set KEY would change nothing: say
    which key does."""
    own, name = params.active.runs, params.preset
    for item in overrides:
        path, value = parse_override(item)
        if path[0] != "runs":
            continue
        for k in path[1:2] if len(path) > 1 else list(value) if isinstance(value, dict) else []:
            if k in own:
                raise CnnvitError(
                    f"--set {item.partition('=')[0]}: preset {name} sets presets.{name}.runs.{k}, which wins over "
                    f"runs.{k}: --set presets.{name}.runs.{k}=... instead"
                )


def load_params(path: str | Path = "params.yaml", overrides: list[str] | None = None) -> Params:
    raw = read_params_file(path)
    if not isinstance(raw, dict):
        raise CnnvitError(f"{path}: expected a mapping at the top level")
    params = params_from_dict(apply_overrides(raw, overrides or []), str(path))
    refuse_shadowed_overrides(params, overrides or [])
    return params
